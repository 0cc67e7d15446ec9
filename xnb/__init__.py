"""xnb: notebook-native model inference on a Dask cluster.

    import xnb
    client = xnb.connect()                      # attach, or start an embedded cluster
    model = client.launch("smollm2-135m-instruct")
    model.chat("Hello!")["choices"][0]["message"]["content"]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "connect",
    "connect_async",
    "Client",
    "AsyncClient",
    "Model",
    "AsyncModel",
    "XnbError",
    "LaunchOptions",
    "ModelStatus",
    "ReplicaStatus",
    "load_ipython_extension",
]

if TYPE_CHECKING:
    from xnb.client import (
        AsyncClient,
        AsyncModel,
        Client,
        Model,
        connect,
        connect_async,
    )
    from xnb.errors import XnbError
    from xnb.protocol import LaunchOptions, ModelStatus, ReplicaStatus


def __getattr__(name: str) -> Any:
    # Lazy, so `import xnb` stays cheap (the scheduler plugin and workers import submodules).
    if name in ("connect", "connect_async", "Client", "AsyncClient", "Model", "AsyncModel"):
        from xnb import client

        return getattr(client, name)
    if name in ("LaunchOptions", "ModelStatus", "ReplicaStatus"):
        from xnb import protocol

        return getattr(protocol, name)
    if name == "XnbError":
        from xnb.errors import XnbError

        return XnbError
    raise AttributeError(f"module 'xnb' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext xnb`` registers the ``%xnb`` magics."""
    from xnb.jupyter.magics import load_ipython_extension as load

    load(ipython)
