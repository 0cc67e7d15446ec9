"""What ``%xnb status``, ``list``, ``catalog`` and ``events`` return: objects that show
as HTML tables in a notebook (``_repr_html_``) and as aligned plain text in a terminal.

Addresses are shown in ``<code>`` (a notebook would turn ``tcp://…`` into a link),
long cells wrap inside their column instead of wrapping the whole line, and the
object keeps its rows (``.rows``) for code that wants them.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Report", "Table", "code"]


class code(str):  # noqa: N801 - a marker type, used like a tag
    """A cell value shown as code (addresses, commands): never a link."""


def _html_cell(value: Any) -> str:
    if isinstance(value, code):
        return f"<code>{html.escape(value)}</code>"
    return html.escape(str(value))


@dataclass
class Table:
    """A titled table with optional notes under it."""

    headers: list[str]
    rows: list[list[Any]]
    title: str = ""
    notes: list[str] = field(default_factory=list)
    empty: str = "nothing to show"

    def __len__(self) -> int:
        return len(self.rows)

    def _repr_html_(self) -> str:
        parts = [f"<b>{html.escape(self.title)}</b>"] if self.title else []
        if self.rows:
            head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in self.headers)
            body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{_html_cell(c)}</td>" for c in row)
                           + "</tr>" for row in self.rows)
            parts.append(f"<table class='xnb-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            parts.append(f"<i>{html.escape(self.empty)}</i>")
        parts += [f"<div>{html.escape(n)}</div>" for n in self.notes]
        return "\n".join(parts)

    def __repr__(self) -> str:
        lines = [self.title] if self.title else []
        if self.rows:
            cells = [self.headers] + [[str(c) for c in row] for row in self.rows]
            widths = [max(len(r[i]) for r in cells) for i in range(len(self.headers))]
            lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        else:
            lines.append(self.empty)
        return "\n".join(lines + self.notes)


@dataclass
class Report:
    """``key: value`` lines followed by tables (``%xnb status``)."""

    facts: list[tuple[str, Any]]
    tables: list[Table] = field(default_factory=list)

    def _repr_html_(self) -> str:
        facts = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                        f"<td style='text-align:left'>{_html_cell(v)}</td></tr>" for k, v in self.facts)
        return f"<table class='xnb-facts'>{facts}</table>" + "".join(t._repr_html_() for t in self.tables)

    def __repr__(self) -> str:
        width = max((len(k) for k, _ in self.facts), default=0)
        lines = [f"{k + ':':<{width + 1}} {v}" for k, v in self.facts]
        return "\n".join(lines + [repr(t) for t in self.tables])
