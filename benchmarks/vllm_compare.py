#!/usr/bin/env python
"""xnb's vLLM engine against vLLM's own OpenAI server, in one run, same model, same prompts.

All backends are up at once and measured in turn, in many short rounds whose order
rotates: this virtual machine's speed drifts by ±15–30 % from one stretch of seconds
to the next (a fixed pure-Python loop: 1.57–2.05 s), so a ratio is only worth
something paired round by round, as the median of the rounds.  What the idle
backends cost meanwhile is measured and printed (a few hundredths of a core).

1. ``vllm-server``: ``python -m vllm.entrypoints.openai.api_server`` from .venv-vllm;
2. ``xnb-vllm``: ``xnb scheduler`` + ``xnb worker`` from .venv-vllm + ``xnb serve``
   (sidecar → Dask actor → the vLLM engine);
3. ``xnb-llama.cpp``: a second worker (main env) of the same cluster serving SmolLM2 on
   llama.cpp with the **default launch** (what ``xnb launch`` gives: the packaged Q4_1
   GGUF requantized to Q8_0, default engine options) —
   issue 14's table: which engine to choose at which load.

Both vLLM paths load the same converted safetensors folder with the same options
(eager, bf16, KV cache 1 GiB, max_model_len 2048).  Requests are xnb's bundled
prompt set (``xnb.bench``), greedy, streamed, ``ignore_eos`` so every request
makes exactly ``--max-tokens`` tokens.  Prints a markdown table and the targets
(≥0.97× vLLM's tokens/s at each concurrency, xnb's TTFT p50 at most 5 ms above;
llama.cpp at concurrency 8 at least vLLM's tokens/s with a TTFT p50 no higher).

    .venv/bin/python benchmarks/vllm_compare.py           # needs .venv-vllm (scripts/bootstrap-vllm.sh)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
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
LEVELS = (1, 8)


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
    """Stop a process and its children (its own session: vLLM's engine core goes too)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; give its children the same time to follow.
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(proc.pid):
            time.sleep(0.2)
        if not _group_alive(proc.pid):
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


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


class Backends:
    """Starts one backend at a time (and stops it) for :func:`main`."""

    def __init__(self, work: Path, env: dict[str, str], folder: Path) -> None:
        self.work, self.env, self.folder = work, env, folder
        self.main_py, self.vllm_py = sys.executable, str(VENV / "bin" / "python")
        self.procs: list[subprocess.Popen[Any]] = []
        self.info: dict[str, Any] = {}
        self.started = 0  # processes started so far (names their logs and state directories)

    def _start(self, cmd: list[str], name: str) -> subprocess.Popen[Any]:
        proc = start(cmd, self.work / f"{name}-{self.started}.log", self.env)
        self.procs.append(proc)
        self.started += 1
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)
        self.procs.clear()

    def vllm_server(self) -> tuple[str, str]:
        port = free_port()
        proc = self._start([self.vllm_py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.folder),
                            "--served-model-name", "smol", "--host", "127.0.0.1", "--port", str(port),
                            "--enforce-eager", "--max-model-len", str(MAX_LEN), "--max-num-seqs", "64",
                            "--disable-log-stats"], "vllm-server")
        took = wait_http(f"http://127.0.0.1:{port}/health", 900, proc, self.work / f"vllm-server-{self.started - 1}.log")
        self.info.setdefault("vllm_server_start_s", []).append(round(took, 1))
        self.info["rss_mb vllm-server"] = round(rss_mb(proc.pid))
        return f"http://127.0.0.1:{port}", "smol"

    def xnb(self, engines: list[str]) -> dict[str, tuple[str, str]]:
        """xnb's scheduler, a worker per engine (from .venv-vllm for vLLM) and the sidecar;
        launches the model on each: ``{engine: (url, model uid)}``."""
        sport = free_port()
        address = f"tcp://127.0.0.1:{sport}"
        # A fresh state directory each time: the scheduler must not restore an earlier run's models.
        state = self.work / f"state-{self.started}"
        self._start([self.main_py, "-m", "xnb.cli", "scheduler", "--port", str(sport), "--state-dir", str(state)],
                    "scheduler")
        workers = {}
        for engine in engines:
            python = self.vllm_py if engine == "vllm" else self.main_py
            workers[engine] = self._start([python, "-m", "xnb.cli", "worker", address, "--name", engine,
                                           "--no-nanny"], f"worker-{engine}")
        api_port = free_port()
        sidecar = self._start([self.main_py, "-m", "xnb.cli", "serve", "--scheduler", address, "--port",
                               str(api_port), "--max-queue", "64"], "sidecar")
        url = f"http://127.0.0.1:{api_port}"
        wait_http(url + "/health", 120, sidecar, self.work / f"sidecar-{self.started - 1}.log")
        import xnb

        client = xnb.connect(address, start=False)
        out = {}
        try:
            deadline = time.monotonic() + 180  # the vLLM worker imports for a while before it joins
            while (not all(e in json.dumps(client.cluster_info()) for e in engines)
                   and time.monotonic() < deadline):
                time.sleep(0.5)
            for engine in engines:
                t0 = time.monotonic()
                if engine == "vllm":
                    model = client.launch(SMOL, uid="smol-vllm", engine="vllm", format="pytorch", timeout=900,
                                          workers=[engine],
                                          engine_options={"kv_cache_space": KV_GIB, "max_model_len": MAX_LEN})
                    (info,) = model.info()
                    self.info["xnb_vllm_launch_s"] = round(time.monotonic() - t0, 1)
                    self.info["xnb_vllm_engine_start_s"] = info["load"].get("vllm_start_seconds")
                    self.info["rss_mb xnb-vllm worker"] = round(rss_mb(workers[engine].pid))
                else:  # the defaults a user gets
                    model = client.launch(SMOL, uid="smol-llama", engine="llama-cpp", timeout=300, workers=[engine])
                    (info,) = model.info()
                    self.info["llama_engine"] = {k: info["engine"].get(k) for k in ("max_num_seqs", "n_ctx")}
                out[engine] = (url, model.uid)
            return out
        finally:
            client.close()


