"""The Anthropic Messages API: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

Requests are translated to chat completion requests (:mod:`xnb.openai.anthropic`)
and served by the same manager calls as ``/v1/chat/completions``.  Errors on
these paths use Anthropic's shape (see :mod:`xnb.api.errors`), and the
``x-api-key`` header is accepted like ``Authorization: Bearer`` (see
:mod:`xnb.api.auth`).
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from fastapi import APIRouter, Request

from xnb.api.openai import StreamFormat, read_json, stream_response
from xnb.manager import ModelManager
from xnb.openai.anthropic import (
    CountTokensRequest,
    MessagesRequest,
    MessageStream,
    error_event,
    message_from_chat,
    sse_event,
    to_chat_request,
)
from xnb.openai.requests import ChatCompletionRequest, parse_request

__all__ = ["router", "ANTHROPIC_PREFIX"]

#: Paths whose errors take Anthropic's shape.
ANTHROPIC_PREFIX = "/v1/messages"

router = APIRouter(prefix="/v1", tags=["anthropic"])

_FORMAT = StreamFormat(
    encode=sse_event, done=b"", error=error_event,
    is_token=lambda e: e["type"] == "content_block_delta",
)


@router.post("/messages")
async def create_message(request: Request) -> Any:
    body = parse_request(MessagesRequest, await read_json(request))
    chat = to_chat_request(body)
    manager: ModelManager = request.app.state.manager
    metrics = request.app.state.metrics
    if body.stream:
        events = _events(manager, body, chat, lambda usage: metrics.usage(body.model, usage))
        return await stream_response(request, events, body.model, "messages", _FORMAT)
    with metrics.request(body.model, "messages"):
        result = await manager.chat_completion(chat)
    metrics.usage(body.model, result["usage"])
    return message_from_chat(body, result)


async def _events(
    manager: ModelManager, body: MessagesRequest, chat: ChatCompletionRequest, on_usage: Any,
) -> AsyncIterator[dict[str, Any]]:
    """Anthropic's event sequence; the first chat chunk is awaited before anything
    is yielded, so an early error is a plain HTTP error."""
    chunks = manager.chat_completion_stream(chat, on_usage=on_usage)
    try:
        first = await chunks.__anext__()
        translator = MessageStream(body)
        for event in translator.start() + translator.feed(first):
            yield event
        usage = first.get("usage")
        async for chunk in chunks:
            if chunk.get("usage"):
                usage = chunk["usage"]
            for event in translator.feed(chunk):
                yield event
        for event in translator.finish_events(usage):
            yield event
    finally:
        await chunks.aclose()


@router.post("/messages/count_tokens")
async def count_tokens(request: Request) -> dict[str, int]:
    """Tokens of the prompt the model would see (system, messages and tools, through
    its chat template), measured by the model itself: a one-token generation's
    prompt count."""
    body = parse_request(CountTokensRequest, await read_json(request))
    chat = to_chat_request(body.model_copy(update={"max_tokens": 1, "stream": False}))
    result = await request.app.state.manager.chat_completion(chat)
    return {"input_tokens": result["usage"]["prompt_tokens"]}
