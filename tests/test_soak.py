"""Soak: minutes of a bounded mix of requests against real processes, then checks.

An `xnb scheduler`, one `xnb worker` (no nanny, so its pid is the process that
holds the models) and an `xnb serve` sidecar.  Three client threads send, in a
random but seeded mix: streamed and plain chats, streams dropped after the first
chunk, bad requests, embeddings; a fourth launches, uses and terminates a
second model over and over.  Afterwards: no 5xx, every stream that was read to
the end ended with ``[DONE]``, no KV cells in use, and the memory (RSS), threads
and open files of every process flat against the end of the warm-up.

``XNB_SOAK_SECONDS`` sets the measured duration (default 120 s after a 60 s warm-up; the whole test
takes about 4 minutes on 2 cores).  Marked slow: `pytest -m slow tests/test_soak.py -s`.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from xnb.client import Client
from xnb.settings import XnbSettings

from support import MINILM, SMOL, Procs, free_port, port_open, wait_until, workers_by_name

pytestmark = pytest.mark.slow

SOAK_S = float(os.environ.get("XNB_SOAK_SECONDS", "120"))
WARMUP_S = 60.0
RSS_TOLERANCE = 0.05  # "flat": within 5 % of the end of the warm-up ...
RSS_SLACK_MB = 6.0  # ... or within a few MB, for the small processes
THREAD_SLACK, FD_SLACK = 2, 4
MESSAGES = [{"role": "user", "content": "Name three colours and describe one of them."}]


def _proc(pid: int) -> dict[str, float]:
    """RSS (MB), threads and open file descriptors of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return {"rss_mb": rss_kb / 1024, "threads": len(os.listdir(f"/proc/{pid}/task")),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kinds: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []

    def record(self, kind: str, status: int, problem: str | None = None) -> None:
        with self.lock:
            self.kinds[kind] += 1
            self.statuses[status] += 1
            if status >= 500:
                self.failures.append(f"{kind}: HTTP {status}")
            if problem:
                self.failures.append(f"{kind}: {problem}")


def _one(http: httpx.Client, rng: random.Random, tally: Tally) -> None:
    roll = rng.random()
    body: dict[str, Any] = {"model": "chat", "messages": MESSAGES, "max_tokens": rng.randint(4, 24),
                            "temperature": 0.7, "seed": rng.randint(0, 1000)}
    if roll < 0.30:  # streamed, read to the end
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            lines = [line for line in r.iter_lines() if line]
        ended = r.status_code != 200 or (lines and lines[-1] == "data: [DONE]"
                                          and not any('"error"' in line for line in lines))
        tally.record("stream", r.status_code, None if ended else f"stream ended with {lines[-2:]}")
    elif roll < 0.45:  # streamed, the client goes away after the first chunk
        with http.stream("POST", "/v1/chat/completions",
                         json={**body, "stream": True, "max_tokens": 200}) as r:
            for line in r.iter_lines():
                if line:
                    break
        tally.record("dropped-stream", r.status_code)
    elif roll < 0.70:  # not streamed
        r = http.post("/v1/chat/completions", json=body)
        ok = r.status_code != 200 or r.json()["choices"][0]["finish_reason"] in ("stop", "length")
        tally.record("chat", r.status_code, None if ok else f"no finish_reason: {r.text[:200]}")
    elif roll < 0.85:  # embeddings
        texts = [f"sentence number {rng.randint(0, 99)}" for _ in range(rng.randint(1, 4))]
        r = http.post("/v1/embeddings", json={"model": "emb", "input": texts})
        ok = r.status_code != 200 or len(r.json()["data"]) == len(texts)
        tally.record("embeddings", r.status_code, None if ok else "wrong number of embeddings")
    else:  # bad input: must be a 4xx, never a 5xx
        bad = rng.choice([
            {"model": "chat"},  # no messages
            {"model": "chat", "messages": MESSAGES, "max_tokens": -3},
            {"model": "no-such-model", "messages": MESSAGES},
            {"model": "chat", "messages": "not a list"},
        ])
        r = http.post("/v1/chat/completions", json=bad)
        tally.record("bad-input", r.status_code, None if 400 <= r.status_code < 500 else f"HTTP {r.status_code}")


def _clients(api: str, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=api, timeout=120) as http:
        while not stop.is_set():
            _one(http, rng, tally)
        r = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        tally.record("bad-input", r.status_code, None if r.status_code == 400 else f"HTTP {r.status_code}")


def _launcher(client: Client, api: str, stop: threading.Event, tally: Tally, loaded: threading.Lock) -> None:
    """Launch, use, terminate the second model; ``loaded`` is held while it exists."""
    with httpx.Client(base_url=api, timeout=120) as http:
        while not stop.is_set():
            with loaded:
                client.launch(SMOL, uid="extra", timeout=120)
                r = http.post("/v1/chat/completions", json={"model": "extra", "messages": MESSAGES,
                                                            "max_tokens": 4})
                tally.record("extra-chat", r.status_code)
                client.terminate("extra")
            tally.record("launch+terminate", 200)
            stop.wait(3)  # pacing: chat traffic is most of the mix


def test_soak(tmp_path: Path) -> None:
    home = tmp_path / "home"
    procs = Procs(home, logs=tmp_path / "logs")
    client: Client | None = None
    try:
        port, api_port = free_port(), free_port()
        address = f"tcp://127.0.0.1:{port}"
        sched = procs.start("scheduler", "--port", str(port), "--state-dir", str(tmp_path / "state"))
        wait_until(lambda: port_open(port), 30, "the scheduler port")
        worker = procs.worker(address, "w", "--nthreads", "2")
        sidecar = procs.start("serve", "--scheduler", address, "--port", str(api_port))
        client = Client(address, settings=XnbSettings(home=home))
        wait_until(lambda: workers_by_name(client), 60, "the worker")
        chat = client.launch(SMOL, uid="chat", timeout=120)
        client.launch(MINILM, uid="emb", timeout=180)
        wait_until(lambda: port_open(api_port), 60, "the sidecar port")
        api = f"http://127.0.0.1:{api_port}"
        pids = {"scheduler": sched.pid, "worker": worker.pid, "sidecar": sidecar.pid}

        tally = Tally()
        stop = threading.Event()
        threads = [threading.Thread(target=_clients, args=(api, stop, tally, seed)) for seed in range(3)]
        loaded = threading.Lock()
        threads.append(threading.Thread(target=_launcher, args=(client, api, stop, tally, loaded)))
        started = time.monotonic()
        for t in threads:
            t.start()
        try:
            wait_until(lambda: tally.kinds["launch+terminate"] >= 1 and time.monotonic() - started > WARMUP_S,
                       WARMUP_S + 120, "the warm-up (one launch and termination of the second model)")
            with loaded:  # compared with the end, when the second model is not loaded either
                before = {name: _proc(pid) for name, pid in pids.items()}
            requests_at_warmup = sum(tally.kinds.values())
            rss: dict[str, list[float]] = {name: [] for name in pids}

            def sample_until_the_end() -> bool:
                with loaded:  # samples comparable with each other: the second model not loaded
                    for name, pid in pids.items():
                        rss[name].append(_proc(pid)["rss_mb"])
                return time.monotonic() - started > WARMUP_S + SOAK_S

            wait_until(sample_until_the_end, WARMUP_S + SOAK_S + 60, "the end of the soak", interval=15)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=180)
        duration = time.monotonic() - started
        assert not any(t.is_alive() for t in threads), "a client thread did not finish"

        # Quiet again: no sequence running, no KV cell in use (dropped streams were aborted).
        wait_until(lambda: all(i["engine"].get("running") == 0 and i["engine"].get("kv_cells_active") == 0
                               for i in chat.info()), 60, "the chat model's KV cells to be free")
        after = {name: _proc(pid) for name, pid in pids.items()}
        total = sum(tally.kinds.values())
        print(f"\nsoak: {total} requests in {duration:.0f}s ({total - requests_at_warmup} after a "
              f"{WARMUP_S:.0f}s warm-up): {dict(tally.kinds)}; statuses {dict(tally.statuses)}")
        for name in pids:
            b, a = before[name], after[name]
            print(f"  {name:9s} RSS {b['rss_mb']:7.1f} -> {a['rss_mb']:7.1f} MB "
                  f"({100 * (a['rss_mb'] / b['rss_mb'] - 1):+.1f}%), threads {b['threads']:.0f} -> "
                  f"{a['threads']:.0f}, fds {b['fds']:.0f} -> {a['fds']:.0f}; RSS during the soak "
                  f"{' '.join(f'{x:.0f}' for x in rss[name])}")
        assert not tally.failures, tally.failures[:20]
        assert tally.kinds["stream"] and tally.kinds["dropped-stream"] and tally.kinds["embeddings"]
        assert tally.kinds["launch+terminate"] >= 2
        for name in pids:
            b, a = before[name], after[name]
            assert a["rss_mb"] <= max(b["rss_mb"] * (1 + RSS_TOLERANCE), b["rss_mb"] + RSS_SLACK_MB), \
                f"{name}: memory grew {b['rss_mb']:.1f} -> {a['rss_mb']:.1f} MB"
            assert a["threads"] <= b["threads"] + THREAD_SLACK, f"{name}: threads {b['threads']} -> {a['threads']}"
            assert a["fds"] <= b["fds"] + FD_SLACK, f"{name}: open files {b['fds']} -> {a['fds']}"
        assert [m["uid"] for m in client.list()] == ["chat", "emb"]
        assert json.loads((tmp_path / "state" / "state.json").read_text())["models"].keys() == {"chat", "emb"}
    finally:
        if client is not None:
            client.close()
        procs.close()
