"""The ``xnb`` command line: everything the notebook UI can do.

Flags that configure xnb derive from :class:`~xnb.settings.XnbSettings`
(``--port`` ⇔ ``XNB_PORT``); every command that talks to a cluster takes
``--scheduler`` (``XNB_SCHEDULER_ADDRESS``) and otherwise finds the cluster
running on this machine.  ``xnb local`` starts one.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import typing
from pathlib import Path
from typing import Any, Callable

import click

from xnb.errors import XnbError
from xnb.settings import XnbSettings

__all__ = ["main", "cli", "settings_options"]

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
                opt = click.option(flag, name, type=kind, default=None, help=help_text)
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


def _client(scheduler_address: str | None) -> Any:
    from xnb.client import Client
    from xnb.cluster import find_running_cluster

    settings = make_settings(scheduler_address=scheduler_address)
    address = find_running_cluster(settings)
    if address is None:
        raise click.ClickException(
            "no xnb cluster found: start one with `xnb local`, or pass --scheduler ADDRESS"
        )
    return Client(address, settings=settings)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _table(rows: list[list[Any]], headers: list[str]) -> None:
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
    """A launch progress line: status, download percentage, replicas ready."""
    last = {"line": ""}

    def show(record: dict[str, Any]) -> None:
        parts = []
        for r in record["replicas"]:
            p = r.get("progress") or {}
            text = r["status"]
            if r["status"] == "downloading" and p.get("total"):
                text += f" {100 * p.get('downloaded', 0) / p['total']:.0f}% of {p['total'] / 1e6:.0f} MB"
            parts.append(text)
        line = f"{uid}: {record['status']} [{', '.join(parts)}] {record['replicas_ready']}/{len(record['replicas'])} ready"
        if line != last["line"]:
            click.echo(line, err=True)
            last["line"] = line

    return show


# -- models ---------------------------------------------------------------------------------------


def _launch_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--uid", help="name to serve the model under (default: NAME-<random>)"),
        click.option("--engine", help="engine (see `xnb engines NAME`)"),
        click.option("--format", "fmt", type=click.Choice(["gguf", "pytorch"]), help="weights format"),
        click.option("--size", help="model size, e.g. 0.5b"),
        click.option("--quantization", "-q", help="quantization, e.g. Q4_K_M"),
        click.option("--replicas", type=int, default=1, show_default=True, help="replicas to start"),
        click.option("--worker", "workers", multiple=True, help="pin to this worker (repeatable)"),
        click.option("--gpu-idx", "gpu_idx", type=int, multiple=True, help="pin to these GPU indices"),
        click.option("--max-queue", type=int, help="requests a replica queues before answering 429"),
        click.option("--restart", type=click.Choice(["never", "on-failure"]), default="never",
                     show_default=True, help="relaunch replicas lost with their worker"),
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
        "max_queue": kw.get("max_queue"), "restart": kw.get("restart", "never"),
        "engine_options": _parse_engine_options(tuple(kw.get("engine_option") or ())),
    }
    model = client.launch(name, wait=False, **options)
    model.wait(on_progress=None if quiet else progress_printer(model.uid))
    return model


@cli.command()
@click.argument("name")
@_launch_options
@scheduler_option
def launch(name: str, scheduler_address: str | None, **kw: Any) -> None:
    """Launch catalog model NAME and wait until it is ready."""
    with _client(scheduler_address) as client:
        model = launch_model(client, name, **kw)
        click.echo(model.uid)


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@scheduler_option
def list_(as_json: bool, scheduler_address: str | None) -> None:
    """List launched models."""
    with _client(scheduler_address) as client:
        records = client.list()
    if as_json:
        return _echo_json(records)
    rows = [
        [r["uid"], r["model_name"], r["spec"]["engine"], r["status"],
         f"{r['replicas_ready']}/{len(r['replicas'])}", ",".join(r["workers"])]
        for r in records
    ]
    _table(rows, ["UID", "MODEL", "ENGINE", "STATUS", "READY", "WORKERS"])


@cli.command()
@click.argument("uid")
@scheduler_option
def terminate(uid: str, scheduler_address: str | None) -> None:
    """Terminate model UID (all replicas)."""
    with _client(scheduler_address) as client:
        client.terminate(uid)
    click.echo(f"terminated {uid}")


@cli.command()
@click.argument("uid")
@click.argument("replicas", type=int)
@scheduler_option
def scale(uid: str, replicas: int, scheduler_address: str | None) -> None:
    """Scale model UID to REPLICAS replicas."""
    with _client(scheduler_address) as client:
        record = client._sync(client.manager.scale, uid, replicas)
        record = client.get(uid).wait(on_progress=progress_printer(uid)).record if record["status"] != "ready" else record
    click.echo(f"{uid}: {record['replicas_ready']}/{len(record['replicas'])} replicas ready")


@cli.command()
@click.argument("uid")
@click.option("--json", "as_json", is_flag=True)
@scheduler_option
def events(uid: str, as_json: bool, scheduler_address: str | None) -> None:
    """Show the events of model UID (launch progress, failures, losses)."""
    with _client(scheduler_address) as client:
        items = client.get(uid).events()
    if as_json:
        return _echo_json(items)
    for e in items:
        stamp = time.strftime("%H:%M:%S", time.localtime(e["time"]))
        click.echo(f"{stamp}  {e['kind']:<12} {e['message']}")


# -- using models -------------------------------------------------------------------------------


@cli.command()
@click.argument("uid")
@click.option("--system", help="system prompt")
@click.option("--max-tokens", type=int, help="longest answer, in tokens")
@click.option("--temperature", type=float)
@scheduler_option
def chat(uid: str, system: str | None, max_tokens: int | None, temperature: float | None,
         scheduler_address: str | None) -> None:
    """Chat with model UID interactively (answers stream); Ctrl-D or /exit ends."""
    params = {k: v for k, v in {"max_tokens": max_tokens, "temperature": temperature}.items() if v is not None}
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty()
    with _client(scheduler_address) as client:
        model = client.get(uid)
        while True:
            try:
                text = input("> " if interactive else "")
            except EOFError:
                break
            if text.strip() in ("/exit", "/quit"):
                break
            if not text.strip():
                continue
            history.append({"role": "user", "content": text})
            answer = []
            for chunk in model.chat(history, stream=True, **params):
                for choice in chunk["choices"]:
                    piece = choice["delta"].get("content") or ""
                    answer.append(piece)
                    click.echo(piece, nl=False)
            click.echo()
            history.append({"role": "assistant", "content": "".join(answer)})


@cli.command()
@click.argument("uid")
@click.argument("prompt")
@click.option("--max-tokens", type=int, default=128, show_default=True)
@click.option("--temperature", type=float)
@scheduler_option
def generate(uid: str, prompt: str, max_tokens: int, temperature: float | None, scheduler_address: str | None) -> None:
    """Complete PROMPT with model UID (streams the text)."""
    params: dict[str, Any] = {"max_tokens": max_tokens}
    if temperature is not None:
        params["temperature"] = temperature
    with _client(scheduler_address) as client:
        for chunk in client.get(uid).complete(prompt, stream=True, **params):
            for choice in chunk["choices"]:
                click.echo(choice["text"], nl=False)
    click.echo()


# -- catalog --------------------------------------------------------------------------------------


@cli.command()
@click.argument("filter_text", required=False)
@click.option("--type", "ability", type=click.Choice(["chat", "generate", "embed", "rerank"]))
@click.option("--format", "fmt", type=click.Choice(["gguf", "pytorch"]))
@click.option("--json", "as_json", is_flag=True)
@scheduler_option
def catalog(filter_text: str | None, ability: str | None, fmt: str | None, as_json: bool,
            scheduler_address: str | None) -> None:
    """List catalog models, optionally filtered by text, ability or format."""
    with _client(scheduler_address) as client:
        rows = client.catalog(filter_text, ability=ability, format=fmt)
    if as_json:
        return _echo_json(rows)
    _table([[r["name"], ",".join(r["abilities"]), ",".join(r["formats"]), ",".join(r["sizes"]),
             "" if r["builtin"] else "custom"] for r in rows],
           ["NAME", "ABILITIES", "FORMATS", "SIZES", ""])


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="replace a custom model of the same name")
@scheduler_option
def register(file: Path, overwrite: bool, scheduler_address: str | None) -> None:
    """Register the custom model family in FILE (JSON)."""
    try:
        family = json.loads(file.read_text())
    except ValueError as exc:
        raise click.ClickException(f"{file} is not valid JSON: {exc}") from None
    with _client(scheduler_address) as client:
        row = client._sync(lambda: client.manager.register(family, overwrite=overwrite))
    click.echo(f"registered {row['name']}")


@cli.command()
@click.argument("name")
@scheduler_option
def unregister(name: str, scheduler_address: str | None) -> None:
    """Remove custom model NAME from the catalog."""
    with _client(scheduler_address) as client:
        client._sync(client.manager.unregister, name)
    click.echo(f"unregistered {name}")


@cli.command()
@click.argument("name")
@scheduler_option
def engines(name: str, scheduler_address: str | None) -> None:
    """Which engines can serve catalog model NAME, per format and size."""
    with _client(scheduler_address) as client:
        rows = client._sync(client.manager.engines, name)
    _table([[r["engine"], r["format"], r["size"], ",".join(r["quantizations"]),
             "yes" if r["requires_gpu"] else ""] for r in rows],
           ["ENGINE", "FORMAT", "SIZE", "QUANTIZATIONS", "GPU"])


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@scheduler_option
def cached(as_json: bool, scheduler_address: str | None) -> None:
    """Model files cached on each worker."""
    with _client(scheduler_address) as client:
        by_worker = client._sync(client.manager.cached)
    if as_json:
        return _echo_json(by_worker)
    rows = [[w, e["model_name"], e.get("quantization", ""), f"{e['size_bytes'] / 1e6:.0f} MB", e["path"]]
            for w, entries in by_worker.items() for e in entries]
    _table(rows, ["WORKER", "MODEL", "QUANT", "SIZE", "PATH"])


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@scheduler_option
def cluster(as_json: bool, scheduler_address: str | None) -> None:
    """Workers, their resources and the models placed on each."""
    with _client(scheduler_address) as client:
        info = client.cluster_info()
    if as_json:
        return _echo_json(info)
    click.echo(f"scheduler {info['scheduler']}")
    _table([[w["address"], w["name"], w["nthreads"], f"{w['memory_used'] / 1e9:.1f}/{w['memory_limit'] / 1e9:.1f} GB",
             w["gpus"], ",".join(m["uid"] for m in w["models"])] for w in info["workers"]],
           ["WORKER", "NAME", "THREADS", "MEMORY", "GPUS", "MODELS"])


from xnb.cli_servers import register_server_commands  # noqa: E402  (commands that run servers)

register_server_commands(cli)


def main() -> None:
    cli(prog_name="xnb")


if __name__ == "__main__":
    main()
