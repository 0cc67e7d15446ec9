"""The scheduler restarts without losing the models: an `xnb scheduler` with a state
directory, two `xnb worker`s (one with a nanny, one without) and an `xnb serve`
sidecar, all real processes on 127.0.0.1; the scheduler is killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from xnb.client import Client
from xnb.errors import ModelNotFound
from xnb.runtime.store import STATE_FILE, StateStore
from xnb.settings import XnbSettings

from support import SMOL, Procs, free_port, port_open, wait_until, workers_by_name

#: The bound this test states: both models back to ready this long after the scheduler restarts.
RECOVERY_S = 120


def test_state_store_is_atomic_and_forgets_terminated(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    store.launched("a", {"model": SMOL, "replicas": 2, "restart": "on-failure"}, created=1.0, workers=["w1", "w2"])
    store.launched("b", {"model": SMOL}, created=2.0, workers=["w1"])
    store.scaled("a", 3, workers=["w1", "w2"])
    store.terminated("b")
    assert [p.name for p in (tmp_path / "state").iterdir()] == [STATE_FILE]  # no temporary file left
    again = StateStore(tmp_path / "state").models()
    assert again == {"a": {"launch": {"model": SMOL, "uid": "a", "replicas": 3, "restart": "on-failure"},
                           "created": 1.0, "workers": ["w1", "w2"]}}
    (tmp_path / "state" / STATE_FILE).write_text("{ half a file")
    assert StateStore(tmp_path / "state").models() == {}  # unreadable: kept aside, not overwritten
    assert any(p.name.startswith(f"{STATE_FILE}.unreadable-") for p in (tmp_path / "state").iterdir())


def _chat(api: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    return httpx.post(api + "/v1/chat/completions", json=body, timeout=30)


def test_scheduler_restart_restores_models(tmp_path: Path) -> None:
    home, state = tmp_path / "home", tmp_path / "state"
    procs = Procs(home, logs=tmp_path / "logs")
    port, api_port = free_port(), free_port()
    address, api = f"tcp://127.0.0.1:{port}", f"http://127.0.0.1:{api_port}"
    scheduler_args = ("scheduler", "--port", str(port), "--state-dir", str(state))
    client: Client | None = None
    try:
        sched = procs.start(*scheduler_args)
        wait_until(lambda: port_open(port), 30, "the scheduler port")
        procs.start("worker", address, "--nthreads", "1", "--name", "w1")  # with a nanny
        procs.worker(address, "w2")  # without
        # The sidecar's Dask client gives up reconnecting after 3 s (Dask's default: 30 s), so
        # the sidecar's own reconnecting (a new client) is what brings it back.
        procs.start("serve", "--scheduler", address, "--port", str(api_port),
                    env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"})
        client = Client(address, settings=XnbSettings(home=home))
        wait_until(lambda: set(workers_by_name(client)) >= {"w1", "w2"}, 60, "two workers")
        pair = client.launch(SMOL, uid="pair", replicas=2, timeout=120)
        client.launch(SMOL, uid="solo", engine_options={"n_ctx": 1024}, timeout=120)
        client.launch(SMOL, uid="gone", timeout=120)
        client.terminate("gone")
        assert {r["worker"] for r in pair.record["replicas"]} == set(workers_by_name(client).values())
        wait_until(lambda: port_open(api_port), 60, "the sidecar port")
        assert _chat(api, "pair").status_code == 200
        saved = json.loads((state / STATE_FILE).read_text())["models"]
        assert set(saved) == {"pair", "solo"}
        client.close()
        client = None

        os.kill(sched.pid, signal.SIGKILL)
        sched.wait(timeout=10)
        # While the cluster is away the sidecar answers 503 with Retry-After, at once,
        # until its Dask client has given up (then it opens new ones by itself).
        def unavailable(state: str = "") -> bool:
            started = time.monotonic()
            r = _chat(api, "pair")
            assert time.monotonic() - started < 10, "the sidecar hung while the scheduler was away"
            assert r.status_code == 503 and "Retry-After" in r.headers, r.text
            return f"({state}" in r.json()["error"]["message"]
        wait_until(unavailable, 30, "a 503 from the sidecar")
        wait_until(lambda: unavailable("closed"), 30, "the sidecar's Dask client to give up")

        restarted = time.monotonic()
        procs.start(*scheduler_args)
        wait_until(lambda: port_open(port), 30, "the restarted scheduler port")
        client = Client(address, settings=XnbSettings(home=home))
        # No user action: the workers rejoin by themselves and the models come back.
        wait_until(lambda: {m["uid"]: m["status"] for m in client.list()} == {"pair": "ready", "solo": "ready"}
                   and all(m["replicas_ready"] == len(m["replicas"]) for m in client.list()),
                   RECOVERY_S, "both models back to ready", interval=0.5)
        recovered_s = time.monotonic() - restarted
        pair_record = client.get("pair").record
        assert len(pair_record["replicas"]) == 2
        assert {r["worker"] for r in pair_record["replicas"]} == set(workers_by_name(client).values())
        solo = client.get("solo")
        assert solo.record["options"]["restart"] == "never"
        assert solo.info()[0]["engine"]["n_ctx"] == 1024  # its engine options came back
        kinds = [e["kind"] for e in solo.events()]
        assert kinds[0] == "restore" and "launch" in kinds and kinds[-1] == "ready"
        with pytest.raises(ModelNotFound):  # terminated before the kill: stays gone
            client.get("gone")
        # The sidecar (never restarted) serves both again.
        for uid in ("pair", "solo"):
            wait_until(lambda uid=uid: _chat(api, uid).status_code == 200, 60, f"the sidecar to serve {uid}")
        print(f"models back to ready {recovered_s:.1f}s after the scheduler restarted (bound {RECOVERY_S}s)")
    finally:
        if client is not None:
            client.close()
        procs.close()
