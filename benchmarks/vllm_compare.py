#!/usr/bin/env python
"""xnb's vLLM engine against vLLM's own OpenAI server, in one run, same model, same prompts.

Backends, all up at once and measured in turn (rotating order per concurrency level,
so background load on a shared machine hits each alike):

1. ``vllm-server``: ``python -m vllm.entrypoints.openai.api_server`` from .venv-vllm;
2. ``xnb-vllm``: ``xnb scheduler`` + ``xnb worker`` from .venv-vllm + ``xnb serve``
   (sidecar → Dask actor → the vLLM engine);
3. ``xnb-llama.cpp``: the same cluster's second worker (main env) serving the
   packaged GGUF on llama.cpp — for scale, not a like-for-like comparison.

Both vLLM paths load the same converted safetensors folder with the same options
(eager, bf16, KV cache 1 GiB, max_model_len 2048).  Requests are xnb's bundled
prompt set (``xnb.bench``), greedy, streamed, ``ignore_eos`` so every request
makes exactly ``--max-tokens`` tokens.  Prints a markdown table and the targets
(≥0.97× vLLM's tokens/s at each concurrency; xnb's TTFT p50 at most 5 ms above).

    .venv/bin/python benchmarks/vllm_compare.py           # needs .venv-vllm (scripts/bootstrap-vllm.sh)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402

from xnb import bench  # noqa: E402
from xnb.bench import BenchConfig  # noqa: E402

VENV = ROOT / ".venv-vllm"
SMOL = "smollm2-135m-instruct"
MAX_LEN = 2048
KV_GIB = 1


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    from xnb.jupyter.sidecar import free_port as fp

    return fp()


def start(cmd: list[str], logfile: Path, env: dict[str, str]) -> subprocess.Popen[Any]:
    out = logfile.open("w")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_http(url: str, deadline_s: float, proc: subprocess.Popen[Any], logfile: Path) -> float:
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited:\n{logfile.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not up after {deadline_s:.0f} s:\n{logfile.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (MB)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,rss="], capture_output=True, text=True).stdout
    rows = [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    tree, grew = {pid}, True
    while grew:
        grew = False
        for p, pp, _ in rows:
            if pp in tree and p not in tree:
                tree.add(p)
                grew = True
    return sum(r for p, _, r in rows if p in tree) / 1024


def run_level(url: str, model: str, prompts: list[Any], concurrency: int, max_tokens: int) -> dict[str, Any]:
    config = BenchConfig(base_url=url, model=model, max_tokens=max_tokens, ignore_eos=True,
                         api_key="none")
    return asyncio.run(bench.run_benchmark(config, prompts, concurrency=concurrency))["summary"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompts-c1", type=int, default=6, help="requests at concurrency 1")
    parser.add_argument("--prompts-c8", type=int, default=16, help="requests at concurrency 8")
    parser.add_argument("--no-llama", action="store_true", help="skip xnb's llama.cpp engine")
    parser.add_argument("--llama-threads", type=int, default=1, help="llama.cpp compute threads")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--home", type=Path, help="XNB_HOME (reuses its converted model); default: a new temp dir")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on a timeout too
    if not (VENV / "bin" / "python").exists():
        raise SystemExit("no .venv-vllm: run scripts/bootstrap-vllm.sh first")
    work = Path(tempfile.mkdtemp(prefix="xnb-vllm-bench-"))
    home = args.home or work / "home"
    env = {**os.environ, "XNB_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": str(KV_GIB)}
    main_py, vllm_py = sys.executable, str(VENV / "bin" / "python")
    procs: list[subprocess.Popen[Any]] = []
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                               "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}
    try:
        sport = free_port()
        address = f"tcp://127.0.0.1:{sport}"
        procs.append(start([main_py, "-m", "xnb.cli", "scheduler", "--port", str(sport)],
                           work / "scheduler.log", env))
        time.sleep(2)
        procs.append(start([vllm_py, "-m", "xnb.cli", "worker", address, "--name", "vllm",
                            "--no-nanny"], work / "worker-vllm.log", env))
        if not args.no_llama:
            procs.append(start([main_py, "-m", "xnb.cli", "worker", address, "--name", "llama",
                                "--no-nanny"], work / "worker-llama.log", env))
        api_port = free_port()
        procs.append(start([main_py, "-m", "xnb.cli", "serve", "--scheduler", address, "--port",
                            str(api_port), "--max-queue", "64"], work / "sidecar.log", env))
        xnb_url = f"http://127.0.0.1:{api_port}"
        wait_http(xnb_url + "/health", 120, procs[-1], work / "sidecar.log")

        import xnb

        client = xnb.connect(address, start=False)
        deadline = time.monotonic() + 180  # the vLLM worker imports for a while before it joins
        while "vllm" not in json.dumps(client.cluster_info()) and time.monotonic() < deadline:
            time.sleep(0.5)
        log("launching SmolLM2 (pytorch, converted from the packaged GGUF) on xnb's vLLM engine")
        t0 = time.monotonic()
        vmodel = client.launch(SMOL, uid="smol-vllm", engine="vllm", format="pytorch", workers=["vllm"],
                               engine_options={"kv_cache_space": KV_GIB, "max_model_len": MAX_LEN},
                               timeout=900)
        (info,) = vmodel.info()
        folder = info["load"]["path"]
        results["xnb_vllm_launch_s"] = round(time.monotonic() - t0, 1)
        results["xnb_vllm_engine_start_s"] = info["load"].get("vllm_start_seconds")
        log(f"xnb-vllm ready in {results['xnb_vllm_launch_s']} s (vLLM start "
            f"{results['xnb_vllm_engine_start_s']} s); folder {folder}")
        if not args.no_llama:
            # one compute thread: OpenMP teams that spin stall on a shared, oversubscribed machine
            client.launch(SMOL, uid="smol-llama", engine="llama-cpp", workers=["llama"], timeout=300,
                          engine_options={"n_threads": args.llama_threads})
            log("xnb-llama.cpp ready")

        vport = free_port()
        vlog = work / "vllm-server.log"
        vproc = start([vllm_py, "-m", "vllm.entrypoints.openai.api_server", "--model", folder,
                       "--served-model-name", "smol", "--host", "127.0.0.1", "--port", str(vport),
                       "--enforce-eager", "--max-model-len", str(MAX_LEN), "--max-num-seqs", "64",
                       "--disable-log-stats"], vlog, env)
        procs.append(vproc)
        results["vllm_server_start_s"] = round(wait_http(f"http://127.0.0.1:{vport}/health", 900, vproc, vlog), 1)
        log(f"vLLM's own server ready in {results['vllm_server_start_s']} s")

        backends = {"vllm-server": (f"http://127.0.0.1:{vport}", "smol"),
                    "xnb-vllm": (xnb_url, "smol-vllm")}
        if not args.no_llama:
            backends["xnb-llama.cpp"] = (xnb_url, "smol-llama")
        prompts = bench.load_prompts()
        rows: list[dict[str, Any]] = []
        for i, (conc, count) in enumerate(((1, args.prompts_c1), (8, args.prompts_c8))):
            chosen = bench.sample_prompts(prompts, count, seed=conc)
            names = list(backends)
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                url, model = backends[name]
                s = run_level(url, model, chosen, conc, args.max_tokens)
                rows.append({"backend": name, "concurrency": conc, "requests": s["completed"],
                             "errors": s["errors"], "tok_s": s["output_throughput"],
                             "ttft_p50_ms": s["ttft_ms"]["median"], "ttft_p99_ms": s["ttft_ms"]["p99"],
                             "tpot_p50_ms": s["tpot_ms"]["median"]})
                log(f"c={conc} {name}: {s['output_throughput']:.1f} tok/s, TTFT p50 "
                    f"{s['ttft_ms']['median']:.0f} ms, errors {s['errors']}")
                if args.out:  # keep what was measured if a later step fails
                    args.out.write_text(json.dumps({**results, "rows": rows}, indent=1))
        results["rss_mb"] = {"vllm-server": round(rss_mb(vproc.pid)),
                             "xnb-vllm worker": round(rss_mb(procs[1].pid))}
        results["rows"] = rows
        results["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        client.terminate("smol-vllm")
        client.close()
    finally:
        for p in reversed(procs):
            stop(p)
    print(report(results, args))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = ["| backend | concurrency | requests | tokens/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms |",
             "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['backend']} | {r['concurrency']} | {r['requests']} ({r['errors']} errors) | "
                     f"{r['tok_s']:.1f} | {r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | "
                     f"{r['tpot_p50_ms']:.1f} |")
    by = {(r["backend"], r["concurrency"]): r for r in results["rows"]}
    lines.append("")
    for conc in (1, 8):
        x, v = by[("xnb-vllm", conc)], by[("vllm-server", conc)]
        ratio = x["tok_s"] / v["tok_s"]
        added = x["ttft_p50_ms"] - v["ttft_p50_ms"]
        lines.append(f"- concurrency {conc}: xnb-vllm / vllm-server tokens/s = {ratio:.3f} "
                     f"(target ≥ 0.97: {'met' if ratio >= 0.97 else 'missed'}); TTFT p50 added "
                     f"{added:+.0f} ms (target ≤ 5 ms: {'met' if added <= 5 else 'missed'})")
    lines.append(f"- starts: xnb launch → ready {results['xnb_vllm_launch_s']} s (vLLM engine "
                 f"{results['xnb_vllm_engine_start_s']} s, the rest conversion + Dask); vLLM's "
                 f"server → /health {results['vllm_server_start_s']} s")
    lines.append(f"- resident memory: {results['rss_mb']}")
    lines.append(f"- load average start {results['loadavg_start']}, end {results['loadavg_end']}; "
                 f"{args.max_tokens} tokens per request (ignore_eos), greedy, streamed")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
