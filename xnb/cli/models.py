"""Commands that manage and use models: launch, list, chat, catalog, ..."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, get_args

import click

from xnb.catalog.schema import Ability, Format
from xnb.protocol import ModelStatus

from xnb.cli.base import (
    cli,
    connect_client,
    echo_json,
    launch_model,
    launch_options,
    progress_printer,
    scheduler_option,
    table,
)

__all__: list[str] = []


# -- models ---------------------------------------------------------------------------------------


@cli.command()
@click.argument("name")
@launch_options
@scheduler_option
def launch(name: str, scheduler_address: str | None, **kw: Any) -> None:
    """Launch catalog model NAME and wait until it is ready."""
    with connect_client(scheduler_address) as client:
        model = launch_model(client, name, **kw)
        click.echo(model.uid)


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@scheduler_option
def list_(as_json: bool, scheduler_address: str | None) -> None:
    """List launched models."""
    with connect_client(scheduler_address) as client:
        records = client.list()
    if as_json:
        return echo_json(records)
    rows = [
        [r["uid"], r["model_name"], r["spec"]["engine"], r["status"],
         f"{r['replicas_ready']}/{len(r['replicas'])}", _batch_sizes(r), ",".join(r["workers"])]
        for r in records
    ]
    table(rows, ["UID", "MODEL", "ENGINE", "STATUS", "READY", "SEQS", "WORKERS"])


def _batch_sizes(record: dict[str, Any]) -> str:
    """Sequences each loaded replica decodes at once (its engine's ``max_num_seqs``)."""
    sizes = {str(rep["load"]["max_num_seqs"]) for rep in record["replicas"]
             if rep.get("load", {}).get("max_num_seqs")}
    return ",".join(sorted(sizes)) or "-"


@cli.command()
@click.argument("uid")
@scheduler_option
def terminate(uid: str, scheduler_address: str | None) -> None:
    """Terminate model UID (all replicas)."""
    with connect_client(scheduler_address) as client:
        client.terminate(uid)
    click.echo(f"terminated {uid}")


@cli.command()
@click.argument("uid")
@click.argument("replicas", type=int)
@scheduler_option
def scale(uid: str, replicas: int, scheduler_address: str | None) -> None:
    """Scale model UID to REPLICAS replicas."""
    with connect_client(scheduler_address) as client:
        record = client.scale(uid, replicas)
        if not ModelStatus.settled(record):
            record = client.get(uid).wait(on_progress=progress_printer(uid)).record
    click.echo(f"{uid}: {record['replicas_ready']}/{len(record['replicas'])} replicas ready")


@cli.command()
@click.argument("uid")
@click.option("--json", "as_json", is_flag=True)
@scheduler_option
def events(uid: str, as_json: bool, scheduler_address: str | None) -> None:
    """Show the events of model UID (launch progress, failures, losses)."""
    with connect_client(scheduler_address) as client:
        items = client.get(uid).events()
    if as_json:
        return echo_json(items)
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
    with connect_client(scheduler_address) as client:
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
    with connect_client(scheduler_address) as client:
        for chunk in client.get(uid).complete(prompt, stream=True, **params):
            for choice in chunk["choices"]:
                click.echo(choice["text"], nl=False)
    click.echo()


# -- catalog --------------------------------------------------------------------------------------


@cli.command()
@click.argument("filter_text", required=False)
@click.option("--type", "ability", type=click.Choice(list(get_args(Ability))))
@click.option("--format", "fmt", type=click.Choice([f for f in get_args(Format) if f != "none"]))
@click.option("--json", "as_json", is_flag=True)
@scheduler_option
def catalog(filter_text: str | None, ability: str | None, fmt: str | None, as_json: bool,
            scheduler_address: str | None) -> None:
    """List catalog models, optionally filtered by text, ability or format."""
    with connect_client(scheduler_address) as client:
        rows = client.catalog(filter_text, ability=ability, format=fmt)
    if as_json:
        return echo_json(rows)
    table([[r["name"], ",".join(r["abilities"]), ",".join(r["formats"]), ",".join(r["sizes"]),
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
    with connect_client(scheduler_address) as client:
        row = client.register(family, overwrite=overwrite)
    click.echo(f"registered {row['name']}")


@cli.command()
@click.argument("name")
@scheduler_option
def unregister(name: str, scheduler_address: str | None) -> None:
    """Remove custom model NAME from the catalog."""
    with connect_client(scheduler_address) as client:
        client.unregister(name)
    click.echo(f"unregistered {name}")


@cli.command()
@click.argument("name")
@scheduler_option
def engines(name: str, scheduler_address: str | None) -> None:
    """Which engines can serve catalog model NAME, per format and size."""
    with connect_client(scheduler_address) as client:
        rows = client.engines(name)
    table([[r["engine"], r["format"], r["size"], ",".join(r["quantizations"]),
             "yes" if r["requires_gpu"] else ""] for r in rows],
           ["ENGINE", "FORMAT", "SIZE", "QUANTIZATIONS", "GPU"])


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@scheduler_option
def cached(as_json: bool, scheduler_address: str | None) -> None:
    """Model files cached on each worker."""
    with connect_client(scheduler_address) as client:
        by_worker = client.cached()
    if as_json:
        return echo_json(by_worker)
    rows = [[w, e["model_name"], e.get("quantization", ""), f"{e['size_bytes'] / 1e6:.0f} MB", e["path"]]
            for w, entries in by_worker.items() for e in entries]
    table(rows, ["WORKER", "MODEL", "QUANT", "SIZE", "PATH"])


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@scheduler_option
def cluster(as_json: bool, scheduler_address: str | None) -> None:
    """Workers, their resources and the models placed on each."""
    with connect_client(scheduler_address) as client:
        info = client.cluster_info()
    if as_json:
        return echo_json(info)
    click.echo(f"scheduler {info['scheduler']}")
    table([[w["address"], w["name"], w["nthreads"], f"{w['memory_used'] / 1e9:.1f}/{w['memory_limit'] / 1e9:.1f} GB",
             w["gpus"], ",".join(m["uid"] for m in w["models"])] for w in info["workers"]],
           ["WORKER", "NAME", "THREADS", "MEMORY", "GPUS", "MODELS"])
