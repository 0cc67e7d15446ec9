"""One place that renders every error as an OpenAI error object.

``{"error": {"message", "type", "param", "code"}}`` with the status the
exception class carries.  Validation errors are 400 (not FastAPI's 422
shape); unknown routes are 404 in the same shape; anything unexpected is a
500 whose body says nothing about internals (the traceback goes to the log).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from xnb.errors import InvalidRequest, XnbError
from xnb.openai.anthropic import error_body as anthropic_error

__all__ = ["install_error_handlers", "error_response", "error_body", "is_anthropic_path"]

logger = logging.getLogger(__name__)

_HTTP_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "insufficient_scope"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limited"),
}


def is_anthropic_path(path: str) -> bool:
    """Whether errors on this path take Anthropic's shape (``/v1/messages...``)."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def error_body(path: str, exc: XnbError) -> dict[str, Any]:
    """The error object for a path: Anthropic's on ``/v1/messages``, OpenAI's elsewhere."""
    if is_anthropic_path(path):
        return anthropic_error(exc.status, exc.message)
    return exc.openai_body()


def error_response(exc: XnbError, path: str = "") -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse(error_body(path, exc), status_code=exc.status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(XnbError)
    async def _xnb(request: Request, exc: XnbError) -> JSONResponse:
        if exc.status >= 500:
            logger.warning("%s %s -> %s: %s", request.method, request.url.path, exc.status, exc.message)
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        return error_response(InvalidRequest(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")),
                                             param=loc or None), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind, code = _HTTP_TYPES.get(exc.status_code, ("server_error", "http_error"))
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /v1/models and /api/models"
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        if is_anthropic_path(request.url.path):
            body = anthropic_error(exc.status_code, message)
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(XnbError("internal server error; the server log has the details"),
                              request.url.path)
