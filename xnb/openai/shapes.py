"""OpenAI response shapes, built in one place for every engine and every client.

Engines produce neutral deltas ``(index, text, finish_reason)``; the API
sidecar and the Python client both turn them into OpenAI objects here, so a
chat completion looks the same whether it came over HTTP or from
``model.chat()`` in a notebook.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any, Iterable

import numpy as np

from xnb.openai.tools import ToolCallStream, parse_tool_calls

__all__ = [
    "new_id",
    "chat_completion",
    "chat_chunk",
    "completion",
    "completion_chunk",
    "embedding_list",
    "model_object",
    "collect_choices",
    "ChunkBuilder",
]

Delta = tuple[int, str, "str | None"]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def collect_choices(deltas: Iterable[Delta], n: int) -> list[tuple[str, str | None]]:
    """Join streamed deltas into ``(text, finish_reason)`` per choice index."""
    texts = [[] for _ in range(n)]
    reasons: list[str | None] = [None] * n
    for index, text, reason in deltas:
        while index >= len(texts):
            texts.append([])
            reasons.append(None)
        if text:
            texts[index].append(text)
        if reason:
            reasons[index] = reason
    return [("".join(t), r) for t, r in zip(texts, reasons)]


def _finish(reason: str | None) -> str | None:
    # "abort" is internal (client went away); OpenAI knows stop/length/tool_calls/content_filter.
    return "stop" if reason == "abort" else reason


def _chat_choice(i: int, text: str, reason: str | None, tool_mode: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    finish = _finish(reason) or "stop"
    calls = parse_tool_calls(text) if tool_mode else None
    if calls:
        message["content"] = None
        message["tool_calls"] = calls
        finish = "tool_calls" if finish == "stop" else finish
    return {"index": i, "message": message, "logprobs": None, "finish_reason": finish}


def chat_completion(
    *, id: str, model: str, created: int, choices: list[tuple[str, str | None]], usage: dict[str, int],
    tool_mode: bool = False,
) -> dict[str, Any]:
    """A chat completion; with ``tool_mode`` outputs that are calls become ``tool_calls``."""
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [_chat_choice(i, text, reason, tool_mode) for i, (text, reason) in enumerate(choices)],
        "usage": usage,
        "system_fingerprint": None,
    }


def chat_chunk(
    *, id: str, model: str, created: int, index: int | None = None, delta: dict[str, Any] | None = None,
    finish_reason: str | None = None, usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": []
        if index is None
        else [{"index": index, "delta": delta or {}, "logprobs": None, "finish_reason": _finish(finish_reason)}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def completion(
    *, id: str, model: str, created: int, choices: list[tuple[str, str | None]], usage: dict[str, int],
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": i, "text": text, "logprobs": None, "finish_reason": _finish(reason) or "stop"}
            for i, (text, reason) in enumerate(choices)
        ],
        "usage": usage,
        "system_fingerprint": None,
    }


def completion_chunk(
    *, id: str, model: str, created: int, index: int | None = None, text: str = "",
    finish_reason: str | None = None, usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": []
        if index is None
        else [{"index": index, "text": text, "logprobs": None, "finish_reason": _finish(finish_reason)}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def embedding_list(
    *, model: str, vectors: np.ndarray, prompt_tokens: int, encoding_format: str = "float",
) -> dict[str, Any]:
    data = []
    for i, vec in enumerate(vectors):
        if encoding_format == "base64":
            value: Any = base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode("ascii")
        else:
            value = vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_object(record: dict[str, Any]) -> dict[str, Any]:
    """``/v1/models`` entry for a launched model (id = its uid), with xnb details."""
    return {
        "id": record["uid"],
        "object": "model",
        "created": int(record.get("created", time.time())),
        "owned_by": "xnb",
        "xnb": {
            "model_name": record.get("model_name"),
            "status": record.get("status"),
            "engine": record.get("spec", {}).get("engine"),
            "abilities": record.get("spec", {}).get("abilities", []),
            "replicas": len(record.get("replicas", [])),
        },
    }


class ChunkBuilder:
    """Turns pulled neutral deltas into OpenAI stream chunks for one request."""

    def __init__(self, *, kind: str, model: str, include_usage: bool = False, tool_mode: bool = False) -> None:
        self.kind = kind
        self.model = model
        self.include_usage = include_usage
        self.tool_mode = tool_mode
        self._tools: dict[int, ToolCallStream] = {}
        self.id = new_id("chatcmpl" if kind == "chat" else "cmpl")
        self.created = int(time.time())
        self._started: set[int] = set()

    def chunks(self, deltas: Iterable[Delta]) -> list[dict[str, Any]]:
        out = []
        for index, text, reason in deltas:
            if self.kind == "chat":
                pieces: list[dict[str, Any]]
                if self.tool_mode:
                    stream = self._tools.setdefault(index, ToolCallStream())
                    pieces = stream.feed(text) if text else []
                    if stream.called and reason == "stop":
                        reason = "tool_calls"
                else:
                    pieces = [{"content": text}] if text else []
                if index not in self._started:
                    self._started.add(index)
                    first = pieces.pop(0) if pieces and "content" in pieces[0] else {"content": ""}
                    pieces.insert(0, {"role": "assistant", **first})
                for delta in pieces:
                    out.append(chat_chunk(id=self.id, model=self.model, created=self.created,
                                          index=index, delta=delta))
                if reason:
                    out.append(chat_chunk(id=self.id, model=self.model, created=self.created,
                                          index=index, delta={}, finish_reason=reason))
            else:
                if text or reason:
                    out.append(completion_chunk(id=self.id, model=self.model, created=self.created,
                                                index=index, text=text, finish_reason=reason))
        return out

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any] | None:
        if not self.include_usage:
            return None
        if self.kind == "chat":
            return chat_chunk(id=self.id, model=self.model, created=self.created, usage=usage)
        return completion_chunk(id=self.id, model=self.model, created=self.created, usage=usage)
