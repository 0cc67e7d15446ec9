"""Start an embedded Dask cluster, or find and attach to a running one.

The embedded cluster is a :class:`distributed.LocalCluster` with worker
*processes* (non-daemonic, so engines may start child processes), every
listener on 127.0.0.1, the dashboard off unless asked for, and the
:class:`~xnb.runtime.supervisor.Supervisor` installed in its scheduler.  The process
hosting it writes a runtime file (``$XNB_HOME/runtime/cluster.json``) so other
processes on the machine — a CLI, a notebook kernel — find it with no
configuration.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dask

from xnb.errors import ClusterUnavailable
from xnb.settings import XnbSettings

__all__ = [
    "start_local_cluster",
    "security_for",
    "temporary_security",
    "find_running_cluster",
    "write_runtime_file",
    "remove_runtime_file",
    "ensure_supervisor",
    "configure_dask",
    "ensure_supervisor_async",
    "reachable",
    "open_dask",
]

logger = logging.getLogger(__name__)


def configure_dask() -> None:
    """Dask settings xnb needs: non-daemonic workers (engines may fork), no memory-based
    pausing or restarts (a loaded model holds its memory on purpose), and none of
    Dask's background work that xnb does not use (profiling, work stealing)."""
    dask.config.set(
        {
            "distributed.worker.daemon": False,
            # A model actor holds memory on purpose: never pause or restart its worker
            # because of it (the Supervisor does its own memory accounting).
            "distributed.worker.memory.pause": False,
            "distributed.worker.memory.terminate": False,
            "distributed.worker.memory.target": False,
            "distributed.worker.memory.spill": False,
            # The nanny's default MALLOC_TRIM_THRESHOLD_=65536 makes torch's large
            # allocations go through mmap on every batch (embeddings ~25% slower).
            "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
            # Dask's own periodic work competes with the engines for the cores: its
            # statistical profiler samples every process's event loop 100 times a second,
            # the loop-health tick runs 50 times a second, and work stealing balances
            # tasks xnb does not have (actors are placed by the Supervisor).
            "distributed.worker.profile.enabled": False,
            "distributed.admin.tick.interval": "1s",
            "distributed.scheduler.work-stealing": False,
        }
    )


def _security_from_files(ca: Path, cert: Path, key: Path) -> Any:
    """One certificate for every role (scheduler, workers, clients), encryption required."""
    from distributed.security import Security

    files = {"tls_ca_file": str(ca)}
    for role in ("client", "scheduler", "worker"):
        files[f"tls_{role}_cert"] = str(cert)
        files[f"tls_{role}_key"] = str(key)
    return Security(require_encryption=True, **files)


def temporary_security(directory: Path) -> Any:
    """Fresh self-signed TLS material written (mode 0600) under ``directory``, so other
    local processes can join the cluster; returns the matching Security."""
    from distributed.security import Security

    tmp = Security.temporary()
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"ca": directory / "ca.pem", "cert": directory / "cert.pem", "key": directory / "key.pem"}
    for name, content in (("ca", tmp.tls_ca_file), ("cert", tmp.tls_scheduler_cert), ("key", tmp.tls_scheduler_key)):
        fd = os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(content)
    return _security_from_files(paths["ca"], paths["cert"], paths["key"])


def security_for(settings: XnbSettings, address: str | None = None) -> Any:
    """The Dask Security to reach ``address``: from the TLS settings, else from the
    runtime file of a local TLS cluster, else None (plain TCP)."""
    if settings.tls_cert and settings.tls_key:
        return _security_from_files(settings.tls_ca_file or settings.tls_cert, settings.tls_cert, settings.tls_key)
    if address and address.startswith("tls://"):
        try:
            info = json.loads(settings.runtime_file.read_text())
        except (OSError, ValueError):
            info = {}
        tls = info.get("tls") or {}
        if info.get("scheduler_address") == address and tls:
            return _security_from_files(Path(tls["ca"]), Path(tls["cert"]), Path(tls["key"]))
        raise ClusterUnavailable(
            f"{address} needs TLS: pass --tls-ca-file/--tls-cert/--tls-key (XNB_TLS_*)"
        )
    return None


