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

from xnb.bench.data import (
    BUNDLED_PROMPTS,
    BenchError,
    Prompt,
    load_prompts,
    random_prompts,
    sample_prompts,
    warmup_prompt,
)
from xnb.bench.report import format_ms, markdown_table, plot_latency, write_reports
from xnb.bench.runner import (
    BenchConfig,
    arrival_gaps,
    discover_model,
    run_benchmark,
    run_sweep,
    stream_chat,
)
from xnb.bench.stats import (
    RequestResult,
    distribution,
    inter_token_latencies,
    percentile,
    summarize,
)

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
    "format_ms",
    "arrival_gaps",
]
