"""Where the CPU goes: xnb's vLLM engine against vLLM's own server, per process.

Starts ``xnb scheduler`` + an ``xnb worker`` from .venv-vllm + ``xnb serve`` and
vLLM's own OpenAI server (same converted SmolLM2 folder, eager bf16, KV 1 GiB),
then, twice and alternating, runs CONCURRENCY x COUNT greedy streamed requests of
128 tokens (``ignore_eos``) at each backend and prints tokens/s, TTFT, TPOT and the
CPU seconds every process used during that run (user + system, from psutil).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/vllm_cpu_share.py 1 6
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/vllm_cpu_share.py 8 16

XNB_HOME defaults to /tmp/xnb-cpu-share (its converted model is reused; its
scheduler state is cleared so no model is restored from an earlier run).
"""

import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402
import vllm_compare as vc  # noqa: E402

from xnb import bench  # noqa: E402


def tree(pid):
    p = psutil.Process(pid)
    return [p] + p.children(recursive=True)


def cpu_snapshot(roots):
    out = {}
    for name, pid in roots.items():
        for p in tree(pid):
            try:
                t = p.cpu_times()
                label = f"{name}:{p.pid}:{' '.join(p.cmdline()[1:3])[:40]}"
                out[label] = t.user + t.system
            except psutil.Error:
                pass
    return out


def main():
    conc = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    which = sys.argv[3].split(",") if len(sys.argv) > 3 else ["vllm-server", "xnb-vllm"]
    work = Path(tempfile.mkdtemp(prefix="probe-"))
    home = Path(os.environ.get("XNB_HOME", "/tmp/xnb-cpu-share"))
    shutil.rmtree(home / "state", ignore_errors=True)
    env = {
        **os.environ,
        "XNB_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.path.dirname(HERE),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    env.update(json.loads(os.environ.get("PROBE_ENV", "{}")))
    main_py, vllm_py = sys.executable, str(vc.VENV / "bin" / "python")
    procs = []
    roots = {}
    try:
        backends = {}
        if "xnb-vllm" in which:
            sport = vc.free_port()
            address = f"tcp://127.0.0.1:{sport}"
            procs.append(vc.start([main_py, "-m", "xnb.cli", "scheduler", "--port", str(sport)], work / "s.log", env))
            roots["scheduler"] = procs[-1].pid
            time.sleep(2)
            procs.append(
                vc.start([vllm_py, "-m", "xnb.cli", "worker", address, "--name", "vllm", "--no-nanny"], work / "w.log", env)
            )
            roots["worker"] = procs[-1].pid
            api_port = vc.free_port()
            procs.append(
                vc.start(
                    [main_py, "-m", "xnb.cli", "serve", "--scheduler", address, "--port", str(api_port), "--max-queue", "64"],
                    work / "api.log",
                    env,
                )
            )
            roots["sidecar"] = procs[-1].pid
            vc.wait_http(f"http://127.0.0.1:{api_port}/health", 120, procs[-1], work / "api.log")
            import xnb

            client = xnb.connect(address, start=False)
            t = time.monotonic()
            while "vllm" not in json.dumps(client.cluster_info()) and time.monotonic() - t < 120:
                time.sleep(0.5)
            m = client.launch(
                vc.SMOL,
                uid="smol-vllm",
                engine="vllm",
                format="pytorch",
                workers=["vllm"],
                engine_options={"kv_cache_space": 1, "max_model_len": 2048},
                timeout=900,
            )
            folder = m.info()[0]["load"]["path"]
            backends["xnb-vllm"] = (f"http://127.0.0.1:{api_port}", "smol-vllm")
            print("xnb ready", folder, flush=True)
        else:
            folder = sys.argv[4]
        if "vllm-server" in which:
            vport = vc.free_port()
            procs.append(
                vc.start(
                    [
                        vllm_py,
                        "-m",
                        "vllm.entrypoints.openai.api_server",
                        "--model",
                        folder,
                        "--served-model-name",
                        "smol",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(vport),
                        "--enforce-eager",
                        "--max-model-len",
                        "2048",
                        "--max-num-seqs",
                        "64",
                        "--disable-log-stats",
                    ],
                    work / "v.log",
                    env,
                )
            )
            roots["vserver"] = procs[-1].pid
            vc.wait_http(f"http://127.0.0.1:{vport}/health", 900, procs[-1], work / "v.log")
            backends["vllm-server"] = (f"http://127.0.0.1:{vport}", "smol")
        prompts = bench.sample_prompts(bench.load_prompts(), count, seed=conc)
        me = psutil.Process()
        for _rep in range(2):
            for name, (url, model) in backends.items():
                vc.run_level(url, model, prompts[:1], 1, 16)  # warm
                before = cpu_snapshot(roots)
                mb = me.cpu_times()
                t0 = time.monotonic()
                s = vc.run_level(url, model, prompts, conc, 128)
                wall = time.monotonic() - t0
                after = cpu_snapshot(roots)
                ma = me.cpu_times()
                print(
                    f"== {name} c={conc}: {s['output_throughput']:.1f} tok/s TTFT p50 {s['ttft_ms']['median']:.0f} TPOT {s['tpot_ms']['median']:.1f} wall {wall:.1f}s",
                    flush=True,
                )
                for k in after:
                    d = after[k] - before.get(k, 0)
                    if d > 0.05:
                        print(f"   {k:70s} {d:7.2f}s  {d / wall:5.2f} cores", flush=True)
                print(f"   {'bench client':70s} {(ma.user + ma.system) - (mb.user + mb.system):7.2f}s", flush=True)
    finally:
        for p in reversed(procs):
            vc.stop(p)


if __name__ == "__main__":
    main()
