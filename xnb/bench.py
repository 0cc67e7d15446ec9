"""An OpenAI-API load generator, in the style of ``vllm bench serve``.

It sends streaming chat completions (``/v1/chat/completions`` with
``stream_options.include_usage``) to any OpenAI-compatible server — the xnb
sidecar, llama-cpp-python's server, vLLM — from a dataset of prompts, at a
fixed concurrency and an optional Poisson request rate, and reports:

* request throughput (req/s), output tokens/s and total tokens/s;
* TTFT (time to first token), TPOT (time per output token after the first)
  and ITL (gaps between streamed chunks), each as mean, median and p99 (ms);
* end-to-end latency, and errors: HTTP errors, transport errors, an
  ``{"error": ...}`` event, and a stream that is empty, ends without a
  ``finish_reason`` or ends without ``data: [DONE]``.

Output tokens come from the final usage chunk; where a server sends none
(llama-cpp-python ignores ``stream_options``) they are the content chunks.

Used by ``xnb bench`` (:mod:`xnb.cli.bench`), ``benchmarks/serve.py`` and
``benchmarks/compare.py``.  The metric functions (:func:`summarize`,
:func:`percentile`, :func:`inter_token_latencies`) work on plain
:class:`RequestResult` records, so in-process baselines use the same math.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import platform
import random
import time
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import httpx

__all__ = [
    "BenchConfig",
    "BenchError",
    "Prompt",
    "RequestResult",
    "BUNDLED_PROMPTS",
    "load_prompts",
    "random_prompts",
    "sample_prompts",
    "warmup_prompt",
    "percentile",
    "distribution",
    "inter_token_latencies",
    "summarize",
    "stream_chat",
    "discover_model",
    "run_benchmark",
    "run_sweep",
    "markdown_table",
    "write_reports",
    "plot_latency",
]

#: The small prompt set shipped with the repository (``--dataset bundled``).
BUNDLED_PROMPTS = Path(__file__).resolve().parent.parent / "benchmarks" / "prompts.json"

#: What warm-up requests ask (not a dataset prompt, so a server's prefix cache
#: holds nothing of the measured prompts when the run starts).
WARMUP_PROMPT_TEXT = "Reply with one word: are you ready?"

#: Percentiles reported for every latency metric, besides the mean.
PERCENTILES = (50.0, 99.0)


class BenchError(RuntimeError):
    """The benchmark cannot run (server unreachable, warm-up request failed, bad dataset)."""


# -- datasets ------------------------------------------------------------------------------------


@dataclass
class Prompt:
    """One request of the workload: chat messages, and optionally its own ``max_tokens``."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = None

    @property
    def text(self) -> str:
        return "\n".join(str(m.get("content", "")) for m in self.messages)


def _prompt_from(item: Any, where: str) -> Prompt:
    if isinstance(item, str):
        return Prompt([{"role": "user", "content": item}])
    if isinstance(item, dict):
        max_tokens = item.get("max_tokens")
        if "messages" in item and isinstance(item["messages"], list):
            return Prompt(list(item["messages"]), max_tokens)
        if isinstance(item.get("prompt"), str):
            return Prompt([{"role": "user", "content": item["prompt"]}], max_tokens)
    raise BenchError(f"{where}: each prompt must be a string, {{'prompt': str}} or {{'messages': [...]}}")


def load_prompts(path: str | Path | None = None) -> list[Prompt]:
    """Prompts from a JSON file: a list, or ``{"prompts": [...]}``; entries are strings,
    ``{"prompt": str, "max_tokens"?: int}`` or ``{"messages": [...], "max_tokens"?: int}``.
    Without a path, the bundled set (``benchmarks/prompts.json`` of the repository)."""
    path = Path(path) if path is not None else BUNDLED_PROMPTS
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        hint = " (the bundled set lives in the xnb repository; pass --dataset-path FILE)" if path == BUNDLED_PROMPTS else ""
        raise BenchError(f"prompt file {path} not found{hint}") from None
    except ValueError as exc:
        raise BenchError(f"prompt file {path} is not valid JSON: {exc}") from None
    items = data.get("prompts") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise BenchError(f"{path}: expected a non-empty list of prompts (or {{'prompts': [...]}})")
    return [_prompt_from(item, f"{path} entry {i}") for i, item in enumerate(items)]


