"""``echo``: a test engine that needs no model files.

It answers with the request's own text — the last user message of a chat, the
prompt of a completion — one whitespace-delimited piece per "token", so its
output is known in advance and a test of the HTTP API, the CLI or the magics
runs in milliseconds.  It goes through everything a real engine does: the
base class's request checks (:meth:`Engine.prepare`: unsupported parameters,
empty or too-long prompts), the model actor's queue, streaming, abort and
usage.  It honours ``max_tokens`` (finish ``length``), ``stop`` (finish
``stop``), ``n`` and ``seed`` (choice ``i`` starts ``seed + i`` pieces into the
text, wrapping around), and ``echo`` for completions.

Its catalog family is data, not a built-in entry: register
:data:`ECHO_FAMILY` (``client.register(ECHO_FAMILY)``, ``xnb register``, or
``POST /api/catalog``) and launch ``echo-test``.  Its format is ``none``: the
"weights" are this package's folder, so nothing is downloaded.
"""

from __future__ import annotations

import re
import time
from typing import Any

from pydantic import Field

from xnb.engines.base import (
    BASE_PARAMS,
    EngineOptions,
    GenerateRequest,
    Prompt,
    Sink,
    ThreadedEngine,
)
from xnb.engines.text import StopChecker

__all__ = ["EchoEngine", "EchoOptions", "ECHO_FAMILY", "pieces"]

#: A catalog family served by the echo engine (register it, then launch "echo-test").
ECHO_FAMILY: dict[str, Any] = {
    "name": "echo-test",
    "description": "TEST MODEL: the echo engine repeats the prompt; no weights, for contract tests.",
    "abilities": ["chat", "generate"],
    "context_length": 256,
    "specs": [
        {
            "format": "none",
            "size": "1m",
            "file_size_mb": 0,
            "sources": [{"kind": "package", "package": "xnb", "module": "xnb", "path": "engines"}],
        }
    ],
}

_PIECE = re.compile(r"\s*\S+")


def pieces(text: str) -> list[str]:
    """The echo engine's "tokens": each word with the whitespace before it."""
    return _PIECE.findall(text)


class EchoOptions(EngineOptions):
    delay_ms: float = Field(default=0.0, ge=0.0, le=10_000.0, description="pause before each token")
    max_concurrency: int = Field(default=4, ge=1, le=64, description="requests served at once")


class EchoEngine(ThreadedEngine):
    name = "echo"
    abilities = frozenset({"chat", "generate"})
    formats = frozenset({"none"})
    supported_params = BASE_PARAMS | {"n", "ignore_eos"}
    Options = EchoOptions

    options: EchoOptions

    def load(self) -> dict[str, Any]:
        self.max_len = self.spec.context_length
        return {"n_ctx": self.max_len, "engine": "echo"}

    @property
    def max_concurrency(self) -> int:
        return self.options.max_concurrency

    def prompt_text(self, request: GenerateRequest) -> str:
        """The last user message (its text parts), or the completion prompt."""
        if request.kind == "completion":
            return request.prompt or ""
        for message in reversed(request.messages or []):
            if message.get("role") == "user":
                content = message.get("content") or ""
                if isinstance(content, list):
                    return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
                return str(content)
        return ""

    def tokenize(self, text: str, request: GenerateRequest) -> list[int]:
        return [len(p) for p in pieces(text)]

    def generate(self, request: GenerateRequest, prompt: Prompt, sink: Sink) -> None:
        words = pieces(prompt.text)
        limit = prompt.max_new or len(words)
        seed = request.params.seed or 0
        generated = 0
        for index in range(request.n):
            if request.echo:
                sink.put(index, prompt.text)
            order = words
            if request.params.seed is not None:  # start (seed + index) words in, wrapping around
                start = (seed + index) % len(words)
                rotated = [w.strip() for w in words[start:] + words[:start]]
                order = [w if i == 0 else " " + w for i, w in enumerate(rotated)]
            stop = StopChecker(prompt.stops)
            reason = "stop"
            for count, piece in enumerate(order):
                if count >= limit:
                    reason = "length"
                    break
                if sink.cancelled.is_set():
                    reason = "abort"
                    break
                if self.options.delay_ms:
                    time.sleep(self.options.delay_ms / 1000)
                generated += 1
                text, stopped = stop.feed(piece)
                sink.put(index, text)
                if stopped:
                    break
            sink.finish(index, reason, stop.flush())
        sink.close(len(prompt.ids or ()), generated)
