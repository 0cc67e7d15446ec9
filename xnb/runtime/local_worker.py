"""Worker preload of the embedded cluster (``start_local_cluster``).

The embedded cluster's workers are children of the process that started it
(``xnb local``, a notebook kernel, the Jupyter server), whose lifetime is
theirs.  Ctrl-C in a terminal, or *interrupt kernel* in Jupyter, sends SIGINT
to that whole process group: it must stop the parent (which then shuts the
cluster down in order), not kill the workers, and with them every model they
hold, behind its back.  So these workers ignore SIGINT.  Workers started on
their own (``xnb worker``, ``dask worker``) keep the usual Ctrl-C behaviour.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["dask_setup"]


def dask_setup(worker: Any) -> None:
    from xnb.runtime import worker_info

    worker_info.dask_setup(worker)  # the engines this worker can run
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
