"""OpenAI response shapes, built in one place for every engine and every client.

Engines produce neutral deltas ``(index, text, finish_reason, logprobs)``
(:data:`xnb.engines.base.Delta`); the API
sidecar and the Python client both turn them into OpenAI objects here, so a
chat completion looks the same whether it came over HTTP or from
``model.chat()`` in a notebook.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from xnb.engines.logprobs import TokenLogprob, as_token_logprob
from xnb.openai.tools import ToolCallStream, parse_tool_calls

__all__ = [
    "new_id",
    "chat_completion",
    "chat_chunk",
    "completion",
    "completion_chunk",
    "embedding_list",
    "matryoshka_truncate",
    "model_object",
    "collect_choices",
    "chat_logprobs",
    "completion_logprobs",
    "Choice",
    "ChunkBuilder",
]

#: ``(index, text, finish_reason[, logprobs])``; engines send the 4-tuple.
Delta = Sequence[Any]


class Choice(NamedTuple):
    """One finished choice: its text, finish reason and (if asked for) token logprobs."""

    text: str
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None = None


def _logprobs_of(delta: Delta) -> list[TokenLogprob] | None:
    raw = delta[3] if len(delta) > 3 else None
    return None if raw is None else [as_token_logprob(t) for t in raw]


def chat_logprobs(tokens: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """OpenAI's chat ``logprobs`` object: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    if tokens is None:
        return None
    return {
        "content": [
            {"token": t.token, "logprob": t.logprob, "bytes": t.bytes,
             "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": a.bytes} for a in t.top]}
            for t in tokens
        ],
        "refusal": None,
    }


def completion_logprobs(tokens: list[TokenLogprob] | None, offset: int = 0) -> dict[str, Any] | None:
    """The legacy completions ``logprobs`` object (tokens, token_logprobs,
    top_logprobs as ``{token: logprob}``, text_offset from ``offset`` on)."""
    if tokens is None:
        return None
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{a.token: a.logprob for a in t.top} for t in tokens],
        "text_offset": offsets,
    }


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def collect_choices(deltas: Iterable[Delta], n: int) -> list[Choice]:
    """Join streamed deltas into one :class:`Choice` per choice index."""
    texts: list[list[str]] = [[] for _ in range(n)]
    reasons: list[str | None] = [None] * n
    logprobs: list[list[TokenLogprob] | None] = [None] * n
    for delta in deltas:
        index, text, reason = delta[0], delta[1], delta[2]
        while index >= len(texts):
            texts.append([])
            reasons.append(None)
            logprobs.append(None)
        if text:
            texts[index].append(text)
        if reason:
            reasons[index] = reason
        tokens = _logprobs_of(delta)
        if tokens is not None:
            logprobs[index] = (logprobs[index] or []) + tokens
    return [Choice("".join(t), r, lp) for t, r, lp in zip(texts, reasons, logprobs)]


def _finish(reason: str | None) -> str | None:
    # "abort" is internal (client went away); OpenAI knows stop/length/tool_calls/content_filter.
    return "stop" if reason == "abort" else reason


def _chat_choice(i: int, choice: Sequence[Any], tool_mode: bool) -> dict[str, Any]:
    text, reason, tokens = Choice(*choice)
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    finish = _finish(reason) or "stop"
    calls = parse_tool_calls(text) if tool_mode else None
    if calls:
        message["content"] = None
        message["tool_calls"] = calls
        finish = "tool_calls" if finish == "stop" else finish
    return {"index": i, "message": message, "logprobs": chat_logprobs(tokens), "finish_reason": finish}


def chat_completion(
    *, id: str, model: str, created: int, choices: Sequence[Sequence[Any]], usage: dict[str, int],
    tool_mode: bool = False,
) -> dict[str, Any]:
    """A chat completion; with ``tool_mode`` outputs that are calls become ``tool_calls``."""
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [_chat_choice(i, choice, tool_mode) for i, choice in enumerate(choices)],
        "usage": usage,
        "system_fingerprint": None,
    }


def chat_chunk(
    *, id: str, model: str, created: int, index: int | None = None, delta: dict[str, Any] | None = None,
    finish_reason: str | None = None, usage: dict[str, int] | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": []
        if index is None
        else [{"index": index, "delta": delta or {}, "logprobs": logprobs, "finish_reason": _finish(finish_reason)}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def completion(
    *, id: str, model: str, created: int, choices: Sequence[Sequence[Any]], usage: dict[str, int],
) -> dict[str, Any]:
    full = [Choice(*c) for c in choices]
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": i, "text": c.text, "logprobs": completion_logprobs(c.logprobs),
             "finish_reason": _finish(c.finish_reason) or "stop"}
            for i, c in enumerate(full)
        ],
        "usage": usage,
        "system_fingerprint": None,
    }


def completion_chunk(
    *, id: str, model: str, created: int, index: int | None = None, text: str = "",
    finish_reason: str | None = None, usage: dict[str, int] | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": []
        if index is None
        else [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": _finish(finish_reason)}],
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
        self._offsets: dict[int, int] = {}

    def chunks(self, deltas: Iterable[Delta]) -> list[dict[str, Any]]:
        out = []
        for delta in deltas:
            index, text, reason = delta[0], delta[1], delta[2]
            tokens = _logprobs_of(delta)
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
                logprobs = chat_logprobs(tokens) if tokens else None
                for piece in pieces:
                    out.append(chat_chunk(id=self.id, model=self.model, created=self.created,
                                          index=index, delta=piece, logprobs=logprobs))
                    logprobs = None  # a delta's tokens ride on its first chunk
                if reason or logprobs:
                    out.append(chat_chunk(id=self.id, model=self.model, created=self.created,
                                          index=index, delta={}, finish_reason=reason, logprobs=logprobs))
            else:
                if text or reason or tokens:
                    offset = self._offsets.get(index, 0)
                    self._offsets[index] = offset + len(text)
                    out.append(completion_chunk(id=self.id, model=self.model, created=self.created,
                                                index=index, text=text, finish_reason=reason,
                                                logprobs=completion_logprobs(tokens, offset) if tokens else None))
        return out

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any] | None:
        if not self.include_usage:
            return None
        if self.kind == "chat":
            return chat_chunk(id=self.id, model=self.model, created=self.created, usage=usage)
        return completion_chunk(id=self.id, model=self.model, created=self.created, usage=usage)


def matryoshka_truncate(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """The first ``dimensions`` components of each vector, renormalised to unit length."""
    cut = np.asarray(vectors, dtype=np.float32)[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.where(norms == 0, 1, norms)
