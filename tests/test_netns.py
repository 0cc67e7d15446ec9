"""Real multi-host networking: three network namespaces joined by veth pairs on a
bridge (10.231.0.0/24, addresses that exist only inside the namespaces), TLS on.

* host ``s`` (10.231.0.1): `xnb scheduler --host 10.231.0.1` and `xnb serve`;
* host ``a`` (10.231.0.2): `xnb worker --host 10.231.0.2`;
* host ``b`` (10.231.0.3): `xnb worker --listen-address tls://0.0.0.0:P
  --contact-address tls://10.231.0.3:P`.

The test process lives in the root namespace, which has no route to them: it
drives host ``s`` with small Python programs run there (`ip netns exec`).
Skipped where namespaces cannot be created (not root, no CAP_NET_ADMIN, no
iproute2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from typing import Any, Iterator

import pytest

from xnb.runtime.cluster import temporary_security

from support import SMOL, Procs, free_port

NET = "10.231.0"
HOSTS = {"s": f"{NET}.1", "a": f"{NET}.2", "b": f"{NET}.3"}


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _netns_unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)"
    probe = f"xnbprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        link = _ip("-n", probe, "link", "add", "br0", "type", "bridge", check=False)
        if link.returncode != 0:
            return f"cannot create a bridge in a namespace: {link.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


class Net:
    """The three namespaces; removed in :meth:`close`."""

    def __init__(self) -> None:
        tag = f"xnb{os.getpid() % 100000}"
        self.ns = {h: f"{tag}{h}" for h in HOSTS}
        self.made: list[str] = []

    def build(self) -> None:
        for name in self.ns.values():
            _ip("netns", "add", name)
            self.made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        s = self.ns["s"]
        _ip("-n", s, "link", "add", "br0", "type", "bridge")
        _ip("-n", s, "addr", "add", f"{HOSTS['s']}/24", "dev", "br0")
        _ip("-n", s, "link", "set", "br0", "up")
        for host in ("a", "b"):
            _ip("-n", s, "link", "add", f"v{host}", "type", "veth", "peer", "name", "eth0", "netns", self.ns[host])
            _ip("-n", s, "link", "set", f"v{host}", "master", "br0")
            _ip("-n", s, "link", "set", f"v{host}", "up")
            _ip("-n", self.ns[host], "addr", "add", f"{HOSTS[host]}/24", "dev", "eth0")
            _ip("-n", self.ns[host], "link", "set", "eth0", "up")

    def cut(self, host: str) -> None:
        """Pull host's cable: its link to the bridge goes down (no reset, packets just vanish)."""
        _ip("-n", self.ns["s"], "link", "set", f"v{host}", "down")

    def exec(self, host: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.ns[host])

    def close(self) -> None:
        for name in self.made:
            _ip("netns", "del", name, check=False)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    reason = _netns_unavailable()
    if reason:
        pytest.skip(f"multi-host tests need network namespaces: {reason}")
    root = tmp_path_factory.mktemp("netns")
    temporary_security(root / "certs")
    tls = [a for k in ("ca", "cert", "key") for a in (f"--tls-{'ca-file' if k == 'ca' else k}",
                                                       str(root / "certs" / f"{k}.pem"))]
    net = Net()
    procs = Procs(root / "home-s", logs=root / "logs")
    try:
        net.build()
        port, api_port, b_port = free_port(), free_port(), free_port()
        address = f"tls://{HOSTS['s']}:{port}"
        procs.start("scheduler", "--host", HOSTS["s"], "--port", str(port), "--worker-ttl", "3s", *tls,
                    prefix=net.exec("s"))
        common = ("--nthreads", "1", "--no-nanny", *tls)
        procs.start("worker", address, "--name", "wa", "--host", HOSTS["a"], "--home", str(root / "home-a"),
                    *common, prefix=net.exec("a"))
        wb = procs.start("worker", address, "--name", "wb", "--listen-address", f"tls://0.0.0.0:{b_port}",
                         "--contact-address", f"tls://{HOSTS['b']}:{b_port}", "--home", str(root / "home-b"),
                         *common, prefix=net.exec("b"))
        procs.start("serve", "--scheduler", address, "--port", str(api_port), *tls, prefix=net.exec("s"))
        env = {"address": address, "api": f"http://127.0.0.1:{api_port}", "home": str(root / "home-s"),
               "certs": str(root / "certs")}
        h = {"net": net, "procs": procs, "env": env, "pids": {"b": wb.pid}, "logs": root / "logs"}
        on_s(h, """
            wait(lambda: len(client.cluster_info()["workers"]) == 2, "two workers")
            wait(lambda: httpx.get(API + "/health", timeout=2).status_code == 200, "the sidecar")
        """)
        yield h
    finally:
        procs.close()
        net.close()


