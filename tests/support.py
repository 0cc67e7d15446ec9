"""Small helpers shared by the test modules (imported as `support`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from xnb.jupyter.sidecar import free_port  # noqa: F401  (re-exported: one free_port for the tests)

SMOL = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
INFERENCE_KEY = "sk-inference-test"
ADMIN_KEY = "sk-admin-test"


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_until(predicate: Any, timeout: float = 60.0, what: str = "condition", interval: float = 0.1) -> Any:
    """Poll a condition until it holds (returning its value) or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Procs:
    """Child processes of one test cluster, all killed at the end."""

    def __init__(self, home: Path, *, logs: Path | None = None) -> None:
        self.home = home
        self.logs = logs  # each process's output goes to a file there (else nowhere)
        self.procs: list[subprocess.Popen[str]] = []
        self.env = {**os.environ, "XNB_HOME": str(home), "HF_HUB_OFFLINE": "1"}

    def start(self, *args: str, env: dict[str, str] | None = None,
              prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
        """``xnb ARGS`` as a child process (``prefix``: e.g. ``ip netns exec NAME``)."""
        out: Any = subprocess.DEVNULL
        if self.logs is not None:
            self.logs.mkdir(parents=True, exist_ok=True)
            out = open(self.logs / f"{len(self.procs):02d}-{args[0]}.log", "w")
        p = subprocess.Popen([*prefix, sys.executable, "-m", "xnb.cli", *args], env={**self.env, **(env or {})},
                             stdout=out, stderr=subprocess.STDOUT, text=True)
        if out is not subprocess.DEVNULL:
            out.close()
        self.procs.append(p)
        return p

    def worker(self, address: str, name: str, *extra: str) -> subprocess.Popen[str]:
        return self.start("worker", address, "--nthreads", "1", "--name", name, "--no-nanny", *extra)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def workers_by_name(client: Any) -> dict[str, str]:
    return {w["name"]: w["address"] for w in client.cluster_info()["workers"]}
