"""CLI commands that run servers: ``xnb local`` (cluster + API) and ``xnb serve`` (API only)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import click

from xnb.cli.base import cli, launch_model, make_settings, settings_options

__all__: list[str] = []

logger = logging.getLogger(__name__)

_API_FLAGS = ("host", "port", "api_keys", "admin_api_keys", "api_keys_file", "allowed_hosts", "max_queue")


@cli.command()
@click.option("--launch", "launch_names", multiple=True, metavar="NAME",
              help="launch this catalog model before serving (served under its name); repeatable")
@click.option("--api/--no-api", default=True, show_default=True, help="serve the OpenAI-compatible API")
@settings_options("home", "n_workers", "threads_per_worker", "memory_limit", "dashboard", *_API_FLAGS)
def local(launch_names: tuple[str, ...], api: bool, **flags: Any) -> None:
    """Start a local xnb cluster (and the API at http://127.0.0.1:9997) until Ctrl-C."""
    from xnb.api import run_sidecar
    from xnb.client import Client
    from xnb.cluster import find_running_cluster, remove_runtime_file, start_local_cluster, write_runtime_file

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
            click.echo(f"OpenAI-compatible API: {api_url}/v1   (management: {api_url}/xnb/v1)")
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
@settings_options("scheduler_address", *_API_FLAGS)
def serve(**flags: Any) -> None:
    """Serve the OpenAI-compatible API for a running cluster (--scheduler ADDRESS)."""
    from xnb.api import run_sidecar

    settings = make_settings(**flags)
    run_sidecar(settings, scheduler_address=settings.scheduler_address)
