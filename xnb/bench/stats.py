"""What one streamed request did, and the latency/throughput math over many."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

__all__ = ["RequestResult", "distribution", "inter_token_latencies", "percentile", "summarize"]



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