# Short, common English words: each is one token (with its leading space) for the usual
# BPE vocabularies, so `input_len` words make a prompt of about `input_len` tokens.
_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more write go see number no way could people my than first "
    "water been call who oil its now find long down day did get come made may part over new "
    "sound take only little work know place year live me back give most very after thing our "
    "just name good sentence man think say great where help through much before line right too "
    "mean old any same tell boy follow came want show also around form three small set put end "
    "does another well large must big even such because turn here why ask went men read need "
    "land different home us move try kind hand picture again change off play spell air away "
    "animal house point page letter mother answer found study still learn should world high"
).split()


def warmup_prompt() -> Prompt:
    """The request sent before a run (and not counted)."""
    return Prompt([{"role": "user", "content": WARMUP_PROMPT_TEXT}], max_tokens=8)


def random_prompts(num: int, input_len: int, output_len: int, *, seed: int = 0) -> list[Prompt]:
    """``num`` prompts of about ``input_len`` tokens (random common words), each asking
    for ``output_len`` tokens (send ``ignore_eos`` where the server supports it to get
    exactly that many)."""
    if num < 1 or input_len < 1 or output_len < 1:
        raise BenchError("random prompts need num, input_len and output_len ≥ 1")
    rng = random.Random(seed)
    out = []
    for _ in range(num):
        words = " ".join(rng.choice(_WORDS) for _ in range(input_len))
        out.append(Prompt([{"role": "user", "content": words}], output_len))
    return out


def sample_prompts(prompts: Sequence[Prompt], num: int, *, seed: int | None = 0) -> list[Prompt]:
    """``num`` prompts: the set in order (shuffled with ``seed``; ``None`` keeps the file's
    order), repeated as often as needed."""
    if not prompts:
        raise BenchError("the dataset is empty")
    order = list(prompts)
    if seed is not None:
        random.Random(seed).shuffle(order)
    return [order[i % len(order)] for i in range(num)]


# -- one request ---------------------------------------------------------------------------------


@dataclass
class RequestResult:
    """What one streamed request did; times are ``time.perf_counter()`` seconds."""

    start: float = 0.0
    end: float = 0.0
    #: arrival time of every chunk that carried output text
    chunk_times: list[float] = field(default_factory=list)
    content_chunks: int = 0
    usage_completion_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    generated_chars: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.start if self.chunk_times else None

    def output_tokens(self, prefer_usage: bool = True) -> int:
        if prefer_usage and self.usage_completion_tokens is not None:
            return self.usage_completion_tokens
        return self.content_chunks

    def tpot(self, prefer_usage: bool = True) -> float | None:
        """Time per output token after the first: ``(latency - ttft) / (tokens - 1)``."""
        n = self.output_tokens(prefer_usage)
        ttft = self.ttft
        if ttft is None or n < 2:
            return None
        return (self.latency - ttft) / (n - 1)

    def observe(self, event: dict[str, Any], now: float) -> None:
        """Account for one OpenAI chunk (chat or text completion) that arrived at ``now``."""
        usage = event.get("usage")
        if usage:
            if usage.get("completion_tokens") is not None:
                self.usage_completion_tokens = int(usage["completion_tokens"])
            if usage.get("prompt_tokens") is not None:
                self.prompt_tokens = int(usage["prompt_tokens"])
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("reasoning_content") or choice.get("text")
            if text:
                self.chunk_times.append(now)
                self.content_chunks += 1
                self.generated_chars += len(text)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def check_complete(self) -> None:
        """After the stream ended normally: no output text, or no finish_reason (cut
        short), is an error."""
        if self.error is None and not self.chunk_times:
            self.error = "empty stream (no output text)"
        elif self.error is None and self.finish_reason is None:
            self.error = "stream ended early (no finish_reason)"

    def itl(self) -> list[float]:
        return inter_token_latencies(self.chunk_times)

    def record(self, prefer_usage: bool = True) -> dict[str, Any]:
        """A compact JSON row (milliseconds)."""
        ttft, tpot = self.ttft, self.tpot(prefer_usage)
        return {
            "ok": self.ok,
            "error": self.error,
            "ttft_ms": None if ttft is None else round(ttft * 1e3, 3),
            "tpot_ms": None if tpot is None else round(tpot * 1e3, 3),
            "e2el_ms": round(self.latency * 1e3, 3),
            "output_tokens": self.output_tokens(prefer_usage),
            "content_chunks": self.content_chunks,
            "prompt_tokens": self.prompt_tokens,
            "finish_reason": self.finish_reason,
        }


