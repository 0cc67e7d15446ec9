"""The Jupyter Server extension: a cluster, the API sidecar, and the ``xnb`` handlers.

Enabled on install (``jupyter-config/jupyter_server_config.d/xnb.json``). When
the server's loop runs, a background task:

1. finds the cluster: ``c.XnbExtension.scheduler_address`` (or
   ``XNB_SCHEDULER_ADDRESS``), else one running on this machine (the runtime
   file), else starts the embedded :class:`~distributed.LocalCluster` in this
   process — in an executor thread, since starting it is synchronous;
2. opens an asynchronous Dask client on the server's own loop
   (:func:`xnb.runtime.cluster.open_dask`, TLS included) to check the cluster
   runs the Supervisor;
3. starts the API sidecar as a supervised child process
   (:class:`~xnb.jupyter.sidecar.SidecarProcess`);
4. tells kernels where the cluster is: the runtime file (embedded cluster)
   and ``XNB_SCHEDULER_ADDRESS`` / ``XNB_API_URL`` in the environment kernels
   inherit, so ``xnb.connect()`` in a notebook attaches with no arguments.

The server answers requests meanwhile (``/xnb/api/status`` says ``starting``).
Every other ``{base_url}xnb/<path>`` is the sidecar's ``/<path>``, proxied
(:mod:`xnb.jupyter.handlers`): management is the sidecar's, once.
When the server stops, the sidecar is terminated, the client and the embedded
cluster are closed and the runtime file is removed.

Configuration (``jupyter_server_config.py`` or ``--XnbExtension.n_workers=2``)::

    c.XnbExtension.scheduler_address = "tcp://10.0.0.5:8786"
    c.XnbExtension.n_workers = 2
    c.XnbExtension.sidecar_port = 9997
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Int, Unicode

from xnb.jupyter.handlers import STATE_KEY, XnbState, default_handlers
from xnb.protocol import ServerStatus

__all__ = ["KERNEL_ENV_VARS", "XnbExtension"]

#: Environment variables the extension sets for the kernels this server starts.
KERNEL_ENV_VARS = ("XNB_SCHEDULER_ADDRESS", "XNB_API_URL", "XNB_JUPYTER_TOKEN", "XNB_JUPYTER_URL")


class XnbExtension(ExtensionApp):
    """Serve xnb from Jupyter: management API, OpenAI proxy, cluster and sidecar."""

    name = "xnb"
    description = "xnb: models on a Dask cluster, managed from Jupyter"
    load_other_extensions = True

    scheduler_address = Unicode(
        None, allow_none=True, config=True,
        help="Dask scheduler to attach to (tcp://HOST:PORT). Default: XNB_SCHEDULER_ADDRESS, "
        "else a cluster running on this machine, else the embedded cluster.",
    )
    attach_running = Bool(
        True, config=True,
        help="Attach to an xnb cluster already running on this machine (found through "
        "$XNB_HOME/runtime/cluster.json) instead of starting one.",
    )
    start_cluster = Bool(
        True, config=True, help="Start the embedded cluster when there is none to attach to."
    )
    n_workers = Int(None, allow_none=True, config=True, help="Worker processes of the embedded cluster.")
    threads_per_worker = Int(None, allow_none=True, config=True, help="Threads (cores) per embedded worker.")
    memory_limit = Unicode(None, allow_none=True, config=True, help="Memory limit per embedded worker.")
    start_sidecar = Bool(True, config=True, help="Run the OpenAI-compatible API sidecar as a child process.")
    sidecar_host = Unicode("127.0.0.1", config=True, help="Address the sidecar binds.")
    sidecar_port = Int(0, config=True, help="Port of the sidecar; 0 picks a free one.")
    sidecar_api_key = Unicode(
        "", config=True,
        help="An API key the sidecar requires (added to its admin keys); the {base_url}xnb/v1 "
        "proxy sends it. Empty: the keys of XNB_API_KEYS / XNB_ADMIN_API_KEYS / "
        "XNB_API_KEYS_FILE, if any, are used.",
    )
    set_kernel_env = Bool(
        True, config=True,
        help="Put XNB_SCHEDULER_ADDRESS, XNB_API_URL and XNB_JUPYTER_TOKEN (the proxy's key) in the environment "
        "of kernels this server starts.",
    )

    def initialize_settings(self) -> None:
        self.state = XnbState()
        self._task: asyncio.Task[None] | None = None
        self._cluster: Any = None
        self._cluster_future: asyncio.Future[Any] | None = None
        self._dask: Any = None
        self._xnb_settings: Any = None
        self._env_before: dict[str, str | None] = {}
        self.settings.update({STATE_KEY: self.state})

    def initialize_handlers(self) -> None:
        self.handlers.extend(default_handlers())

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        # The OpenAI proxy ({base_url}xnb/v1) takes the Jupyter token as its API key: kernels get it,
        # so the sidebar's "use it" snippets need no key written into the notebook.
        token = getattr(getattr(serverapp, "identity_provider", None), "token", None)
        if token:
            self._set_kernel_env(XNB_JUPYTER_TOKEN=token)
        self._task = asyncio.ensure_future(self._startup())

    # -- startup ------------------------------------------------------------------------------

    def _settings_overrides(self) -> dict[str, Any]:
        values = {
            "scheduler_address": self.scheduler_address or None,
            "n_workers": self.n_workers,
            "threads_per_worker": self.threads_per_worker,
            "memory_limit": self.memory_limit,
        }
        return {k: v for k, v in values.items() if v is not None}

    async def _startup(self) -> None:
        from xnb.settings import XnbSettings

        loop = asyncio.get_running_loop()
        try:
            settings = self._xnb_settings = XnbSettings(**self._settings_overrides())
            address = settings.scheduler_address
            if address is None and self.attach_running:
                from xnb.runtime.cluster import find_running_cluster

                address = await loop.run_in_executor(None, find_running_cluster, settings)
            if address is None:
                if not self.start_cluster:
                    raise RuntimeError(
                        "no scheduler configured or running and c.XnbExtension.start_cluster is False; "
                        "set c.XnbExtension.scheduler_address or start one with `xnb local`"
                    )
                address = await self._start_embedded(settings)
            self.state.scheduler_address = address
            self._set_kernel_env(XNB_SCHEDULER_ADDRESS=address)  # kernels started from now on
            self.log.info("xnb: using the Dask scheduler at %s%s", address,
                          " (embedded)" if self.state.embedded else "")
            await self._connect(address, settings)
            if self.start_sidecar:
                await loop.run_in_executor(None, self._start_sidecar, address, settings)
            self._publish(address, settings)
            self.state.status = ServerStatus.READY
            self.log.info("xnb: ready%s", f"; OpenAI API at {self.state.sidecar.url}/v1" if self.state.sidecar else "")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.exception("xnb: the extension could not start")
            self.state.status = ServerStatus.ERROR
            self.state.error = f"{type(exc).__name__}: {exc}"

    async def _start_embedded(self, settings: Any) -> str:
        from xnb.runtime.cluster import start_local_cluster

        self.log.info("xnb: starting the embedded cluster (%s worker(s))", settings.n_workers)
        loop = asyncio.get_running_loop()
        self._cluster_future = loop.run_in_executor(None, functools.partial(start_local_cluster, settings))
        self._cluster = await self._cluster_future
        self.state.embedded = True
        return str(self._cluster.scheduler_address)

    async def _connect(self, address: str, settings: Any) -> None:
        from xnb.runtime.cluster import open_dask

        # TLS: the embedded cluster's own security, else the settings' (XNB_TLS_*, runtime file).
        security = self._cluster.security if self._cluster is not None and self.state.embedded else None
        self._dask = await open_dask(address, settings, asynchronous=True, security=security)

    def _sidecar_key(self, settings: Any) -> str | None:
        if self.sidecar_api_key:
            return self.sidecar_api_key
        inference, admin = settings.load_key_file()
        keys = [*settings.api_keys, *inference, *settings.admin_api_keys, *admin]
        return keys[0] if keys else None

    def _start_sidecar(self, address: str, settings: Any) -> None:
        from xnb.jupyter.sidecar import SidecarProcess

        env = {"XNB_HOME": str(settings.home)}
        if self.sidecar_api_key:
            env["XNB_ADMIN_API_KEYS"] = ",".join([*settings.admin_api_keys, self.sidecar_api_key])
        sidecar = SidecarProcess(address, host=self.sidecar_host, port=self.sidecar_port, env=env)
        self.state.sidecar_key = self._sidecar_key(settings)
        self.state.sidecar = sidecar
        sidecar.start()

    def _publish(self, address: str, settings: Any) -> None:
        """Let kernels (and other processes) find the cluster with no configuration."""
        api_url = self.state.sidecar.url if self.state.sidecar is not None else None
        if self.state.embedded:
            from xnb.runtime.cluster import write_runtime_file

            write_runtime_file(settings, address, api_url=api_url, jupyter_pid=os.getpid(),
                               jupyter_url=self._jupyter_url())
        if api_url is not None:
            self._set_kernel_env(XNB_API_URL=api_url, XNB_JUPYTER_URL=self._jupyter_url())

    def _jupyter_url(self) -> str:
        """This server's URL with its base path (JupyterHub: the user's server prefix)."""
        return str(self.serverapp.connection_url)

    def _set_kernel_env(self, **values: str) -> None:
        """Kernels inherit the server's environment: put the cluster's whereabouts there."""
        if not self.set_kernel_env:
            return
        for name, value in values.items():
            self._env_before.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    # -- shutdown -----------------------------------------------------------------------------

    async def stop_extension(self) -> None:
        """Stop the sidecar, close the client and the embedded cluster, remove the runtime file."""
        loop = asyncio.get_running_loop()
        self.state.status = ServerStatus.STOPPING
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._cluster is None and self._cluster_future is not None:
            # Cancelling does not stop a cluster half-started in its thread: wait for it, then close it.
            try:
                self._cluster = await asyncio.wait_for(asyncio.shield(self._cluster_future), 120)
            except Exception as exc:  # noqa: BLE001 - it failed to start (logged at startup): nothing to close
                self.log.warning("xnb: the embedded cluster did not start: %s", exc)
        if self.state.sidecar is not None:
            await loop.run_in_executor(None, self.state.sidecar.stop)
        await self.state.aclose()
        if self._dask is not None:
            try:
                await asyncio.wait_for(self._dask.close(), 10)
            except (asyncio.TimeoutError, OSError) as exc:
                self.log.warning("xnb: closing the Dask client: %s", exc)
            self._dask = None
        if self._cluster is not None:
            from xnb.runtime.cluster import remove_runtime_file

            remove_runtime_file(self._xnb_settings)
            try:
                await loop.run_in_executor(None, self._cluster.close)
            except Exception as exc:  # noqa: BLE001 - best effort at shutdown (workers killed by Ctrl-C)
                self.log.warning("xnb: closing the embedded cluster: %s: %s", type(exc).__name__, exc)
            self._cluster = None
        for name, value in self._env_before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.state.status = ServerStatus.STOPPED
        self.log.info("xnb: stopped")