def start_local_cluster(settings: XnbSettings | None = None, **overrides: Any) -> Any:
    """Start the embedded cluster in this process (workers are child processes)."""
    from distributed import LocalCluster

    from xnb.runtime.supervisor import Supervisor

    settings = settings or XnbSettings()
    configure_dask()
    security = None
    if settings.tls or settings.tls_cert:
        security = security_for(settings) if settings.tls_cert else temporary_security(settings.runtime_file.parent / "tls")
    n_workers = overrides.pop("n_workers", settings.n_workers)
    threads = overrides.pop("threads_per_worker", settings.threads_per_worker)
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // n_workers)
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads,
        processes=True,
        host="127.0.0.1",
        # The scheduler always runs a small HTTP server; keep it on loopback and off 8787
        # unless the dashboard is wanted.
        dashboard_address="127.0.0.1:8787" if settings.dashboard else "127.0.0.1:0",
        memory_limit=overrides.pop("memory_limit", settings.memory_limit),
        scheduler_kwargs={"plugins": [Supervisor(home=str(settings.home))], "dashboard": settings.dashboard},
        worker_class=overrides.pop("worker_class", None) or _default_worker_class(),
        env={"XNB_HOME": str(settings.home)},
        preload=["xnb.runtime.local_worker"],  # workers ignore Ctrl-C: this process stops them
        security=security,
        protocol="tls://" if security is not None else "tcp://",
        **overrides,
    )
    logger.info("started the embedded xnb cluster at %s", cluster.scheduler_address)
    return cluster


def _default_worker_class() -> Any:
    from distributed import Nanny

    return Nanny


def reachable(address: str, timeout: float = 0.5) -> bool:
    parsed = urlparse(address)
    if not parsed.hostname or not parsed.port:
        return False
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout):
            return True
    except OSError:
        return False


def find_running_cluster(settings: XnbSettings | None = None) -> str | None:
    """The scheduler address of a live xnb cluster on this machine, if any.

    Looks at ``XNB_SCHEDULER_ADDRESS`` first, then the runtime file.
    """
    settings = settings or XnbSettings()
    if settings.scheduler_address:
        return settings.scheduler_address
    path = settings.runtime_file
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    address = info.get("scheduler_address")
    pid = info.get("pid")
    if not address or not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return address if reachable(address) else None


def write_runtime_file(settings: XnbSettings, scheduler_address: str, **extra: Any) -> Path:
    path = settings.runtime_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    if scheduler_address.startswith("tls://") and "tls" not in extra:
        tls_dir = path.parent / "tls"
        if (tls_dir / "cert.pem").exists():
            extra["tls"] = {k: str(tls_dir / f"{k}.pem") for k in ("ca", "cert", "key")}
    tmp.write_text(json.dumps({"scheduler_address": scheduler_address, "pid": os.getpid(), **extra}))
    os.replace(tmp, path)
    return path


def remove_runtime_file(settings: XnbSettings) -> None:
    path = settings.runtime_file
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if info.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


def _ping_reply(reply: Any) -> bool:
    return isinstance(reply, dict) and reply.get("ok") is True


def open_dask(address: str, settings: XnbSettings, *, asynchronous: bool = False,
              security: Any = None) -> Any:
    """The one way xnb opens a Dask client (the sidecar, :class:`xnb.Client`, the CLI and
    the Jupyter extension all come here): straight to the workers for actor calls, TLS
    from :func:`security_for` (or ``security``, e.g. an embedded cluster's), the
    Supervisor made sure of.  ``asynchronous=True`` returns a coroutine (await it on
    your loop), as ``distributed.Client`` does."""
    from distributed import Client

    if security is None:
        security = security_for(settings, address)
    kwargs = {"direct_to_workers": True, "set_as_default": False, "security": security}
    if asynchronous:
        return _open_async(Client(address, asynchronous=True, **kwargs))
    client = Client(address, **kwargs)
    try:
        ensure_supervisor(client)
    except BaseException:
        client.close()
        raise
    return client


async def _open_async(pending: Any) -> Any:
    client = await pending
    try:
        await ensure_supervisor_async(client)
    except BaseException:
        await client.close()
        raise
    return client


async def ensure_supervisor_async(client: Any) -> None:
    """Make sure the scheduler runs the Supervisor (installing it if it can)."""
    from xnb.runtime.supervisor import Supervisor

    try:
        if _ping_reply(await client.scheduler.xnb_ping()):
            return
    except (KeyError, OSError):
        pass
    try:
        await client.register_plugin(Supervisor())
    except Exception as exc:  # the scheduler could not unpickle it: xnb is not installed there
        raise ClusterUnavailable(
            f"the scheduler at {client.scheduler.address} does not run xnb's supervisor and "
            f"could not install it ({type(exc).__name__}); start it with `xnb scheduler` "
            "or install xnb in the scheduler's environment"
        ) from None


def ensure_supervisor(client: Any) -> None:
    client.sync(ensure_supervisor_async, client)
