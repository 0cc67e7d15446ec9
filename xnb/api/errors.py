"""One place that renders every error as an OpenAI error object.

``{"error": {"message", "type", "param", "code"}}`` with the status the
exception class carries.  Validation errors are 400 (not FastAPI's 422
shape); unknown routes are 404 in the same shape; anything unexpected is a
500 whose body says nothing about internals (the traceback goes to the log).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from xnb.errors import InvalidRequest, QueueFull, XnbError

__all__ = ["install_error_handlers", "error_response"]

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


def error_response(exc: XnbError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else None
    return JSONResponse(exc.openai_body(), status_code=exc.status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(XnbError)
    async def _xnb(request: Request, exc: XnbError) -> JSONResponse:
        if exc.status >= 500:
            logger.warning("%s %s -> %s: %s", request.method, request.url.path, exc.status, exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        return error_response(InvalidRequest(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")),
                                             param=loc or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind, code = _HTTP_TYPES.get(exc.status_code, ("server_error", "http_error"))
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /v1/models and /api/models"
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(XnbError("internal server error; the server log has the details"))