_PRELUDE = """
import json, time, threading, httpx
from xnb.client import Client
from xnb.settings import XnbSettings
E = json.loads({env!r})
API = E["api"]
certs = E["certs"]
settings = XnbSettings(home=E["home"], tls_ca_file=certs + "/ca.pem", tls_cert=certs + "/cert.pem",
                       tls_key=certs + "/key.pem")
def wait(predicate, what, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("timed out waiting for " + what)
result = None
client = Client(E["address"], settings=settings)
try:
"""


def on_s(h: dict[str, Any], code: str, timeout: float = 240) -> Any:
    """Run ``code`` (with ``client``, ``API``, ``wait``; it sets ``result``) on host s."""
    body = textwrap.indent(textwrap.dedent(code), "    ")
    program = (_PRELUDE.format(env=json.dumps(h["env"])) + body +
               "\nfinally:\n    client.close()\nprint('RESULT ' + json.dumps(result))\n")
    run = subprocess.run([*h["net"].exec("s"), sys.executable, "-c", program], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.returncode != 0 or not lines:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(h["logs"].iterdir()))
        raise AssertionError(f"program on host s failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}\n{logs}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_workers_advertise_their_host_address_and_replicas_spread(hosts: dict[str, Any]) -> None:
    info = on_s(hosts, f"""
        model = client.launch({SMOL!r}, uid="pair", replicas=2, restart="on-failure", timeout=180)
        workers = {{w["name"]: w["address"] for w in client.cluster_info()["workers"]}}
        # two streams at once through the sidecar, which calls each worker directly
        body = {{"model": "pair", "messages": [{{"role": "user", "content": "Tell a story."}}],
                 "max_tokens": 24, "stream": True}}
        ends = []
        def stream():
            with httpx.stream("POST", API + "/v1/chat/completions", json=body, timeout=60) as r:
                lines = [line for line in r.iter_lines() if line]
            ends.append((r.status_code, lines[-1]))
        threads = [threading.Thread(target=stream) for _ in range(2)]
        for t in threads: t.start()
        for t in threads: t.join()
        result = {{"workers": workers, "replicas": [r["worker"] for r in model.record["replicas"]],
                   "ends": ends, "served": sorted(i["counters"]["requests"] for i in model.info())}}
    """)
    assert info["workers"]["wa"].startswith(f"tls://{HOSTS['a']}:")
    assert info["workers"]["wb"].startswith(f"tls://{HOSTS['b']}:")  # the contact address, not 0.0.0.0
    assert sorted(info["replicas"]) == sorted(info["workers"].values())  # one replica per host
    assert info["ends"] == [[200, "data: [DONE]"]] * 2
    assert info["served"] == [1, 1]


def test_cutting_a_host_link_relaunches_its_replica(hosts: dict[str, Any]) -> None:
    hosts["net"].cut("b")
    info = on_s(hosts, """
        names = {w["address"]: w["name"] for w in client.cluster_info()["workers"]}
        wait(lambda: any(e["kind"] == "lost" for e in client.get("pair").events()), "the lost replica")
        # restart on-failure: both replicas back, on the host that is still connected
        wait(lambda: client.get("pair").record["replicas_ready"] == 2, "the relaunched replica")
        record = client.get("pair").record
        chat = httpx.post(API + "/v1/chat/completions", timeout=60, json={
            "model": "pair", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        result = {"workers": [w["name"] for w in client.cluster_info()["workers"]],
                  "replicas": [r["worker"] for r in record["replicas"]],
                  "kinds": [e["kind"] for e in client.get("pair").events()], "chat": chat.status_code}
    """)
    assert info["workers"] == ["wa"]
    assert len(info["replicas"]) == 2 and all(r.startswith(f"tls://{HOSTS['a']}:") for r in info["replicas"])
    assert info["kinds"].index("lost") < info["kinds"].index("restart")
    assert info["chat"] == 200
