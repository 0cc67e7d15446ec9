#!/usr/bin/env python
"""Where the CPU goes: xnb's vLLM engine against vLLM's own server, per process.

Starts xnb (scheduler, a .venv-vllm worker, the sidecar) and vLLM's own OpenAI server
the way ``vllm_compare.py`` does (same converted SmolLM2 folder, eager bf16, KV 1 GiB),
then, twice and alternating, runs COUNT greedy streamed requests of 128 tokens
(``ignore_eos``) at CONCURRENCY against each and prints tokens/s, TTFT, TPOT and the
cores every process used during that run (user + system CPU time, from psutil).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/vllm_cpu_share.py 1 6
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/vllm_cpu_share.py 8 16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vllm_compare as vc  # noqa: E402

from xnb import bench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("concurrency", type=int, nargs="?", default=1)
    parser.add_argument("count", type=int, nargs="?", default=6, help="requests per run")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xnb-cpu-share-"))
    env = {**os.environ, "XNB_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(vc.ROOT),
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": str(vc.KV_GIB)}
    os.environ["XNB_HOME"] = env["XNB_HOME"]
    from xnb.catalog.convert import packaged_smollm2_safetensors

    backends = vc.Backends(work, env, packaged_smollm2_safetensors())
    try:
        targets: dict[str, tuple[str, str]] = {"xnb-vllm": backends.xnb(["vllm"])["vllm"]}
        targets["vllm-server"] = backends.vllm_server()
        pids = [p.pid for p in backends.procs]
        prompts = bench.sample_prompts(bench.load_prompts(), args.count, seed=args.concurrency)
        for _ in range(2):
            for name, (url, model) in targets.items():
                vc.run_level(url, model, prompts[:1], 1, 16)  # warm
                before, client_before = vc.cpu_seconds(pids), time.process_time()
                t0 = time.monotonic()
                s: dict[str, Any] = vc.run_level(url, model, prompts, args.concurrency, 128)
                wall = time.monotonic() - t0
                after, client = vc.cpu_seconds(pids), time.process_time() - client_before
                vc.log(f"{name} c={args.concurrency}: {s['output_throughput']:.1f} tok/s, TTFT p50 "
                       f"{s['ttft_ms']['median']:.0f} ms, TPOT p50 {s['tpot_ms']['median']:.1f} ms, {wall:.1f} s")
                for key, used in after.items():
                    spent = used - before.get(key, 0.0)
                    if spent > 0.05:
                        vc.log(f"   {key:60s} {spent / wall:5.2f} cores")
                vc.log(f"   {'the load generator (this process)':60s} {client / wall:5.2f} cores")
    finally:
        backends.stop_all()


if __name__ == "__main__":
    main()
