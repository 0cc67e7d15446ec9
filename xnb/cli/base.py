"""The ``xnb`` group and what its commands share: settings-derived flags,
finding the cluster, tables, launch progress."""

from __future__ import annotations

import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any, Callable

import click

from xnb.errors import XnbError
from xnb.runtime.registry import progress_line
from xnb.settings import XnbSettings

__all__ = ["cli", "settings_options", "make_settings", "connect_client", "launch_model", "progress_printer", "scheduler_option", "echo_json", "table"]

logger = logging.getLogger(__name__)


# -- flags derived from the settings class --------------------------------------------------


def _click_type(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    if typing.get_origin(base) is typing.Annotated:
        base = typing.get_args(base)[0]
    if base is bool:
        return bool
    if base is int:
        return int
    if base is float:
        return float
    if base is Path:
        return click.Path(path_type=Path)
    return str


#: Shorter spellings some flags also accept.
_ALIASES = {"scheduler_address": ("--scheduler",)}


def settings_options(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add ``--flag`` options for these XnbSettings fields (help text from the field)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(names):
            field = XnbSettings.model_fields[name]
            flag = "--" + name.replace("_", "-")
            env = "XNB_" + name.upper()
            kind = _click_type(field.annotation)
            help_text = f"{field.description} [env {env}]"
            if kind is bool:
                opt = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=help_text)
            else:
                opt = click.option(*_ALIASES.get(name, ()), flag, name, type=kind, default=None, help=help_text)
            fn = opt(fn)
        return fn

    return decorate


def make_settings(**flags: Any) -> XnbSettings:
    """Settings from the environment, overridden by the flags given."""
    values = {k: v for k, v in flags.items() if v is not None}
    for key in ("api_keys", "admin_api_keys", "allowed_hosts"):
        if isinstance(values.get(key), str):
            values[key] = [s.strip() for s in values[key].split(",") if s.strip()]
    return XnbSettings(**values)


scheduler_option = settings_options("scheduler_address")


def connect_client(scheduler_address: str | None) -> Any:
    from xnb.client import Client
    from xnb.runtime.cluster import find_running_cluster

    settings = make_settings(scheduler_address=scheduler_address)
    address = find_running_cluster(settings)
    if address is None:
        raise click.ClickException(
            "no xnb cluster found: start one with `xnb local`, or pass --scheduler ADDRESS"
        )
    return Client(address, settings=settings)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def table(rows: list[list[Any]], headers: list[str]) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


class _Group(click.Group):
    """Turns XnbErrors into one clean line and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except XnbError as exc:
            click.echo(f"Error ({exc.status} {exc.code}): {exc.message}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="more logging (-vv for debug)")
@click.version_option(package_name="xnb")
def cli(verbose: int) -> None:
    """xnb: serve open models on a Dask cluster, from Jupyter or an OpenAI client."""
    import distributed  # noqa: F401  (it configures its loggers on import; adjust them after)

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("distributed", "tornado", "xnb.llama_cpp.native"):
        logging.getLogger(noisy).setLevel(level if verbose >= 2 else logging.WARNING)


# -- progress ----------------------------------------------------------------------------------


def progress_printer(uid: str) -> Callable[[dict[str, Any]], None]:
    """Prints a launch progress line whenever it changes."""
    last = {"line": ""}

    def show(record: dict[str, Any]) -> None:
        line = progress_line(record)
        if line != last["line"]:
            click.echo(line, err=True)
            last["line"] = line

    return show



def launch_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--uid", help="name to serve the model under (default: NAME-<random>)"),
        click.option("--engine", help="engine (see `xnb engines NAME`)"),
        click.option("--format", "fmt", type=click.Choice(["gguf", "pytorch"]), help="weights format"),
        click.option("--size", help="model size, e.g. 0.5b"),
        click.option("--quantization", "-q", help="quantization, e.g. Q4_K_M"),
        click.option("--replicas", type=int, default=1, show_default=True, help="replicas to start"),
        click.option("--worker", "workers", multiple=True, help="pin to this worker (repeatable)"),
        click.option("--gpus", type=click.IntRange(min=0),
                     help="GPUs per replica (default: what the engine needs: 0; vLLM on GPUs: --gpus N = tensor parallel over N)"),
        click.option("--gpu-idx", "gpu_idx", type=int, multiple=True, help="pin to these GPU indices"),
        click.option("--max-queue", type=int, help="requests a replica queues before answering 429"),
        click.option("--restart", type=click.Choice(["never", "on-failure"]), default="never",
                     show_default=True, help="relaunch replicas lost with their worker"),
        click.option("--keep-alive", type=float, metavar="SECONDS",
                     help="unload the model after this many idle seconds; reload on the next request"),
        click.option("--option", "-o", "engine_option", multiple=True, metavar="KEY=VALUE",
                     help="engine option, e.g. -o max_num_seqs=8 (JSON values allowed)"),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def _parse_engine_options(items: tuple[str, ...]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--option")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out or None


def launch_model(client: Any, name: str, *, quiet: bool = False, **kw: Any) -> Any:
    options = {
        "uid": kw.get("uid"), "engine": kw.get("engine"), "format": kw.get("fmt"), "size": kw.get("size"),
        "quantization": kw.get("quantization"), "replicas": kw.get("replicas", 1),
        "workers": list(kw.get("workers") or []) or None, "gpu_idx": list(kw.get("gpu_idx") or []) or None,
        "gpus": kw.get("gpus"), "max_queue": kw.get("max_queue"), "restart": kw.get("restart", "never"),
        "keep_alive": kw.get("keep_alive"),
        "engine_options": _parse_engine_options(tuple(kw.get("engine_option") or ())),
    }
    model = client.launch(name, wait=False, **options)
    model.wait(on_progress=None if quiet else progress_printer(model.uid))
    return model
