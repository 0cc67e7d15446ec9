"""The OpenAI-compatible routes: ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings``.

Each route parses the body into the shared request models
(:mod:`xnb.openai.requests`) and hands it to the
:class:`~xnb.manager.ModelManager` on ``app.state``.  Streams are Server-Sent
Events ending in ``data: [DONE]``; errors before the first token are ordinary
HTTP errors, a failure mid-stream is a final ``data: {"error": ...}`` event.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from xnb.api.metrics import Metrics, RequestTimer
from xnb.errors import InvalidRequest, RequestTooLarge, XnbError
from xnb.manager import ModelManager
from xnb.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse_request,
)
from xnb.openai.shapes import model_object

__all__ = ["router", "read_json", "MAX_BODY_BYTES", "sse", "stream_response", "StreamFormat", "SSEResponse"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"])


#: Largest request body accepted (413 beyond).
MAX_BODY_BYTES = 32 * 1024 * 1024


async def read_json(request: Request) -> Any:
    """The JSON body: 413 past :data:`MAX_BODY_BYTES`, 400 if it is not JSON."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise RequestTooLarge(f"the request body is larger than {MAX_BODY_BYTES // 2**20} MiB")
    raw = bytearray()
    async for piece in request.stream():
        raw += piece
        if len(raw) > MAX_BODY_BYTES:
            raise RequestTooLarge(f"the request body is larger than {MAX_BODY_BYTES // 2**20} MiB")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        raise InvalidRequest("the request body is not valid JSON") from None
    _check_wire(body, strings=_SURROGATE_ESCAPE.search(raw) is not None)
    return body


#: Integers that cross the cluster's wire (msgpack) must fit 64 bits.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
#: A \\uD800-\\uDFFF escape: JSON can spell a lone surrogate, which no UTF-8 wire carries.
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


def _check_wire(value: Any, where: str = "", *, strings: bool) -> None:
    """400 for what could not travel to the cluster: an integer beyond 64 bits, or
    (``strings``) text with a lone surrogate."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidRequest(f"{where or 'body'}: integer {value} is out of the 64-bit range",
                                 param=where or None)
    elif isinstance(value, str):
        if strings:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequest(f"{where or 'body'}: text holds a lone UTF-16 surrogate (not valid Unicode)",
                                     param=where or None) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_wire(key, where, strings=strings)
            _check_wire(item, f"{where}.{key}" if where else str(key), strings=strings)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_wire(item, f"{where}[{i}]", strings=strings)


def _manager(request: Request) -> ModelManager:
    return request.app.state.manager


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    records = await _manager(request).list()
    return {"object": "list", "data": [model_object(r) for r in records]}


@router.get("/models/{uid}")
async def get_model(uid: str, request: Request) -> dict[str, Any]:
    return model_object(await _manager(request).describe(uid))


class SSEResponse(StreamingResponse):
    """A streaming response that always closes its iterator (so an abandoned
    generation is aborted on the model even when the send fails)."""

    async def stream_response(self, send: Any) -> None:
        try:
            await super().stream_response(send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


@dataclass(frozen=True)
class StreamFormat:
    """How a route frames its stream: each event, the end, an error mid-way, and
    which events carry tokens (for the latency metrics)."""

    encode: Callable[[dict[str, Any]], bytes]
    done: bytes
    error: Callable[[XnbError], bytes]
    is_token: Callable[[dict[str, Any]], bool]


OPENAI_STREAM = StreamFormat(
    encode=sse, done=b"data: [DONE]\n\n", error=lambda exc: sse(exc.openai_body()),
    is_token=lambda chunk: bool(chunk.get("choices")),
)


async def _event_stream(
    first: dict[str, Any], rest: AsyncIterator[dict[str, Any]], metrics: Metrics, model: str, endpoint: str,
    fmt: StreamFormat,
) -> AsyncIterator[bytes]:
    timer = RequestTimer(metrics, model)
    status = "200"
    try:
        timer.chunk()
        yield fmt.encode(first)
        async for chunk in rest:
            if fmt.is_token(chunk):
                timer.chunk()
            yield fmt.encode(chunk)
        if fmt.done:
            yield fmt.done
    except XnbError as exc:
        status = str(exc.status)
        logger.info("stream of %s failed mid-way: %s", model, exc.message)
        yield fmt.error(exc)
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()
        metrics.requests.labels(model, endpoint, status).inc()


async def stream_response(
    request: Request, stream: AsyncIterator[dict[str, Any]], model: str, endpoint: str,
    fmt: StreamFormat = OPENAI_STREAM,
) -> SSEResponse:
    """Wait for the first chunk (so early errors are real HTTP errors), then stream."""
    metrics = _metrics(request)
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:
        first = {}
    except XnbError as exc:
        metrics.requests.labels(model, endpoint, str(exc.status)).inc()
        raise
    return SSEResponse(
        _event_stream(first, stream, metrics, model, endpoint, fmt),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _usage_hook(metrics: Metrics, model: str) -> Any:
    return lambda usage: metrics.usage(model, usage)


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Any:
    body = parse_request(ChatCompletionRequest, await read_json(request))
    manager, metrics = _manager(request), _metrics(request)
    if body.stream:
        stream = manager.chat_completion_stream(body, on_usage=_usage_hook(metrics, body.model))
        return await stream_response(request, stream, body.model, "chat")
    with metrics.request(body.model, "chat"):
        result = await manager.chat_completion(body)
    metrics.usage(body.model, result["usage"])
    return result


@router.post("/completions")
async def completions(request: Request) -> Any:
    body = parse_request(CompletionRequest, await read_json(request))
    manager, metrics = _manager(request), _metrics(request)
    if body.stream:
        stream = manager.completion_stream(body, on_usage=_usage_hook(metrics, body.model))
        return await stream_response(request, stream, body.model, "completions")
    with metrics.request(body.model, "completions"):
        result = await manager.completion(body)
    metrics.usage(body.model, result["usage"])
    return result


@router.post("/embeddings")
async def embeddings(request: Request) -> Any:
    body = parse_request(EmbeddingRequest, await read_json(request))
    metrics = _metrics(request)
    with metrics.request(body.model, "embeddings"):
        result = await _manager(request).embeddings(body)
    metrics.prompt_tokens.labels(body.model).inc(result["usage"]["prompt_tokens"])
    return result
