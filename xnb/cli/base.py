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
from xnb.protocol import launch_option_specs, parse_pairs
from xnb.runtime.registry import progress_line
from xnb.settings import XnbSettings

__all__ = ["cli", "settings_options", "make_settings", "connect_client", "launch_model", "launch_options",
           "launch_kwargs", "progress_printer", "scheduler_option", "echo_json", "table"]

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
    """The flags of ``xnb launch``: one per :class:`xnb.protocol.LaunchOptions` field.
    Values are checked by LaunchOptions itself (the same error as the REST API)."""
    for spec in reversed(launch_option_specs()):
        kwargs: dict[str, Any] = {"help": spec.help}
        if spec.mapping:
            kwargs.update(multiple=True, metavar="KEY=VALUE")
            kwargs["help"] += " (repeatable KEY=VALUE, JSON values allowed)"
        elif spec.multiple:
            kwargs.update(multiple=True, type=spec.type)
            kwargs["help"] += " (repeatable)"
        elif spec.choices:
            kwargs.update(type=click.Choice(list(spec.choices)), default=spec.default, show_default=True)
        else:
            kwargs.update(type=spec.type)
            if spec.default is not None:
                kwargs.update(default=spec.default, show_default=True)
        fn = click.option(*spec.flags, spec.name, **kwargs)(fn)
    return fn


def launch_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """Parsed ``launch_options`` flags as :class:`LaunchOptions` fields (unset ones left out)."""
    out: dict[str, Any] = {}
    for spec in launch_option_specs():
        value = kw.get(spec.name)
        if spec.mapping:
            value = parse_pairs(tuple(value or ()), spec.flags[0])
        elif spec.multiple:
            value = list(value or ()) or None
        if value is not None:
            out[spec.name] = value
    return out


def launch_model(client: Any, name: str, *, quiet: bool = False, **kw: Any) -> Any:
    model = client.launch(name, wait=False, **launch_kwargs(kw))
    model.wait(on_progress=None if quiet else progress_printer(model.uid))
    return model
