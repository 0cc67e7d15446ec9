"""The HTTP side: stream one chat completion, run a benchmark at a concurrency, sweep."""

from __future__ import annotations

import asyncio
import json
import math
import platform
import random
import time
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import httpx

from xnb.protocol import ModelStatus
from xnb.bench.data import BenchError, Prompt, warmup_prompt
from xnb.bench.stats import RequestResult, summarize

__all__ = ["BenchConfig", "arrival_gaps", "discover_model", "run_benchmark", "run_sweep", "stream_chat"]


# -- the HTTP client -------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    """Where to send requests and what every request asks for."""

    base_url: str = "http://127.0.0.1:9997"
    model: str | None = None
    api_key: str | None = None
    max_tokens: int = 128
    temperature: float = 0.0
    ignore_eos: bool = False
    #: more fields merged into every request body
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 600.0
    include_usage: bool = True

    @property
    def root(self) -> str:
        return self.base_url.rstrip("/").removesuffix("/v1")

    @property
    def chat_url(self) -> str:
        return self.root + "/v1/chat/completions"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def payload(self, prompt: Prompt) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": prompt.messages,
            "max_tokens": prompt.max_tokens or self.max_tokens,
            "temperature": self.temperature,
            "stream": True,
        }
        if self.include_usage:
            body["stream_options"] = {"include_usage": True}
        if self.ignore_eos:
            body["ignore_eos"] = True
        body.update(self.extra_body)
        return body


def _error_text(data: Any) -> str:
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err if err is not None else data)[:300]


async def stream_chat(client: httpx.AsyncClient, config: BenchConfig, prompt: Prompt) -> RequestResult:
    """Send one streaming chat completion and time it (SSE parsed by hand)."""
    res = RequestResult()
    saw_done = False
    res.start = time.perf_counter()
    try:
        async with client.stream("POST", config.chat_url, json=config.payload(prompt), headers=config.headers()) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode("utf-8", "replace")
                try:
                    detail = _error_text(json.loads(body))
                except ValueError:
                    detail = body[:300]
                res.error = f"HTTP {resp.status_code}: {detail}"
                return res
            async with aclosing(resp.aiter_lines()) as lines:
                async for line in lines:
                    if not line.startswith("data:"):
                        continue  # blank separators, ": ping" comments, event:/id: fields
                    data = line[5:].strip()
                    if data == "[DONE]":
                        saw_done = True
                        break
                    now = time.perf_counter()
                    try:
                        event = json.loads(data)
                    except ValueError:
                        res.error = f"bad SSE data: {data[:200]}"
                        return res
                    if not isinstance(event, dict):
                        res.error = f"bad SSE data: {data[:200]}"
                        return res
                    if "error" in event:
                        res.error = f"error event: {_error_text(event)}"
                        return res
                    res.observe(event, now)
    except httpx.HTTPError as exc:
        res.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return res
    finally:
        res.end = time.perf_counter()
    if not saw_done:
        res.error = "stream ended without data: [DONE]"
    else:
        res.check_complete()
    return res


async def discover_model(base_url: str, api_key: str | None = None, *, timeout: float = 10.0) -> str:
    """The first model ``GET /v1/models`` lists (on xnb: the first ready one that can chat)."""
    config = BenchConfig(base_url=base_url, api_key=api_key)
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            resp = await client.get(config.root + "/v1/models", headers=config.headers())
    except httpx.HTTPError as exc:
        raise BenchError(f"cannot reach {config.root}: {exc}") from None
    if resp.status_code != 200:
        raise BenchError(f"GET {config.root}/v1/models answered {resp.status_code}: {resp.text[:200]}")
    data = resp.json().get("data") or []
    # xnb lists its models' abilities and status: prefer a ready one that can chat.
    chat = [m for m in data if "chat" in (m.get("xnb") or {}).get("abilities", ["chat"])
            and ModelStatus((m.get("xnb") or {}).get("status", ModelStatus.READY)).serving]
    if not (chat or data):
        raise BenchError(f"{config.root} serves no models; pass --model or launch one")
    return str((chat or data)[0]["id"])


# -- a benchmark run ---------------------------------------------------------------------------------


def arrival_gaps(n: int, request_rate: float, seed: int) -> list[float]:
    """Waits before each request: Poisson arrivals (exponential gaps) at ``request_rate``
    per second; all zero for an infinite rate."""
    if math.isinf(request_rate):
        return [0.0] * n
    if request_rate <= 0:
        raise BenchError("the request rate must be > 0 (inf: all at once)")
    rng = random.Random(seed)
    return [rng.expovariate(request_rate) for _ in range(n)]


async def run_benchmark(
    config: BenchConfig,
    prompts: Sequence[Prompt],
    *,
    concurrency: int,
    request_rate: float = math.inf,
    warmup: int = 1,
    seed: int = 0,
    prefer_usage: bool = True,
    progress: Callable[[int, int], None] | None = None,
    return_results: bool = False,
) -> dict[str, Any]:
    """Send every prompt once: at most ``concurrency`` in flight, arriving as a Poisson
    process of ``request_rate``/s (``inf``: all at once).  Returns the summary and the
    per-request rows (``{"summary": ..., "requests": [...]}``; with ``return_results``
    also ``"results"``, the :class:`RequestResult` objects)."""
    if concurrency < 1:
        raise BenchError("concurrency must be ≥ 1")
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    timeout = httpx.Timeout(config.timeout_s, connect=10.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        if config.model is None:
            config.model = await discover_model(config.base_url, config.api_key)
        for _ in range(warmup):
            first = await stream_chat(client, config, warmup_prompt())
            if not first.ok:
                raise BenchError(f"the warm-up request to {config.chat_url} failed: {first.error}")
        sem = asyncio.Semaphore(concurrency)
        done = 0

        async def one(prompt: Prompt) -> RequestResult:
            nonlocal done
            async with sem:
                result = await stream_chat(client, config, prompt)
            done += 1
            if progress is not None:
                progress(done, len(prompts))
            return result

        tasks = []
        started = time.perf_counter()
        for prompt, gap in zip(prompts, arrival_gaps(len(prompts), request_rate, seed)):
            if gap:
                await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(one(prompt)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - started
    summary = summarize(
        results, duration, prefer_usage=prefer_usage,
        concurrency=concurrency, request_rate=request_rate if math.isfinite(request_rate) else "inf",
    )
    out: dict[str, Any] = {"summary": summary, "requests": [r.record(prefer_usage) for r in results]}
    if return_results:
        out["results"] = list(results)  # the RequestResult objects (not JSON)
    return out


def run_sweep(
    config: BenchConfig,
    prompts: Sequence[Prompt],
    concurrencies: Sequence[int],
    *,
    request_rate: float = math.inf,
    warmup: int = 1,
    seed: int = 0,
    prefer_usage: bool = True,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One run per concurrency level (the same prompts each time); the whole report."""
    runs = []
    for c in concurrencies:
        run = asyncio.run(run_benchmark(
            config, prompts, concurrency=c, request_rate=request_rate, warmup=warmup, seed=seed,
            prefer_usage=prefer_usage,
        ))
        runs.append(run)
        if on_run is not None:
            on_run(run)
    return {
        "tool": "xnb bench",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "config": {**asdict(config), "api_key": "***" if config.api_key else None},
        "num_prompts": len(prompts),
        "runs": runs,
    }
