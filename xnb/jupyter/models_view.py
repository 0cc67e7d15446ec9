"""The panel's Models tab: one grid (headers and cells share its columns, so they line
up), actions per model, why a model failed, and its events.

* a running model: **Events**, **Terminate** — which asks for confirmation first (the
  model may serve other notebooks and the OpenAI API);
* a failed (``error``/``lost``) model: its reason under the row, **Events**,
  **Retry** (launch it again the same way) and **Dismiss** (remove it).
"""

from __future__ import annotations

import html
import time
from typing import Any

import ipywidgets as w

from xnb.protocol import ModelStatus

__all__ = ["ModelsView"]



def _short(address: str) -> str:
    return address.replace("tcp://", "").replace("tls://", "")


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _cell(text: str = "", **layout: Any) -> w.HTML:
    cell = w.HTML(layout=w.Layout(overflow="hidden", **layout))
    cell.add_class("xnb-cell")
    cell.value = text
    return cell


class ModelsView(w.VBox):
    """Running models: status, engine, worker, uptime, requests and actions."""

    COLUMNS = ("UID", "Model", "Status", "Engine", "Worker", "Uptime", "Requests", "")
    TEMPLATE = "minmax(100px,1.2fr) minmax(120px,1.5fr) 70px minmax(110px,1fr) minmax(120px,1fr) 60px 70px max-content"

    def __init__(self, panel: Any) -> None:
        self.panel = panel
        self._shape: list[tuple[str, str]] = []  # (uid, action set) the grid was built for
        self._cells: dict[str, list[w.HTML]] = {}
        self.confirming: str | None = None
        self.grid = w.GridBox(layout=w.Layout(grid_template_columns=self.TEMPLATE, grid_gap="2px 8px",
                                              align_items="center", width="100%"))
        self.grid.add_class("xnb-models-grid")
        self.empty = w.HTML("<i>No models running. Launch one in the Launch tab.</i>")
        self.events = w.HTML()
        self.events.add_class("xnb-events")
        super().__init__([self.grid, self.empty, self.events])
        self.add_class("xnb-models")
        self._build([])

    # -- updating ------------------------------------------------------------------------------

    def update(self, records: list[dict[str, Any]]) -> None:
        shape = [(r["uid"], self._actions_kind(r)) for r in records]
        if shape != self._shape:
            self._build(records)
        now = time.time()
        for record in records:
            requests = "-"
            if ModelStatus(record["status"]).serving:
                infos = self.panel.client.replica_info(record["uid"])
                requests = str(sum(i.get("counters", {}).get("requests", 0)
                                   + i.get("counters", {}).get("embed_requests", 0) for i in infos))
            values = [record["uid"], record["model_name"], record["status"], record["spec"]["engine"],
                      "<br>".join(html.escape(_short(a)) for a in record["workers"]) or "-",
                      _duration(now - record["ready_at"]) if record.get("ready_at") else "-", requests]
            cells = self._cells[record["uid"]]
            for cell, value in zip(cells, values):
                cell.value = value if cell is cells[4] else html.escape(str(value))
            cells[1].tooltip = record["model_name"]
            if len(cells) > 7:  # the reason row of a failed model
                cells[7].value = (f"<span style='color:#b00020'>failed: {html.escape(record.get('last_error') or '')}"
                                  "</span>")

    def _actions_kind(self, record: dict[str, Any]) -> str:
        if ModelStatus(record["status"]).failed:
            return "failed"
        return "confirm" if self.confirming == record["uid"] else "running"

    def _build(self, records: list[dict[str, Any]]) -> None:
        children: list[w.Widget] = []
        for name in self.COLUMNS:
            head = _cell(f"<b>{name}</b>")
            head.add_class("xnb-models-header")
            children.append(head)
        self._cells = {}
        for record in records:
            uid = record["uid"]
            cells = [_cell() for _ in range(7)]
            cells[0].add_class("xnb-models-uid")
            children += [*cells, self._actions(record)]
            if ModelStatus(record["status"]).failed:
                reason = _cell(grid_column="1 / -1")
                reason.add_class("xnb-models-reason")
                cells.append(reason)
                children.append(reason)
            self._cells[uid] = cells
        self.grid.children = children
        self.empty.layout.display = "none" if records else None
        self._shape = [(r["uid"], self._actions_kind(r)) for r in records]

    def _button(self, label: str, css: str, action: Any, *, style: str = "", tip: str = "") -> w.Button:
        button = w.Button(description=label, button_style=style, tooltip=tip, layout=w.Layout(width="auto"))
        button.add_class(css)
        button.on_click(lambda _: action())
        return button

    def _actions(self, record: dict[str, Any]) -> w.HBox:
        uid = record["uid"]
        events = self._button("Events", "xnb-show-events", lambda: self.panel.background(self.show_events, uid))
        kind = self._actions_kind(record)
        if kind == "failed":
            buttons = [events,
                       self._button("Retry", "xnb-retry", lambda: self.panel.background(self.retry, record),
                                    style="warning", tip="launch it again with the same options"),
                       self._button("Dismiss", "xnb-dismiss", lambda: self.panel.background(self.terminate, uid),
                                    tip="remove the failed model")]
        elif kind == "confirm":
            buttons = [self._button("Really terminate", "xnb-confirm-terminate",
                                    lambda: self.panel.background(self.terminate, uid), style="danger",
                                    tip="other notebooks and the OpenAI API lose this model too"),
                       self._button("Cancel", "xnb-cancel", lambda: self.ask_terminate(None))]
        else:
            buttons = [events, self._button("Terminate", "xnb-terminate", lambda: self.ask_terminate(uid),
                                            style="danger")]
        return w.HBox(buttons, layout=w.Layout(overflow="visible"))

    # -- actions --------------------------------------------------------------------------------

    def ask_terminate(self, uid: str | None) -> None:
        """First click on Terminate: ask for confirmation (None: cancel)."""
        self.confirming = uid
        if uid is not None:
            self.panel.set_status(f"terminate {uid}? Other notebooks and the OpenAI API may be using it.")
        self.panel.background(self.panel.refresh)

    def terminate(self, uid: str) -> None:
        self.confirming = None
        self.panel.set_status(f"terminating {uid}…")
        self.panel.client.terminate(uid)
        self.panel.set_status(f"{uid} terminated")
        self.panel.refresh()

    def retry(self, record: dict[str, Any]) -> None:
        """Launch a failed model again with the options it was launched with."""
        uid, spec = record["uid"], record["spec"]
        self.panel.client.terminate(uid)
        options = {k: spec.get(k) for k in ("engine", "format", "size", "quantization")}
        self.panel.set_status(f"launching {uid} again…")
        self.panel.client.launch(record["model_name"], uid=uid, replicas=len(record["replicas"]) or 1, wait=False,
                                 **{k: v for k, v in options.items() if v})
        self.panel.refresh()

    def show_events(self, uid: str) -> None:
        events = self.panel.client.get(uid).events()
        rows = "".join(
            f"<tr><td>{time.strftime('%H:%M:%S', time.localtime(e['time']))}</td><td>{html.escape(e['kind'])}</td>"
            f"<td>{html.escape(e['message'])}</td></tr>" for e in events)
        self.events.value = (f"<b>events of {html.escape(uid)}</b> (%xnb events {html.escape(uid)} in a cell)"
                             f"<table class='xnb-events-table'><tr><th>time</th><th>event</th><th>message</th></tr>"
                             f"{rows}</table>")
