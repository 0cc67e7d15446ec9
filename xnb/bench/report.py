"""Reports: a Markdown table, a latency-vs-concurrency plot, JSON files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

__all__ = ["format_ms", "markdown_table", "plot_latency", "write_reports"]



# -- reports -----------------------------------------------------------------------------------------


def format_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown_table(summaries: Sequence[dict[str, Any]], *, label: str | None = None) -> str:
    """One row per run: throughput, then TTFT / TPOT / ITL / E2E latency (mean, median, p99 ms)."""
    head = [label or "concurrency", "rate", "ok", "err", "req/s", "out tok/s",
            "TTFT mean", "TTFT med", "TTFT p99", "TPOT mean", "TPOT med", "TPOT p99",
            "ITL mean", "ITL med", "ITL p99", "E2E med", "E2E p99"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        row = [
            str(s.get("label", s.get("concurrency", ""))), str(s.get("request_rate", "inf")),
            str(s["completed"]), str(s["errors"]),
            f"{s['request_throughput']:.2f}", f"{s['output_throughput']:.1f}",
        ]
        for metric in ("ttft_ms", "tpot_ms", "itl_ms"):
            d = s[metric]
            row += [format_ms(d["mean"]), format_ms(d["median"]), format_ms(d["p99"])]
        row += [format_ms(s["e2el_ms"]["median"]), format_ms(s["e2el_ms"]["p99"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n\nLatencies in ms; TPOT = (E2E − TTFT) / (output tokens − 1); ITL = gaps between streamed chunks.\n"


def plot_latency(summaries: Sequence[dict[str, Any]], path: Path, *, title: str = "latency vs concurrency") -> Path:
    """A PNG of median/p99 TTFT, median TPOT and median E2E latency (left) and output
    tokens/s (right) against concurrency.  Needs matplotlib (``pip install 'xnb[bench]'``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [s["concurrency"] for s in summaries]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, stat, name in (("ttft_ms", "median", "TTFT median"), ("ttft_ms", "p99", "TTFT p99"),
                            ("tpot_ms", "median", "TPOT median"), ("itl_ms", "p99", "ITL p99"),
                            ("e2el_ms", "median", "E2E median")):
        ys = [s[key][stat] if s[key][stat] is not None else math.nan for s in summaries]
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrency")
    ax.set_ylabel("ms")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax2.plot(xs, [s["output_throughput"] for s in summaries], marker="o", color="tab:green")
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(xs, [str(x) for x in xs])
    ax2.set_xlabel("concurrency")
    ax2.set_ylabel("output tokens/s")
    ax2.set_title("throughput")
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(report: dict[str, Any], out_dir: str | Path, *, stem: str = "bench") -> dict[str, Path]:
    """``STEM.json`` (everything), ``STEM.md`` (the table) and, with several concurrency
    levels and matplotlib installed, ``STEM.png``.  Returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    summaries = [run["summary"] for run in report["runs"]]
    cfg = report.get("config", {})
    md = [
        f"# {report.get('tool', 'benchmark')}: {cfg.get('model')} at {cfg.get('base_url')}",
        "",
        f"{report.get('num_prompts')} prompts per run, max_tokens {cfg.get('max_tokens')}, "
        f"temperature {cfg.get('temperature')}; {report.get('created', '')}.",
        "",
        markdown_table(summaries),
    ]
    errors = [(s.get("label", s.get("concurrency")), kind, count) for s in summaries for kind, count in s["error_kinds"].items()]
    if errors:
        md += ["Errors:", ""] + [f"- run {run}: {count}× {kind}" for run, kind, count in errors] + [""]
    paths["md"].write_text("\n".join(md))
    if len({s["concurrency"] for s in summaries}) > 1:
        try:
            paths["png"] = plot_latency(summaries, out / f"{stem}.png")
        except ImportError:
            pass  # matplotlib is optional: pip install 'xnb[bench]'
    return paths