def inter_token_latencies(chunk_times: Sequence[float]) -> list[float]:
    """Gaps between consecutive output chunks (the first chunk's wait is TTFT, not ITL)."""
    return [b - a for a, b in itertools.pairwise(chunk_times)]


def percentile(values: Iterable[float], p: float) -> float:
    """The ``p``-th percentile (0–100) with linear interpolation between closest ranks
    (numpy's default method); NaN for no values."""
    data = sorted(values)
    if not data:
        return math.nan
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is not within 0..100")
    rank = (len(data) - 1) * p / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (rank - lo)


def distribution(values: Iterable[float], *, scale: float = 1e3) -> dict[str, float | None]:
    """mean, median and p99 of ``values`` times ``scale`` (seconds → ms by default);
    None where there are no values."""
    data = [v * scale for v in values]
    if not data:
        return {"mean": None, "median": None, "p99": None}
    return {
        "mean": sum(data) / len(data),
        "median": percentile(data, 50),
        "p99": percentile(data, 99),
    }


def summarize(
    results: Sequence[RequestResult], duration: float, *, prefer_usage: bool = True, **extra: Any
) -> dict[str, Any]:
    """The benchmark's metrics over ``results`` that took ``duration`` seconds in all.

    Failed requests count only as errors; throughputs divide the successful requests'
    tokens by the whole duration.
    """
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    out_tokens = sum(r.output_tokens(prefer_usage) for r in ok)
    known_inputs = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    in_tokens = sum(known_inputs) if known_inputs else None
    duration = max(duration, 1e-9)
    usage_counted = bool(ok) and prefer_usage and all(r.usage_completion_tokens is not None for r in ok)
    errors: dict[str, int] = {}
    for r in failed:
        key = (r.error or "error")[:200]
        errors[key] = errors.get(key, 0) + 1
    summary = {
        **extra,
        "num_requests": len(results),
        "completed": len(ok),
        "errors": len(failed),
        "error_kinds": errors,
        "duration_s": duration,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "output_tokens_from": "usage" if usage_counted else "content chunks",
        "request_throughput": len(ok) / duration,
        "output_throughput": out_tokens / duration,
        "total_token_throughput": None if in_tokens is None else (in_tokens + out_tokens) / duration,
        "ttft_ms": distribution(t for r in ok if (t := r.ttft) is not None),
        "tpot_ms": distribution(t for r in ok if (t := r.tpot(prefer_usage)) is not None),
        "itl_ms": distribution(g for r in ok for g in r.itl()),
        "e2el_ms": distribution(r.latency for r in ok),
    }
    return summary


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
            and (m.get("xnb") or {}).get("status", "ready") in ("ready", "degraded")]
    if not (chat or data):
        raise BenchError(f"{config.root} serves no models; pass --model or launch one")
    return str((chat or data)[0]["id"])


