"""Small helpers shared by the test modules (imported as `support`)."""

from __future__ import annotations

import socket
import time
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
