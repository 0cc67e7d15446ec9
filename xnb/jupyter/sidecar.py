"""The API sidecar as a supervised child process of the Jupyter server.

``xnb serve --scheduler ADDR --host 127.0.0.1 --port P`` runs in its own
process, so a crash there never takes Jupyter down.  A watchdog thread waits on
the process; when it exits without being asked to, it is started again on the
same port after a backoff (0.5 s doubling to 30 s; back to 0.5 s once a run
lasted a minute).  Nothing here touches an event loop, so it can be stopped
from any thread or loop.

The child runs as ``python -m xnb.jupyter.sidecar PARENT_PID serve ...``: that
is ``xnb serve ...`` plus a thread that stops it when its parent is gone, so a
Jupyter server killed with SIGKILL leaves no sidecar holding the port behind.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["SidecarProcess", "free_port", "main"]

logger = logging.getLogger(__name__)

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
HEALTHY_RUN_S = 60.0
ORPHAN_CHECK_S = 1.0
ORPHAN_GRACE_S = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SidecarProcess:
    """Start, watch, restart (with backoff) and stop the sidecar child process."""

    def __init__(
        self,
        scheduler_address: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.scheduler_address = scheduler_address
        self.host = host
        self.port = port or free_port(host)
        self.env = {**os.environ, **(env or {})}
        self.extra_args = list(extra_args or [])
        self.restarts = 0
        self.last_exit: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    @property
    def running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "xnb.jupyter.sidecar", str(os.getpid()), "serve",
            "--scheduler", self.scheduler_address,
            "--host", self.host,
            "--port", str(self.port),
            *self.extra_args,
        ]

    def start(self) -> None:
        """Start the process and its watchdog (once)."""
        if self._watchdog is not None:
            return
        self._spawn()
        self._watchdog = threading.Thread(target=self._watch, name="xnb-sidecar-watchdog", daemon=True)
        self._watchdog.start()

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self._started_at = time.monotonic()
            # Its own session: Ctrl-C at the Jupyter server's terminal (which asks before
            # shutting down) must not kill it; stop() and the parent watch end it.
            self._proc = subprocess.Popen(self.command(), env=self.env, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
            logger.info("xnb sidecar started (pid %s) at %s", self._proc.pid, self.url)

    def _watch(self) -> None:
        backoff = BACKOFF_START_S
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            code = proc.wait()
            if self._stopping.is_set():
                return
            self.last_exit = code
            if time.monotonic() - self._started_at >= HEALTHY_RUN_S:
                backoff = BACKOFF_START_S
            logger.warning(
                "the xnb sidecar (pid %s) exited with code %s; restarting it in %.1fs", proc.pid, code, backoff
            )
            if self._stopping.wait(backoff):
                return
            self.restarts += 1
            try:
                self._spawn()
            except OSError as exc:  # e.g. the interpreter went away; keep trying with backoff
                logger.error("could not restart the xnb sidecar: %s", exc)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after ``timeout``); no restart."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("the xnb sidecar did not stop in %.0fs; killing it", timeout)
                proc.kill()
                proc.wait(timeout=5)
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=5)

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "pid": self.pid,
            "running": self.running,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
        }


def _exit_with_parent(parent: int) -> None:
    """Stop this process (SIGTERM, then for good) once ``parent`` is no longer its parent."""
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_S)
    logger.warning("the Jupyter server (pid %s) is gone; stopping the xnb sidecar", parent)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down gracefully
    time.sleep(ORPHAN_GRACE_S)
    os._exit(1)


def main(argv: list[str] | None = None) -> None:
    """``python -m xnb.jupyter.sidecar PARENT_PID ARGS...``: ``xnb ARGS...`` that ends with its parent."""
    args = sys.argv[1:] if argv is None else argv
    if not args or not args[0].isdigit():
        raise SystemExit("usage: python -m xnb.jupyter.sidecar PARENT_PID serve [xnb serve options]")
    threading.Thread(target=_exit_with_parent, args=(int(args[0]),), name="xnb-parent-watch", daemon=True).start()
    from xnb.cli import main as xnb_main

    sys.argv = ["xnb", *args[1:]]
    xnb_main()


if __name__ == "__main__":
    main()
