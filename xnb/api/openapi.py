"""The sidecar's OpenAPI document: request bodies and the error statuses each route answers.

Routes read their bodies themselves (:func:`xnb.api.openai.read_json` and the
shared request models), so FastAPI cannot see them; this module adds each
route's body schema and the statuses it really answers, each with the error
object's schema (Anthropic's on ``/v1/messages``).  FastAPI's default 422 is
dropped: validation errors are 400s here.  A property-based fuzz of this
document (tests/test_openapi_fuzz.py) checks that the server answers nothing
else.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

__all__ = ["install_openapi", "route_statuses", "ERROR_SCHEMA", "ANTHROPIC_ERROR_SCHEMA"]

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
        }
    },
}

ANTHROPIC_ERROR_SCHEMA: dict[str, Any] = {
    "title": "AnthropicError",
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"type": "string", "enum": ["error"]},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}

_HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["status", "reason"],
    "properties": {"status": {"type": "string", "enum": ["unavailable"]}, "reason": {"type": "string"}},
}

_DESCRIPTIONS = {
    400: "Bad request: invalid JSON, an invalid or unsupported parameter (named in `param`), "
         "or a Host header not allowed for a loopback server",
    401: "Missing or invalid API key",
    403: "An inference key on a management route (an admin key is needed)",
    404: "No such model, catalog entry, stored response or route",
    409: "Conflict: the uid exists, the entry exists, or no worker has room",
    413: "The request body is too large",
    429: "The model's queue is full; retry after `Retry-After` seconds",
    503: "The model is not ready or the cluster is unreachable",
}

def route_statuses(path: str, method: str) -> list[int]:
    """The error statuses a route answers."""
    method = method.lower()
    if path == "/health":
        return [400, 503]
    statuses = {400, 401}
    if path.startswith("/api"):
        statuses |= {403, 404, 503}
        if method != "get":
            statuses.add(409)
        if method == "post":
            statuses.add(413)
    elif method == "post":  # every other POST runs a model
        statuses |= {404, 413, 429, 503}
    elif path.startswith("/v1/models"):
        statuses |= {404, 503} if "{" in path else {503}
    elif path.startswith("/v1/responses/"):
        statuses.add(404)
    return sorted(statuses)


def _bodies() -> dict[tuple[str, str], type[BaseModel]]:
    from xnb.api.admin import RegisterBody, ScaleBody
    from xnb.openai.anthropic import CountTokensRequest, MessagesRequest
    from xnb.openai.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
    from xnb.openai.responses import ResponsesRequest
    from xnb.protocol import LaunchOptions

    return {
        ("/v1/chat/completions", "post"): ChatCompletionRequest,
        ("/v1/completions", "post"): CompletionRequest,
        ("/v1/embeddings", "post"): EmbeddingRequest,
        ("/v1/responses", "post"): ResponsesRequest,
        ("/v1/messages", "post"): MessagesRequest,
        ("/v1/messages/count_tokens", "post"): CountTokensRequest,
        ("/api/models", "post"): LaunchOptions,
        ("/api/models/{uid}/scale", "post"): ScaleBody,
        ("/api/catalog", "post"): RegisterBody,
    }


def _body_schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = ERROR_SCHEMA
    schemas["AnthropicError"] = ANTHROPIC_ERROR_SCHEMA
    bodies = _bodies()
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            model = bodies.get((path, method))
            if model is not None:
                op["requestBody"] = {"required": True,
                                     "content": {"application/json": {"schema": _body_schema(model, schemas)}}}
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            ref = "AnthropicError" if path.startswith("/v1/messages") else "Error"
            for status in route_statuses(path, method):
                schema = _HEALTH_SCHEMA if (path, status) == ("/health", 503) else {
                    "$ref": f"#/components/schemas/{ref}"}
                responses[str(status)] = {"description": _DESCRIPTIONS[status],
                                          "content": {"application/json": {"schema": schema}}}
            if path != "/health":
                op["security"] = [{"bearer": []}, {"apiKey": []}]
    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
    }
    return doc


def install_openapi(app: FastAPI) -> None:
    """Serve :func:`build_openapi`'s document at ``/openapi.json`` (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
