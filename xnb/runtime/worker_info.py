"""Worker preload: tell the Supervisor which engines this worker can run.

A worker registers with the scheduler carrying ``startup_information``; this
preload adds the names of the engines whose libraries import here (see
:func:`xnb.engines.installed_engines`), which the Supervisor reads from the
worker's state (``WorkerState.extra``) when it places replicas.  So a cluster
that mixes a llama.cpp worker (``.venv``) and a vLLM worker (``.venv-vllm``)
places each model on a worker that can serve it, without pinning.

``xnb worker`` and the embedded cluster load it; a plain ``dask worker`` can
too (``--preload xnb.runtime.worker_info``).  A worker without it is assumed
able to run any engine, as before.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ENGINES_KEY", "dask_setup"]

#: The key in the worker's startup information (``WorkerState.extra``).
ENGINES_KEY = "xnb-engines"


def _engines(worker: Any) -> list[str]:
    from xnb.engines import installed_engines

    return installed_engines()


def dask_setup(worker: Any) -> None:
    worker.startup_information[ENGINES_KEY] = _engines
