"""Aggregate throughput of 2 single-threaded replicas on 2 workers versus 1 replica.

Starts an embedded cluster of 2 workers × 1 thread, launches SmolLM2 with one
replica, runs the same concurrent load (streaming chat through the Python API,
fixed-length greedy answers), scales the model to 2 replicas (one per worker),
runs it again, and prints the ratio.

    .venv/bin/python benchmarks/replicas.py [--concurrency 8] [--requests 32] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

TOPICS = ["a lighthouse", "the desert", "a violin", "winter", "a library", "bread", "trains", "the moon"]


def load(model: Any, concurrency: int, requests: int, max_tokens: int) -> float:
    """Output tokens per second for ``requests`` requests, ``concurrency`` at a time."""
    todo = list(range(requests))
    lock = threading.Lock()
    tokens = 0

    def worker() -> None:
        nonlocal tokens
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            answer = model.chat(f"Write a poem about {TOPICS[i % len(TOPICS)]}.", max_tokens=max_tokens,
                                temperature=0, ignore_eos=True)
            with lock:
                tokens += answer["usage"]["completion_tokens"]

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    import tempfile

    import xnb
    from xnb.settings import XnbSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    settings = XnbSettings(home=tempfile.mkdtemp(prefix="xnb-replicas-"), n_workers=2, threads_per_worker=1)
    with xnb.connect(settings=settings) as client:
        model = client.launch("smollm2-135m-instruct", uid="bench")
        load(model, 2, 2, 8)  # warm-up
        one = load(model, args.concurrency, args.requests, args.max_tokens)
        client._sync(client.manager.scale, "bench", 2)
        model.wait()
        load(model, 2, 2, 8)
        two = load(model, args.concurrency, args.requests, args.max_tokens)
        placed = sorted(r["worker"] for r in model.record["replicas"])
    print(f"2 workers × 1 thread, SmolLM2-135M (default launch, Q8_0), concurrency {args.concurrency}, "
          f"{args.requests} requests × {args.max_tokens} tokens")
    print(f"1 replica : {one:.1f} tok/s")
    print(f"2 replicas: {two:.1f} tok/s  (on {', '.join(placed)})")
    print(f"ratio     : {two / one:.2f}×")


if __name__ == "__main__":
    main()
