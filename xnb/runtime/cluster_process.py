"""The embedded cluster in a child process, for plain Python scripts.

Dask starts worker processes with the *spawn* method, which imports the main
module again in every worker.  A notebook or ``python -m ...`` is safe, but a
script run by path re-runs its top-level code in each worker: without an
``if __name__ == "__main__":`` guard, ``xnb.connect()`` would start a cluster
inside every worker it starts ("Nanny failed to start").  So for a script,
:func:`xnb.connect` starts the embedded cluster in a child process
(``python -m xnb.runtime.cluster_process``, whose own main module is guarded)
and attaches to it.  The child lives as long as the script: it stops its
cluster when its stdin (a pipe from the script) closes, which happens however
the script ends, ``kill -9`` included.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import time

from xnb.errors import ClusterUnavailable
from xnb.settings import XnbSettings

__all__ = ["ClusterProcess", "main_runs_from_a_file", "START_TIMEOUT_S"]

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
_SETTINGS_ENV = "XNB_CLUSTER_PROCESS_SETTINGS"


def main_runs_from_a_file() -> bool:
    """Whether spawned processes would re-run ``__main__`` from its file (a script run by
    path), rather than import it by module name or have none (notebooks, the REPL)."""
    main = sys.modules.get("__main__")
    return bool(getattr(main, "__file__", None)) and getattr(main, "__spec__", None) is None


class ClusterProcess:
    """A child process hosting the embedded cluster; :meth:`close` stops it."""

    def __init__(self, settings: XnbSettings) -> None:
        env = {**os.environ, _SETTINGS_ENV: settings.model_dump_json()}
        self.log = settings.runtime_file.parent / "cluster-process.log"  # its stderr (Dask's logging)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "xnb.runtime.cluster_process"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                start_new_session=True,  # Ctrl-C stops the script, which then stops this child
            )
        self.scheduler_address = self._read_address()

    def _read_address(self) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if ready:
                line = self.process.stdout.readline().decode().strip()
                if line.startswith("address "):
                    return line.removeprefix("address ")
                if not line and self.process.poll() is not None:
                    break
        self.close()
        err = self.log.read_text(errors="replace")[-2000:].strip()
        raise ClusterUnavailable(f"the embedded xnb cluster did not start ({self.log}): {err or 'no output'}")

    def close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()  # the child's signal to stop
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _serve() -> None:
    from xnb.runtime.cluster import remove_runtime_file, start_local_cluster, write_runtime_file

    settings = XnbSettings.model_validate_json(os.environ.pop(_SETTINGS_ENV))
    cluster = start_local_cluster(settings)
    try:
        write_runtime_file(settings, cluster.scheduler_address)
        sys.stdout.write(f"address {cluster.scheduler_address}\n")
        sys.stdout.flush()
        while sys.stdin.buffer.read(4096):  # until the script's end closes the pipe
            pass
    finally:
        remove_runtime_file(settings)
        cluster.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    _serve()
