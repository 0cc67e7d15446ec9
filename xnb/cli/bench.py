"""``xnb bench``: load-test an OpenAI-compatible server (see :mod:`xnb.bench`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from xnb.cli.base import cli, make_settings, settings_options

__all__: list[str] = []


def _default_base_url(settings: Any) -> str:
    """The API of the cluster running on this machine (its runtime file), else
    ``http://XNB_HOST:XNB_PORT``."""
    try:
        info = json.loads(settings.runtime_file.read_text())
    except (OSError, ValueError):
        info = {}
    if isinstance(info, dict) and info.get("api_url"):
        return str(info["api_url"])
    return f"http://{settings.host}:{settings.port}"


def _concurrency_levels(values: tuple[str, ...]) -> list[int]:
    levels: list[int] = []
    for value in values or ("1",):
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                level = int(part)
            except ValueError:
                raise click.BadParameter(f"{part!r} is not an integer", param_hint="--concurrency") from None
            if level < 1:
                raise click.BadParameter("levels must be ≥ 1", param_hint="--concurrency")
            levels.append(level)
    return levels


@cli.command()
@click.option("--base-url", help="server to test, e.g. http://127.0.0.1:9997 (default: the local xnb cluster's API)")
@click.option("--model", help="model to ask (default: the first one /v1/models lists)")
@click.option("--api-key", envvar="XNB_BENCH_API_KEY",
              help="bearer key [env XNB_BENCH_API_KEY; default: the first of XNB_API_KEYS]")
@click.option("--concurrency", "-c", multiple=True, metavar="N[,N...]",
              help="requests in flight; repeatable or a comma list, one run per level [default: 1]")
@click.option("--num-prompts", "-n", type=click.IntRange(min=1), default=32, show_default=True,
              help="requests per run")
@click.option("--request-rate", type=float, default=math.inf, show_default=True,
              help="requests per second, Poisson arrivals (inf: all at once, bounded by --concurrency)")
@click.option("--dataset", type=click.Choice(["bundled", "random"]), default="bundled", show_default=True,
              help="bundled: 32 prompts shipped with xnb; random: random words of --input-len tokens")
@click.option("--dataset-path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a JSON prompt file instead of the bundled set")
@click.option("--input-len", type=click.IntRange(min=1), default=128, show_default=True,
              help="random dataset: words per prompt, about one token each (the chat template adds its own)")
@click.option("--output-len", type=click.IntRange(min=1), default=128, show_default=True,
              help="random dataset: max_tokens of each request")
@click.option("--max-tokens", type=click.IntRange(min=1), default=128, show_default=True,
              help="max_tokens of requests whose prompt sets none")
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--ignore-eos", is_flag=True, help="send ignore_eos so every answer has max_tokens tokens (servers that accept it, e.g. vLLM)")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="requests sent (and not counted) before each run")
@click.option("--seed", type=int, default=0, show_default=True, help="prompt order and arrival times")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True,
              help="seconds one request may take")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results"),
              show_default=True, help="directory for bench.json, bench.md and (several levels) bench.png")
@click.option("--json", "as_json", is_flag=True, help="print the summaries as JSON instead of a table")
@settings_options("home")
def bench(
    base_url: str | None, model: str | None, api_key: str | None, concurrency: tuple[str, ...],
    num_prompts: int, request_rate: float, dataset: str, dataset_path: Path | None, input_len: int,
    output_len: int, max_tokens: int, temperature: float, ignore_eos: bool, warmup: int, seed: int,
    timeout_s: float, out_dir: Path, as_json: bool, **flags: Any,
) -> None:
    """Load-test an OpenAI-compatible server with streaming chat completions.

    Reports request throughput, output tokens/s, TTFT, TPOT and ITL (mean, median,
    p99) and errors per concurrency level; writes JSON, a Markdown table and, with
    several levels, a PNG of latency against concurrency (needs matplotlib:
    pip install 'xnb[bench]').

    \b
    xnb bench -c 1,4,16 -n 64
    xnb bench --base-url http://127.0.0.1:8000 --dataset random --input-len 256 --output-len 64
    """
    from xnb import bench as lib

    settings = make_settings(**flags)
    if api_key is None and (settings.api_keys or settings.admin_api_keys):
        api_key = (settings.api_keys or settings.admin_api_keys)[0]
    levels = _concurrency_levels(concurrency)
    try:
        if dataset == "random":
            prompts = lib.random_prompts(num_prompts, input_len, output_len, seed=seed)
        else:
            prompts = lib.sample_prompts(lib.load_prompts(dataset_path), num_prompts, seed=seed)
        config = lib.BenchConfig(
            base_url=base_url or _default_base_url(settings), model=model, api_key=api_key,
            max_tokens=max_tokens, temperature=temperature, ignore_eos=ignore_eos, timeout_s=timeout_s,
        )

        def show(run: dict[str, Any]) -> None:
            s = run["summary"]
            click.echo(
                f"concurrency {s['concurrency']}: {s['completed']}/{s['num_requests']} ok, "
                f"{s['errors']} errors, {s['request_throughput']:.2f} req/s, "
                f"{s['output_throughput']:.1f} output tok/s, TTFT median {lib.format_ms(s['ttft_ms']['median'])} ms",
                err=True,
            )

        click.echo(f"benchmarking {config.chat_url} with {num_prompts} prompts ({dataset}) "
                   f"at concurrency {', '.join(map(str, levels))}", err=True)
        report = lib.run_sweep(config, prompts, levels, request_rate=request_rate, warmup=warmup,
                               seed=seed, on_run=show)
    except lib.BenchError as exc:
        raise click.ClickException(str(exc)) from None
    report["dataset"] = {"name": "random" if dataset == "random" else str(dataset_path or lib.BUNDLED_PROMPTS),
                         "input_len": input_len if dataset == "random" else None,
                         "output_len": output_len if dataset == "random" else None}
    paths = lib.write_reports(report, out_dir)
    summaries = [run["summary"] for run in report["runs"]]
    if as_json:
        click.echo(json.dumps(summaries, indent=2))
    else:
        click.echo(lib.markdown_table(summaries))
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()), err=True)
    if any(s["errors"] for s in summaries):
        for s in summaries:
            for kind, count in s["error_kinds"].items():
                click.echo(f"concurrency {s['concurrency']}: {count}× {kind}", err=True)
