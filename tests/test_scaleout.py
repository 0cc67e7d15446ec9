"""Scale-out and failures with real processes: an `xnb scheduler`, `xnb worker`s
and an `xnb serve` sidecar on 127.0.0.1; workers are killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from xnb.client import Client
from xnb.runtime.cluster import temporary_security
from xnb.errors import ModelNotFound
from xnb.settings import XnbSettings

from support import SMOL, Procs, free_port, port_open, wait_until, workers_by_name

LONG = [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("multi-home")
    procs = Procs(home)
    client = None
    try:
        port = free_port()
        procs.start("scheduler", "--port", str(port))
        wait_until(lambda: port_open(port), 30, "the scheduler port")
        address = f"tcp://127.0.0.1:{port}"
        w1 = procs.worker(address, "w1")
        w2 = procs.worker(address, "w2")
        api_port = free_port()
        procs.start("serve", "--scheduler", address, "--port", str(api_port))
        client = Client(address, settings=XnbSettings(home=home))
        wait_until(lambda: set(workers_by_name(client)) >= {"w1", "w2"}, 60, "two workers")
        api = f"http://127.0.0.1:{api_port}"
        wait_until(lambda: port_open(api_port), 60, "the sidecar port")
        yield {"client": client, "address": address, "procs": procs, "pids": {"w1": w1.pid, "w2": w2.pid},
               "api": api, "home": home}
    finally:
        if client is not None:
            client.close()
        procs.close()


def test_replicas_spread_and_serve_in_parallel(multi: dict[str, Any]) -> None:
    client: Client = multi["client"]
    model = client.launch(SMOL, uid="pair", replicas=2, timeout=120)
    workers = {r["worker"] for r in model.record["replicas"]}
    assert workers == set(workers_by_name(client).values())
    stamps: dict[int, list[float]] = {0: [], 1: []}

    def run(i: int) -> None:
        for chunk in model.chat(LONG, stream=True, max_tokens=40, temperature=0):
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                stamps[i].append(time.monotonic())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    # both replicas served one request each (routing to the least busy replica) ...
    served = sorted(info["counters"]["requests"] for info in model.info())
    assert served == [1, 1]
    # ... at the same time: each stream produced tokens while the other was running
    assert stamps[0] and stamps[1]
    assert stamps[1][0] < stamps[0][-1] and stamps[0][0] < stamps[1][-1]
    client.terminate("pair")


def test_scale_up_and_down(multi: dict[str, Any]) -> None:
    client: Client = multi["client"]
    model = client.launch(SMOL, uid="elastic", timeout=120)
    record = client._sync(client.manager.scale, "elastic", 2)
    assert len(record["replicas"]) == 2
    record = model.wait(timeout=120).record
    assert record["replicas_ready"] == 2
    assert len({r["worker"] for r in record["replicas"]}) == 2
    record = client._sync(client.manager.scale, "elastic", 1)
    assert len(record["replicas"]) == 1 and record["status"] == "ready"
    assert model.chat("hi", max_tokens=3)["usage"]["completion_tokens"] >= 1
    client.terminate("elastic")


def test_kill_worker_mid_stream(multi: dict[str, Any]) -> None:
    client: Client = multi["client"]
    names = workers_by_name(client)
    client.launch(SMOL, uid="ha", workers=["w1"], restart="on-failure", timeout=120)
    client.launch(SMOL, uid="steady", workers=["w2"], timeout=120)
    duo = client.launch(SMOL, uid="duo", replicas=2, timeout=120)
    assert {r["worker"] for r in duo.record["replicas"]} == {names["w1"], names["w2"]}
    body = {"model": "ha", "messages": LONG, "max_tokens": 4000, "stream": True, "temperature": 1.0, "seed": 3}
    with httpx.stream("POST", multi["api"] + "/v1/chat/completions", json=body, timeout=10) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line).startswith("data: {")
        os.kill(multi["pids"]["w1"], signal.SIGKILL)
        # the read timeout (10 s) is the deadline: the stream must end with an error event
        rest = [line for line in lines if line]
    last = json.loads(rest[-1].removeprefix("data: "))
    assert set(last) == {"error"}, rest[-3:]
    # the replica is lost, with an event, and the other model keeps serving
    wait_until(lambda: any(e["kind"] == "lost" for e in client.get("ha").events()), 30, "the lost event")
    steady = client.get("steady")
    assert steady.chat("hello", max_tokens=4)["choices"][0]["message"]["content"]
    # a model with a replica left keeps answering (routed to the survivor), degraded
    for _ in range(3):
        assert duo.chat("hello", max_tokens=3)["usage"]["completion_tokens"] >= 1
    wait_until(lambda: client.get("duo").record["status"] == "degraded", 30, "duo to be degraded")
    # restart on-failure relaunches it on the surviving worker, where it serves
    ha = client.get("ha").wait(timeout=120)
    assert [r["worker"] for r in ha.record["replicas"]] == [names["w2"]]
    kinds = [e["kind"] for e in ha.events()]
    assert kinds.index("lost") < kinds.index("restart") < len(kinds) - 1 - kinds[::-1].index("ready")
    assert ha.chat("hello", max_tokens=4)["usage"]["completion_tokens"] >= 1
    client.terminate("ha")
    client.terminate("steady")
    client.terminate("duo")


def test_replica_waits_for_a_joining_worker(multi: dict[str, Any]) -> None:
    client: Client = multi["client"]
    names = workers_by_name(client)
    assert "w1" not in names  # killed by the previous test
    client.launch(SMOL, uid="patient", workers=["w2"], restart="on-failure", max_restarts=3, timeout=120)
    os.kill(multi["pids"]["w2"], signal.SIGKILL)
    wait_until(lambda: any(e["kind"] == "restart-wait" for e in client.get("patient").events()),
               30, "the replica to wait for a worker")
    assert client.get("patient").record["status"] == "restarting"
    multi["procs"].worker(multi["address"], "w3")
    model = client.get("patient").wait(timeout=120)
    assert model.record["replicas"][0]["worker"] == workers_by_name(client)["w3"]
    assert model.chat("hello", max_tokens=3)["usage"]["completion_tokens"] >= 1
    client.terminate("patient")
    with pytest.raises(ModelNotFound):
        client.get("patient")


def test_tls_cluster_refuses_plain_tcp(tmp_path: Path) -> None:
    home = tmp_path / "tls-home"
    temporary_security(home / "certs")
    certs = {"--tls-ca-file": home / "certs/ca.pem", "--tls-cert": home / "certs/cert.pem",
             "--tls-key": home / "certs/key.pem"}
    procs = Procs(home)
    try:
        port = free_port()
        args = [str(a) for kv in certs.items() for a in kv]
        procs.start("scheduler", "--port", str(port), *args)
        wait_until(lambda: port_open(port), 30, "the TLS scheduler port")
        from distributed import Client as DaskClient

        with pytest.raises((OSError, TimeoutError)):
            DaskClient(f"tcp://127.0.0.1:{port}", timeout="3s")
        with pytest.raises((OSError, TimeoutError, TypeError)):  # right scheme, no certificate
            DaskClient(f"tls://127.0.0.1:{port}", timeout="3s")
        settings = XnbSettings(home=home, tls_ca_file=certs["--tls-ca-file"], tls_cert=certs["--tls-cert"],
                               tls_key=certs["--tls-key"])
        procs.worker(f"tls://127.0.0.1:{port}", "tw", *args)
        with Client(f"tls://127.0.0.1:{port}", settings=settings) as client:
            wait_until(lambda: client.cluster_info()["workers"], 60, "the TLS worker")
            model = client.launch(SMOL, uid="secure", timeout=120)
            assert model.chat("hi", max_tokens=3)["usage"]["completion_tokens"] >= 1
    finally:
        procs.close()


def test_idle_unload_and_reload(multi: dict[str, Any]) -> None:
    client: Client = multi["client"]
    model = client.launch(SMOL, uid="sleepy", keep_alive=0.5, timeout=120)
    first = model.chat("hello", max_tokens=4, temperature=0)
    wait_until(lambda: any(e["kind"] == "unloaded" for e in model.events()), 30, "the idle unload")
    (info,) = model.info()
    assert info["status"] == "unloaded" and info["engine"] == {} and info["counters"]["idle_unloads"] == 1
    # The registry says so too: `xnb list`, the API and the panel show it unloaded.
    (listed,) = [r for r in client.list() if r["uid"] == "sleepy"]
    assert listed["status"] == "unloaded" and listed["replicas"][0]["status"] == "unloaded"
    again = model.chat("hello", max_tokens=4, temperature=0)  # reloads on demand
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
    (info,) = model.info()
    assert info["counters"]["reloads"] == 1
    assert any(e["kind"] == "reloaded" for e in model.events())
    client.terminate("sleepy")


def test_local_tls_cluster(tmp_path: Path) -> None:
    """`xnb local --tls`: temporary certificates, found by local clients through the runtime file."""
    from distributed import Client as DaskClient

    from xnb.client import connect
    from xnb.runtime.cluster import remove_runtime_file, start_local_cluster, write_runtime_file

    settings = XnbSettings(home=tmp_path / "home", tls=True, n_workers=1, threads_per_worker=1)
    cluster = start_local_cluster(settings)
    try:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        write_runtime_file(settings, address)
        with pytest.raises((OSError, TimeoutError)):
            DaskClient(address.replace("tls://", "tcp://"), timeout="3s")
        with connect(settings=XnbSettings(home=tmp_path / "home")) as client:  # finds it, with the certificates
            assert client.scheduler_address == address
            assert client.cluster_info()["workers"]
    finally:
        remove_runtime_file(settings)
        cluster.close()