# -- a benchmark run ---------------------------------------------------------------------------------


def _arrival_gaps(n: int, request_rate: float, seed: int) -> list[float]:
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
        for prompt, gap in zip(prompts, _arrival_gaps(len(prompts), request_rate, seed)):
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


# -- reports -----------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown_table(summaries: Sequence[dict[str, Any]], *, label: str | None = None) -> str:
    """One row per run: throughput, then TTFT / TPOT / ITL / E2E latency (mean, median, p99 ms)."""
    head = [label or "concurrency", "rate", "ok", "err", "req/s", "out tok/s",
            "TTFT mean", "TTFT med", "TTFT p99", "TPOT mean", "TPOT med", "TPOT p99",
            "ITL mean", "ITL med", "ITL p99", "E2E med", "E2E p99"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        row = [
            str(s.get("label", s.get("concurrency", ""))), str(s.get("request_rate", "inf")),
            str(s["completed"]), str(s["errors"]),
            f"{s['request_throughput']:.2f}", f"{s['output_throughput']:.1f}",
        ]
        for metric in ("ttft_ms", "tpot_ms", "itl_ms"):
            d = s[metric]
            row += [_ms(d["mean"]), _ms(d["median"]), _ms(d["p99"])]
        row += [_ms(s["e2el_ms"]["median"]), _ms(s["e2el_ms"]["p99"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n\nLatencies in ms; TPOT = (E2E − TTFT) / (output tokens − 1); ITL = gaps between streamed chunks.\n"


def plot_latency(summaries: Sequence[dict[str, Any]], path: Path, *, title: str = "latency vs concurrency") -> Path:
    """A PNG of median/p99 TTFT, median TPOT and median E2E latency (left) and output
    tokens/s (right) against concurrency.  Needs matplotlib (``pip install 'xnb[bench]'``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [s["concurrency"] for s in summaries]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, stat, name in (("ttft_ms", "median", "TTFT median"), ("ttft_ms", "p99", "TTFT p99"),
                            ("tpot_ms", "median", "TPOT median"), ("itl_ms", "p99", "ITL p99"),
                            ("e2el_ms", "median", "E2E median")):
        ys = [s[key][stat] if s[key][stat] is not None else math.nan for s in summaries]
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrency")
    ax.set_ylabel("ms")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax2.plot(xs, [s["output_throughput"] for s in summaries], marker="o", color="tab:green")
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(xs, [str(x) for x in xs])
    ax2.set_xlabel("concurrency")
    ax2.set_ylabel("output tokens/s")
    ax2.set_title("throughput")
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(report: dict[str, Any], out_dir: str | Path, *, stem: str = "bench") -> dict[str, Path]:
    """``STEM.json`` (everything), ``STEM.md`` (the table) and, with several concurrency
    levels and matplotlib installed, ``STEM.png``.  Returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    summaries = [run["summary"] for run in report["runs"]]
    cfg = report.get("config", {})
    md = [
        f"# {report.get('tool', 'benchmark')}: {cfg.get('model')} at {cfg.get('base_url')}",
        "",
        f"{report.get('num_prompts')} prompts per run, max_tokens {cfg.get('max_tokens')}, "
        f"temperature {cfg.get('temperature')}; {report.get('created', '')}.",
        "",
        markdown_table(summaries),
    ]
    errors = [(s.get("label", s.get("concurrency")), kind, count) for s in summaries for kind, count in s["error_kinds"].items()]
    if errors:
        md += ["Errors:", ""] + [f"- run {run}: {count}× {kind}" for run, kind, count in errors] + [""]
    paths["md"].write_text("\n".join(md))
    if len({s["concurrency"] for s in summaries}) > 1:
        try:
            paths["png"] = plot_latency(summaries, out / f"{stem}.png")
        except ImportError:
            pass  # matplotlib is optional: pip install 'xnb[bench]'
    return paths