def cpu_seconds(pids: list[int]) -> dict[str, float]:
    """CPU seconds (user + system) each process of these trees has used, by ``pid command``."""
    import psutil

    out: dict[str, float] = {}
    for pid in pids:
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            continue
        for p in procs:
            try:
                t = p.cpu_times()
                label = " ".join(p.cmdline()[1:4]).strip()[:50] or p.name()  # vLLM renames its processes
                out[f"{p.pid} {label}"] = t.user + t.system
            except psutil.Error:
                pass
    return out


def idle_cpu(pids: list[int], seconds: float = 5.0) -> dict[str, float]:
    """Cores each process of these trees uses while nothing is asked of it."""
    before = cpu_seconds(pids)
    time.sleep(seconds)
    after = cpu_seconds(pids)
    return {k: round((after[k] - before[k]) / seconds, 3) for k in after if k in before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--prompts-c1", type=int, default=18, help="requests at concurrency 1 (split over the rounds)")
    parser.add_argument("--prompts-c8", type=int, default=48, help="requests at concurrency 8 (split over the rounds)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per concurrency (backend order rotates)")
    parser.add_argument("--no-llama", action="store_true", help="skip xnb's llama.cpp engine")
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
    os.environ["XNB_HOME"] = str(home)
    from xnb.catalog.convert import packaged_smollm2_safetensors

    folder = packaged_smollm2_safetensors()  # the folder both vLLM paths load (xnb's launch finds it cached)
    prompts = bench.load_prompts()
    chosen = {1: bench.sample_prompts(prompts, args.prompts_c1, seed=1),
              8: bench.sample_prompts(prompts, args.prompts_c8, seed=8)}
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                               "loadavg_start": Path("/proc/loadavg").read_text().split()[:3], "rows": []}
    backends = Backends(work, env, folder)
    try:
        log("starting xnb (scheduler, workers, sidecar) and vLLM's own server")
        urls = {f"xnb-{'llama.cpp' if e == 'llama-cpp' else e}": target
                for e, target in backends.xnb(["vllm"] if args.no_llama else ["vllm", "llama-cpp"]).items()}
        urls["vllm-server"] = backends.vllm_server()
        results["idle_cores"] = idle_cpu([p.pid for p in backends.procs])
        log(f"idle CPU (cores) per process tree: {results['idle_cores']}")
        names = list(urls)
        for conc in LEVELS:
            for rnd in range(args.rounds):
                order = names[rnd % len(names):] + names[:rnd % len(names)]
                if rnd % 2:
                    order.reverse()
                subset = chosen[conc]
                per_round = len(subset) // args.rounds
                batch = subset[rnd * per_round:(rnd + 1) * per_round] or subset
                for name in order:
                    url, model = urls[name]
                    s = run_level(url, model, batch, conc, args.max_tokens)
                    results["rows"].append({
                        "round": rnd, "backend": name, "concurrency": conc, "requests": s["completed"],
                        "errors": s["errors"], "tok_s": s["output_throughput"],
                        "ttft_p50_ms": s["ttft_ms"]["median"], "ttft_p99_ms": s["ttft_ms"]["p99"],
                        "tpot_p50_ms": s["tpot_ms"]["median"]})
                    log(f"c={conc} round {rnd} {name}: {s['output_throughput']:.1f} tok/s, TTFT p50 "
                        f"{s['ttft_ms']['median']:.0f} ms, errors {s['errors']} of {len(batch)}")
                if args.out:  # keep what was measured if a later step fails
                    args.out.write_text(json.dumps({**results, **backends.info}, indent=1))
    finally:
        backends.stop_all()
    results.update(backends.info)
    results["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    print(report(results, args))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


def _paired(rows: list[dict[str, Any]], a: str, b: str, conc: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(a's row, b's row) of each round at ``conc``."""
    by = {(r["backend"], r["round"]): r for r in rows if r["concurrency"] == conc}
    return [(by[(a, rnd)], by[(b, rnd)]) for (name, rnd) in sorted(by) if name == a and (b, rnd) in by]


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    rows = results["rows"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    lines = ["| backend | concurrency | requests | tokens/s (mean of rounds) | TTFT p50 ms (median of rounds) "
             "| TPOT p50 ms | rounds |", "|---|---|---|---|---|---|---|"]
    for conc in LEVELS:
        for name in backends:
            mine = [r for r in rows if r["backend"] == name and r["concurrency"] == conc]
            if not mine:
                continue
            lines.append(f"| {name} | {conc} | {sum(r['requests'] for r in mine)} "
                         f"({sum(r['errors'] for r in mine)} errors) | {statistics.mean(r['tok_s'] for r in mine):.1f} | "
                         f"{statistics.median(r['ttft_p50_ms'] for r in mine):.0f} | "
                         f"{statistics.median(r['tpot_p50_ms'] for r in mine):.1f} | {len(mine)} |")
    lines.append("")
    for conc in LEVELS:
        pairs = _paired(rows, "xnb-vllm", "vllm-server", conc)
        ratios = [x["tok_s"] / v["tok_s"] for x, v in pairs]
        added = [x["ttft_p50_ms"] - v["ttft_p50_ms"] for x, v in pairs]
        ratio, extra = statistics.median(ratios), statistics.median(added)
        lines.append(f"- concurrency {conc}: xnb-vllm / vllm-server tokens/s, median of {len(ratios)} paired rounds "
                     f"= **{ratio:.3f}** (rounds: {', '.join(f'{r:.2f}' for r in ratios)}; target ≥ 0.97: "
                     f"{'met' if ratio >= 0.97 else 'missed'}); TTFT p50 added, median = **{extra:+.0f} ms** "
                     f"(rounds: {', '.join(f'{a:+.0f}' for a in added)}; target ≤ 5 ms: "
                     f"{'met' if extra <= 5 else 'missed'})")
    if "xnb-llama.cpp" in backends:
        for conc in LEVELS:
            pairs = _paired(rows, "xnb-llama.cpp", "vllm-server", conc)
            ratios = [x["tok_s"] / v["tok_s"] for x, v in pairs]
            ttft = [(x["ttft_p50_ms"], v["ttft_p50_ms"]) for x, v in pairs]
            lines.append(f"- xnb llama.cpp, default launch ({results.get('llama_engine')}) / vLLM's server at "
                         f"concurrency {conc}: tokens/s median **{statistics.median(ratios):.2f}×** (rounds: "
                         f"{', '.join(f'{r:.2f}' for r in ratios)}); TTFT p50 median "
                         f"{statistics.median(t[0] for t in ttft):.0f} vs {statistics.median(t[1] for t in ttft):.0f} ms")
    lines.append(f"- starts: xnb launch → ready {results.get('xnb_vllm_launch_s')} s (vLLM engine "
                 f"{results.get('xnb_vllm_engine_start_s')} s); vLLM's server → /health {results.get('vllm_server_start_s')} s")
    lines.append(f"- resident memory (MB): xnb-vllm worker {results.get('rss_mb xnb-vllm worker')}, "
                 f"vLLM's server {results.get('rss_mb vllm-server')}")
    lines.append(f"- idle CPU of every process tree while all are up (cores): {results.get('idle_cores')}")
    lines.append(f"- load average start {results['loadavg_start']}, end {results['loadavg_end']}; "
                 f"{args.max_tokens} tokens per request (ignore_eos), greedy, streamed")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
