"""The OpenAI Responses API: ``POST /v1/responses``, ``GET``/``DELETE /v1/responses/{id}``.

Each request is translated to a chat completion request
(:mod:`xnb.openai.responses`) and served by the same manager call as
``/v1/chat/completions``; nothing here generates text.  With ``store`` (the
default) the response and its conversation go to the file-backed
:class:`~xnb.api.response_store.ResponseStore`, so ``previous_response_id``
works across sidecar restarts.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request

from xnb.api.openai import StreamFormat, read_json, stream_response
from xnb.api.response_store import ResponseStore
from xnb.errors import NotFound, XnbError
from xnb.manager import ModelManager
from xnb.openai.requests import ChatCompletionRequest, parse_request
from xnb.openai.responses import (
    ResponsesRequest,
    ResponseStream,
    conversation_after,
    response_from_chat,
    sse_event,
    to_chat_request,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["responses"])


def _store(request: Request) -> ResponseStore:
    return request.app.state.responses


def _new_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


async def _history(store: ResponseStore, previous: str | None) -> list[dict[str, Any]]:
    if not previous:
        return []
    try:
        record = await asyncio.to_thread(store.get, previous)
    except NotFound as exc:
        raise NotFound(exc.message, param="previous_response_id") from None
    return list(record["conversation"])


@router.post("/responses")
async def create_response(request: Request) -> Any:
    body = parse_request(ResponsesRequest, await read_json(request))
    store = _store(request)
    chat = to_chat_request(body, await _history(store, body.previous_response_id))
    manager: ModelManager = request.app.state.manager
    metrics = request.app.state.metrics
    rid = _new_id()
    if body.stream:
        events = _events(manager, store, body, chat, rid, lambda usage: metrics.usage(body.model, usage))
        fmt = StreamFormat(encode=sse_event, done=b"", error=_error_frame,
                           is_token=lambda e: e["type"].endswith(".delta"))
        return await stream_response(request, events, body.model, "responses", fmt)
    with metrics.request(body.model, "responses"):
        result = await manager.chat_completion(chat)
    metrics.usage(body.model, result["usage"])
    response, assistant = response_from_chat(body, rid, result)
    if body.store:
        record = {"response": response, "conversation": conversation_after(body, chat, assistant)}
        await asyncio.to_thread(store.put, rid, record)
    return response


def _error_frame(exc: XnbError) -> bytes:
    return sse_event({"type": "error", "code": exc.code, "message": exc.message, "param": exc.param,
                      "sequence_number": 0})


async def _events(
    manager: ModelManager, store: ResponseStore, body: ResponsesRequest, chat: ChatCompletionRequest, rid: str,
    on_usage: Any,
) -> AsyncIterator[dict[str, Any]]:
    """The Responses event sequence for one streamed request.  The chat stream's
    first chunk is awaited before anything is yielded, so an early error is a
    plain HTTP error."""
    chunks = manager.chat_completion_stream(chat, on_usage=on_usage)
    try:
        first = await chunks.__anext__()
        translator = ResponseStream(body, rid)
        for event in translator.start() + translator.feed(first):
            yield event
        usage = first.get("usage")
        async for chunk in chunks:
            if chunk.get("usage"):
                usage = chunk["usage"]
            for event in translator.feed(chunk):
                yield event
        final = translator.finish_events(usage)
        if body.store and translator.response is not None and translator.assistant is not None:
            # stored before the client hears "completed", so it can continue at once
            record = {"response": translator.response,
                      "conversation": conversation_after(body, chat, translator.assistant)}
            await asyncio.to_thread(store.put, rid, record)
        for event in final:
            yield event
    finally:
        await chunks.aclose()


@router.get("/responses/{response_id}")
async def get_response(response_id: str, request: Request) -> dict[str, Any]:
    record = await asyncio.to_thread(_store(request).get, response_id)
    return record["response"]


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    await asyncio.to_thread(_store(request).delete, response_id)
    return {"id": response_id, "object": "response", "deleted": True}
