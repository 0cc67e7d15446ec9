"""CLI commands that run servers: ``xnb local`` (cluster + API) and ``xnb serve`` (API only)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import click

from xnb.cli.base import cli, launch_model, make_settings, settings_options

__all__: list[str] = []

logger = logging.getLogger(__name__)

_TLS_FLAGS = ("tls_ca_file", "tls_cert", "tls_key")
_API_FLAGS = ("host", "port", "api_keys", "admin_api_keys", "api_keys_file", "allowed_hosts", "max_queue",
              "max_upload_mb")


@cli.command()
@click.option("--launch", "launch_names", multiple=True, metavar="NAME",
              help="launch this catalog model before serving (served under its name); repeatable")
@click.option("--api/--no-api", default=True, show_default=True, help="serve the OpenAI-compatible API")
@settings_options("home", "n_workers", "threads_per_worker", "memory_limit", "dashboard", "tls", *_API_FLAGS)
def local(launch_names: tuple[str, ...], api: bool, **flags: Any) -> None:
    """Start a local xnb cluster (and the API at http://127.0.0.1:9997) until Ctrl-C."""
    from xnb.api import run_sidecar
    from xnb.client import Client
    from xnb.runtime.cluster import (
        find_running_cluster,
        remove_runtime_file,
        start_local_cluster,
        write_runtime_file,
    )

    settings = make_settings(**flags)
    running = find_running_cluster(settings)
    if running:
        raise click.ClickException(
            f"an xnb cluster already runs at {running} (see {settings.runtime_file}); "
            "use it (`xnb list`), or stop it first"
        )
    cluster = start_local_cluster(settings)
    address = cluster.scheduler_address
    api_url = f"http://{settings.host}:{settings.port}" if api else None
    write_runtime_file(settings, address, api_url=api_url)
    try:
        if launch_names:
            with Client(address, settings=settings) as client:
                for name in launch_names:
                    launch_model(client, name)
        click.echo(f"xnb cluster: {address}")
        if cluster.dashboard_link and settings.dashboard:
            click.echo(f"Dask dashboard: {cluster.dashboard_link}")
        if api:
            click.echo(f"OpenAI-compatible API: {api_url}/v1   (management: {api_url}/api)")
            run_sidecar(settings, scheduler_address=address)
        else:
            click.echo("Press Ctrl-C to stop.")
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass
    finally:
        remove_runtime_file(settings)
        cluster.close()


@cli.command()
@settings_options("scheduler_address", *_API_FLAGS, *_TLS_FLAGS)
def serve(**flags: Any) -> None:
    """Serve the OpenAI-compatible API for a running cluster (--scheduler ADDRESS)."""
    from xnb.api import run_sidecar

    settings = make_settings(**flags)
    run_sidecar(settings, scheduler_address=settings.scheduler_address)


@cli.command()
@click.option("--port", type=int, default=8786, show_default=True, help="scheduler port")
@click.option("--host", "--scheduler-host", "bind_host", default="127.0.0.1", show_default=True,
              help="address to listen on (this machine's address, or 0.0.0.0, for other machines)")
@click.option("--worker-ttl", default="60s", show_default=True,
              help="a worker silent this long (its host's network cut) is removed and its replicas "
              "relaunched (Dask's default: 5 minutes)")
@settings_options("home", "state_dir", "dashboard", *_TLS_FLAGS)
def scheduler(port: int, bind_host: str, worker_ttl: str, **flags: Any) -> None:
    """Run a Dask scheduler with xnb's Supervisor (workers join with `xnb worker`).

    Launched models are saved in --state-dir; started again with the same
    directory, the scheduler relaunches them as workers rejoin."""
    import asyncio

    from distributed import Scheduler

    from xnb.runtime.cluster import (
        configure_dask,
        remove_runtime_file,
        security_for,
        write_runtime_file,
    )
    from xnb.runtime.supervisor import Supervisor

    settings = make_settings(**flags)
    configure_dask()
    security = security_for(settings)
    protocol = "tls" if security is not None else "tcp"

    async def run() -> None:
        async with Scheduler(
            host=bind_host, port=port, protocol=protocol, security=security, worker_ttl=worker_ttl,
            dashboard=settings.dashboard, dashboard_address=f"{bind_host}:8787" if settings.dashboard else f"{bind_host}:0",
            plugins=[Supervisor(home=str(settings.home), state_dir=str(settings.state_path))],
        ) as s:
            write_runtime_file(settings, s.address)
            click.echo(f"xnb scheduler: {s.address} (state: {settings.state_path})", err=True)
            try:
                await s.finished()
            finally:
                remove_runtime_file(settings)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


@cli.command()
@click.argument("scheduler_address")
@click.option("--nthreads", type=int, help="threads (cores) for this worker; default: all")
@click.option("--memory-limit", default="auto", show_default=True, help="Dask memory limit")
@click.option("--name", help="worker name (pin replicas to it with --worker NAME)")
@click.option("--resources", help='extra Dask resources, e.g. "FPGA=1"; GPUs are detected')
@click.option("--host", "--worker-host", "bind_host", default=None,
              help="address to listen on and advertise  [default: 127.0.0.1, or --interface's]")
@click.option("--interface", help="network interface to listen on and advertise, e.g. eth0")
@click.option("--listen-address", help="address to listen on, e.g. tls://0.0.0.0:9000 (with --contact-address)")
@click.option("--contact-address", help="address the scheduler and clients use to reach this worker "
              "(behind NAT or a proxy), e.g. tls://10.0.0.5:9000; needs --listen-address")
@click.option("--nanny/--no-nanny", default=True, show_default=True, help="restart the worker if it dies")
@click.option("--reconnect/--no-reconnect", default=True, show_default=True,
              help="when the scheduler goes away, wait for it and join it again (a fresh worker process)")
@settings_options("home", *_TLS_FLAGS)
def worker(scheduler_address: str, nthreads: int | None, memory_limit: str, name: str | None,
           resources: str | None, bind_host: str | None, interface: str | None, listen_address: str | None,
           contact_address: str | None, nanny: bool, reconnect: bool, **flags: Any) -> None:
    """Run a worker for the xnb cluster at SCHEDULER_ADDRESS (GPUs advertised as resources)."""
    import asyncio
    import os

    from distributed import Nanny, Worker

    from xnb.runtime.cluster import configure_dask, security_for
    from xnb.runtime.gpu import detect_gpus

    if contact_address and not listen_address:
        raise click.UsageError("--contact-address needs --listen-address (the address to listen on)")
    if listen_address and (bind_host or interface):
        raise click.UsageError("give either --listen-address or --host/--interface, not both")
    settings = make_settings(**flags)
    configure_dask()
    res: dict[str, float] = {}
    for item in (resources or "").split(","):
        if item.strip():
            key, _, value = item.partition("=")
            res[key.strip()] = float(value or 1)
    gpus = detect_gpus()
    if gpus and "GPU" not in res:
        res["GPU"] = len(gpus)
    cls = Nanny if nanny else Worker
    security = security_for(settings, scheduler_address)

    os.environ["XNB_HOME"] = str(settings.home)  # the worker (or the nanny's child) reads it
    kwargs: dict[str, Any] = {"env": {"XNB_HOME": str(settings.home)}} if nanny else {}
    if listen_address:
        from distributed.comm import get_address_host_port

        host, listen_port = get_address_host_port(listen_address, strict=True)
        kwargs.update(host=host, contact_address=contact_address or listen_address)
        kwargs["worker_port" if nanny else "port"] = listen_port
    elif interface:
        kwargs["interface"] = interface
    else:
        kwargs["host"] = bind_host or "127.0.0.1"
    stopping = False

    async def run() -> None:
        nonlocal stopping
        import signal

        async with cls(
            scheduler_address, nthreads=nthreads or os.cpu_count() or 1, memory_limit=memory_limit,
            name=name, resources=res or None, security=security,
            preload=["xnb.runtime.worker_info"], **kwargs,
        ) as w:
            loop = asyncio.get_running_loop()

            def stop() -> None:
                nonlocal stopping
                stopping = True
                asyncio.ensure_future(w.close())

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop)
            click.echo(f"xnb worker {w.address} ({len(gpus)} GPU) → {scheduler_address}", err=True)
            await w.finished()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        stopping = True
    if reconnect and not stopping:
        _rejoin(scheduler_address)


def _rejoin(scheduler_address: str) -> None:
    """The scheduler went away (Dask workers cannot rejoin one): wait until it
    answers again, then start this command afresh in this process (same pid)."""
    import os
    import signal
    import sys
    import time

    from xnb.runtime.cluster import reachable

    interrupted = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGTERM, on_signal)
    click.echo(f"xnb worker: lost the scheduler {scheduler_address}; waiting for it to come back", err=True)
    try:
        while not interrupted and not reachable(scheduler_address):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return
    if interrupted:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
