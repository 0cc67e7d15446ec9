"""The parts of the xnb panel (:mod:`xnb.jupyter.widgets`): catalog browser, launch
form, running models, cluster view and chat box.

Each part is an ipywidgets box holding a reference to its panel; anything that
talks to the cluster for long (launch, chat) runs through
:meth:`Panel.background <xnb.jupyter.widgets.Panel.background>`.
"""

from __future__ import annotations

import html
import time
from typing import Any

import ipywidgets as w
from IPython.display import Javascript

from xnb.client import DEFAULT_MAX_TOKENS
from xnb.errors import InvalidRequest, LaunchFailed, XnbError
from xnb.jupyter.models_view import ModelsView
from xnb.runtime.registry import progress_line
from xnb.protocol import ModelStatus, ReplicaStatus, launch_option_specs, parse_pairs

__all__ = ["CatalogView", "ChatBox", "ClusterView", "LaunchForm", "ModelsView", "launch_progress"]

DEFAULT_MODEL = "smollm2-135m-instruct"  # preselected in the launch form: it needs no download


def _engines(client: Any, name: str) -> list[dict[str, Any]]:
    return client.engines(name)


def _short(address: str) -> str:
    return address.replace("tcp://", "").replace("tls://", "")


def _gib(n: Any) -> str:
    return f"{(n or 0) / 2**30:.1f} GiB"


def _placed(models: list[dict[str, Any]]) -> str:
    return ", ".join(f"{m['uid']}#{m['replica']} ({m['status']})" for m in models) or "-"


def _options(values: set[str] | list[str], any_label: str = "any") -> list[tuple[str, str]]:
    return [(any_label, "")] + [(v, v) for v in sorted(values)]


def _set_options(widget: Any, options: list[Any], prefer: Any = None) -> None:
    """Replace a selection widget's options, keeping its value if still offered, else
    ``prefer`` if offered, else the first option (ipywidgets would leave it empty)."""
    current = widget.value
    widget.options = options
    values = [o[1] if isinstance(o, tuple) else o for o in options]
    for candidate in (current, prefer):
        if candidate is not None and candidate in values:
            widget.value = candidate
            return
    if values:
        widget.value = values[0]


def launch_progress(record: dict[str, Any]) -> tuple[float, str]:
    """A model record's launch progress as ``(fraction 0..1, text)``: download → load → ready,
    the text being :func:`~xnb.runtime.registry.progress_line` (phases, elapsed time, bytes)."""
    fractions = []
    for r in record.get("replicas", []):
        status, p = ReplicaStatus(r["status"]), r.get("progress") or {}
        if status.serving:
            fractions.append(1.0)
        elif status is ReplicaStatus.LOADING:
            fractions.append(0.75)
        elif status is ReplicaStatus.DOWNLOADING:
            done = p.get("downloaded", 0) / p["total"] if p.get("total") else 0.0
            fractions.append(0.05 + 0.6 * min(done, 1.0))
        else:
            fractions.append(0.02 if status.launching else 0.0)
    fraction = sum(fractions) / len(fractions) if fractions else 0.0
    return fraction, progress_line(record)


class CatalogView(w.VBox):
    """Browse the catalog; filter by text, ability, format and size; see which engines serve it."""

    def __init__(self, panel: Any) -> None:
        self.panel = panel
        self.rows: list[dict[str, Any]] = []
        self.offline: dict[str, str] = {}
        self.text = w.Text(placeholder="name or description", description="Search")
        self.ability = w.Dropdown(options=_options([]), description="Ability")
        self.format = w.Dropdown(options=_options([]), description="Format")
        self.size = w.Dropdown(options=_options([]), description="Size")
        self.count = w.HTML()
        self.list = w.Select(options=[], rows=10, layout=w.Layout(width="100%"))
        self.list.add_class("xnb-catalog-list")
        self.details = w.HTML()
        self.use = w.Button(description="Launch this…", disabled=True)
        for widget in (self.text, self.ability, self.format, self.size):
            widget.observe(lambda _: self.apply_filter(), names="value")
        self.list.observe(self._selected, names="value")
        self.use.on_click(self._use)
        super().__init__([w.HBox([self.text, self.ability]), w.HBox([self.format, self.size, self.count]),
                          self.list, self.details, self.use])
        self.add_class("xnb-catalog")

    def set_rows(self, rows: list[dict[str, Any]], offline: dict[str, str] | None = None) -> None:
        self.rows = rows
        self.offline = offline or {}
        _set_options(self.ability, _options({a for r in rows for a in r["abilities"]}))
        _set_options(self.format, _options({f for r in rows for f in r["formats"]}))
        _set_options(self.size, _options({s for r in rows for s in r["sizes"]}))
        self.apply_filter()

    def filtered(self) -> list[dict[str, Any]]:
        text = self.text.value.strip().lower()
        return [r for r in self.rows
                if (not text or text in (r["name"] + " " + r["description"]).lower())
                and (not self.ability.value or self.ability.value in r["abilities"])
                and (not self.format.value or self.format.value in r["formats"])
                and (not self.size.value or self.size.value in r["sizes"])]

    def apply_filter(self) -> None:
        rows = self.filtered()
        self.list.options = [(f"{r['name']}  ·  {', '.join(r['abilities'])}  ·  {', '.join(r['sizes'])}"
                              + (f"  ·  {self.offline[r['name']]}" if self.offline.get(r["name"]) else ""), r["name"])
                             for r in rows]
        self.count.value = f"{len(rows)} of {len(self.rows)} models"

    def _selected(self, change: dict[str, Any]) -> None:
        name = change["new"]
        self.use.disabled = not name
        if name:
            self.panel.background(self.show, name)

    def show(self, name: str) -> None:
        row = next(r for r in self.rows if r["name"] == name)
        engines = _engines(self.panel.client, name)
        lines = "".join(
            f"<tr><td>{html.escape(e['engine'])}</td><td>{e['format']}</td><td>{e['size']}</td>"
            f"<td>{', '.join(e['quantizations'])}</td><td>{'yes' if e['requires_gpu'] else 'no'}</td></tr>"
            for e in engines)
        offline = {"packaged": "yes — ships in a Python package", "cached": "yes — downloaded on a worker"}.get(
            self.offline.get(name, ""), "no — downloads from the model hub")
        self.details.value = (
            f"<b>{html.escape(name)}</b>: {html.escape(row['description'])}<br>"
            f"context {row['context_length']} · formats {', '.join(row['formats'])} · "
            f"quantizations {', '.join(row['quantizations']) or '-'} · sizes {', '.join(row['sizes'])}<br>"
            f"available offline: {offline}"
            "<table class='xnb-engines'><tr><th>engine</th><th>format</th><th>size</th>"
            f"<th>quantizations</th><th>GPU</th></tr>{lines}</table>")

    def _use(self, _: Any) -> None:
        if self.list.value:
            self.panel.launch_form.model.value = self.list.value
            self.panel.tabs.selected_index = 1


#: LaunchOptions fields the form shows as their own widgets; the rest are "More options".
_FORM_FIELDS = ("engine", "size", "quantization", "uid", "replicas")


def form_options(texts: dict[str, str]) -> dict[str, Any]:
    """The "More options" texts as LaunchOptions fields: lists split on commas or spaces,
    engine options as KEY=VALUE pairs, numbers as numbers; empty ones left out."""
    out: dict[str, Any] = {}
    for spec in launch_option_specs():
        text = texts.get(spec.name, "").strip()
        if not text:
            continue
        try:
            if spec.mapping:
                out[spec.name] = parse_pairs(text.split(), spec.name)
            elif spec.multiple:
                out[spec.name] = [spec.type(x) for x in text.replace(",", " ").split()]
            else:
                out[spec.name] = spec.type(text)
        except ValueError:
            raise InvalidRequest(f"{spec.name}: {text!r} is not a valid {spec.type.__name__}",
                                 param=spec.name) from None
    return out


class LaunchForm(w.VBox):
    """Launch a model; a progress bar follows download → load → ready."""

    def __init__(self, panel: Any) -> None:
        self.panel = panel
        self.sizes: dict[str, list[str]] = {}
        self.model = w.Dropdown(options=[], description="Model")
        self.engine = w.Dropdown(options=_options([], "auto"), description="Engine")
        self.size = w.Dropdown(options=_options([], "auto"), description="Size")
        self.quantization = w.Text(description="Quant.", placeholder="default")
        self.uid = w.Text(description="UID", placeholder="the model's name")
        self.replicas = w.BoundedIntText(value=1, min=1, max=64, description="Replicas")
        # Every other LaunchOptions field, derived from the model (as `xnb launch`'s flags are).
        self.more = {
            spec.name: w.Text(description=spec.flags[0].lstrip("-"), tooltip=spec.help,
                              placeholder="" if spec.default is None else str(spec.default))
            for spec in launch_option_specs() if spec.name not in _FORM_FIELDS
        }
        more = w.Accordion(children=[w.VBox(list(self.more.values()))])
        more.set_title(0, "More options")
        self.button = w.Button(description="Launch", button_style="primary", icon="rocket")
        self.button.add_class("xnb-launch")
        self.progress = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="60%"))
        self.message = w.HTML()
        self.model.observe(self._model_changed, names="value")
        self.button.on_click(lambda _: self.panel.background(self.launch))
        super().__init__([self.model, w.HBox([self.engine, self.size]), w.HBox([self.quantization, self.uid]),
                          self.replicas, more, w.HBox([self.button, self.progress]), self.message])
        self.add_class("xnb-launch-form")

    def set_catalog(self, rows: list[dict[str, Any]], offline: dict[str, str] | None = None) -> None:
        self.sizes = {r["name"]: list(dict.fromkeys(r["sizes"])) for r in rows}
        offline = offline or {}
        _set_options(self.model, [(f"{n}  ({offline[n]})" if offline.get(n) else n, n) for n in sorted(self.sizes)],
                     prefer=DEFAULT_MODEL)

    def _model_changed(self, change: dict[str, Any]) -> None:
        name = change["new"]
        _set_options(self.size, _options(self.sizes.get(name, []), "auto"))
        if name:
            self.panel.background(self._load_engines, name)

    def _load_engines(self, name: str) -> None:
        engines = sorted({e["engine"] for e in _engines(self.panel.client, name)})
        if self.model.value == name:
            _set_options(self.engine, _options(engines, "auto"))

    def launch(self) -> Any:
        """Launch what the form says and follow it to ready (runs in a background thread)."""
        options = {"engine": self.engine.value or None, "size": self.size.value or None,
                   "quantization": self.quantization.value.strip() or None, "uid": self.uid.value.strip() or None,
                   "replicas": self.replicas.value}
        options.update(form_options({name: box.value for name, box in self.more.items()}))
        self.button.disabled = True
        self.progress.bar_style = "info"
        self.progress.value = 0.0
        self.message.value = f"launching {html.escape(str(self.model.value))}…"
        model = None
        try:
            model = self.panel.client.launch(self.model.value, wait=False,
                                             **{k: v for k, v in options.items() if v is not None})
            self.show_progress(model.record)
            self.panel.background(self.panel.refresh)
            model.wait(on_progress=self.show_progress)
        except XnbError as exc:  # stays in the form (and the header) until the next launch
            self.progress.bar_style = "danger"
            where = " The Models tab lists it with Retry and Dismiss." if isinstance(exc, LaunchFailed) else ""
            self.message.value = (f"<span style='color:#b00020'>{html.escape(exc.render('notebook'))}</span>"
                                  f"{html.escape(where)}")
            self.panel.set_status(exc.render("notebook"), error=True)
            return None
        except Exception:
            self.progress.bar_style = "danger"
            raise
        finally:
            self.button.disabled = False
            self.panel.refresh()
        # Only now: when the form says ready, the models table says so too.
        self.progress.bar_style = "success"
        self.message.value = f"<b>{html.escape(model.uid)}</b> is ready"
        self.panel.set_status(f"{model.uid} is ready")
        return model

    def show_progress(self, record: dict[str, Any]) -> None:
        fraction, text = launch_progress(record)
        self.progress.value = fraction
        self.message.value = html.escape(text)


class ClusterView(w.VBox):
    """Workers with their cores, memory, GPUs and the models each one holds."""

    def __init__(self, panel: Any) -> None:
        self.panel = panel
        self.summary = w.HTML()
        self.table = w.HTML()
        super().__init__([self.summary, self.table])
        self.add_class("xnb-cluster")

    def update(self, info: dict[str, Any]) -> None:
        workers = info["workers"]
        self.summary.value = (
            f"scheduler <code>{html.escape(info['scheduler'])}</code> · {len(workers)} worker(s) · "
            f"{sum(x['nthreads'] for x in workers)} cores · {_gib(sum(x['memory_limit'] or 0 for x in workers))} · "
            f"{sum(x['gpus'] for x in workers)} GPU(s) · {info['models']} model(s)")
        rows = "".join(
            f"<tr><td>{html.escape(x['name'])}</td><td>{html.escape(_short(x['address']))}</td><td>{x['status']}</td>"
            f"<td>{x['nthreads']}</td><td>{_gib(x['memory_used'])} / {_gib(x['memory_limit'])}</td>"
            f"<td>{x['gpus']}</td><td>{html.escape(_placed(x['models']))}</td></tr>"
            for x in workers)
        self.table.value = ("<table class='xnb-workers'><tr><th>worker</th><th>address</th><th>status</th>"
                            f"<th>cores</th><th>memory</th><th>GPUs</th><th>models</th></tr>{rows}</table>")


#: Ctrl/Shift/Cmd+Enter in the chat box sends (a capture listener, so neither the textarea nor
#: JupyterLab's Shift+Enter "run cell" sees it); installed once per page.
SEND_KEYS_JS = """
if (!window.__xnbChatKeys) {
  window.__xnbChatKeys = true;
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.shiftKey || event.metaKey)) return;
    const box = event.target instanceof HTMLTextAreaElement ? event.target.closest(".xnb-chat") : null;
    if (!box) return;
    event.preventDefault();
    event.stopPropagation();
    event.target.dispatchEvent(new Event("change", {bubbles: true}));  // sync the typed text first
    const send = box.querySelector(".xnb-send");
    if (send && !send.disabled) send.click();
  }, true);
}
"""


class ChatBox(w.VBox):
    """Chat with a running model; the answer streams in as it is generated."""

    def __init__(self, panel: Any) -> None:
        self.panel = panel
        self.histories: dict[str, list[dict[str, str]]] = {}
        self.model = w.Dropdown(options=[], description="Model")
        self.system = w.Text(description="System", placeholder="optional system prompt", layout=w.Layout(width="45%"))
        self.max_tokens = w.BoundedIntText(value=DEFAULT_MAX_TOKENS, min=1, max=32768, description="Max tokens",
                                           layout=w.Layout(width="180px"))
        self.transcript = w.HTML(layout=w.Layout(max_height="320px", overflow="auto", border="1px solid #ddd",
                                                 padding="4px"))
        self.transcript.add_class("xnb-transcript")
        self.input = w.Textarea(placeholder="Ask something…  (Ctrl+Enter or Shift+Enter sends; Enter: new line)",
                                layout=w.Layout(width="80%", height="60px"))
        self.input.add_class("xnb-input")
        # ipywidgets has no key events: a small script (run once per page) makes Ctrl/Shift/Cmd+Enter
        # in this box click Send.  An Output widget's outputs are trusted, so JupyterLab runs it.
        self.send_keys = w.Output(layout=w.Layout(height="0px", overflow="hidden"))
        self.send_keys.append_display_data(Javascript(SEND_KEYS_JS))
        self.send = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.send.add_class("xnb-send")
        self.clear = w.Button(description="Clear")
        self.send.on_click(lambda _: self.panel.background(self.ask, self.input.value))
        self.clear.on_click(lambda _: self.reset())
        super().__init__([w.HBox([self.model, self.system, self.max_tokens]), self.transcript,
                          w.HBox([self.input, w.VBox([self.send, self.clear])]), self.send_keys])
        self.add_class("xnb-chat")

    def update_models(self, records: list[dict[str, Any]]) -> None:
        uids = [r["uid"] for r in records if ModelStatus(r["status"]).serving and "chat" in r["spec"]["abilities"]]
        if list(self.model.options) != uids:
            _set_options(self.model, uids)

    def reset(self) -> None:
        self.histories.pop(self.model.value, None)
        self.transcript.value = ""

    def _render(self, messages: list[dict[str, str]]) -> None:
        colors = {"user": "#1565c0", "assistant": "#2e7d32", "system": "#777"}
        self.transcript.value = "".join(
            f"<div style='margin:2px 0'><b style='color:{colors.get(m['role'], '#000')}'>{m['role']}</b> "
            f"<span style='white-space:pre-wrap'>{html.escape(m['content'])}</span></div>" for m in messages)

    def ask(self, prompt: str) -> str:
        """Send ``prompt`` to the selected model and stream the answer (runs in a background thread)."""
        uid = self.model.value
        prompt = prompt.strip()
        if not uid or not prompt:
            self.panel.set_status("choose a running chat model and type a prompt", error=True)
            return ""
        history = self.histories.setdefault(uid, [])
        system = self.system.value.strip()
        history[:] = [m for m in history if m["role"] != "system"]
        if system:
            history.insert(0, {"role": "system", "content": system})
        messages = [*history, {"role": "user", "content": prompt}]
        self.input.value = ""
        self.send.disabled = True
        answer = {"role": "assistant", "content": ""}
        try:
            shown = 0.0
            for chunk in self.panel.client.get(uid).chat(messages, stream=True, max_tokens=self.max_tokens.value):
                for choice in chunk.get("choices") or []:
                    answer["content"] += choice["delta"].get("content") or ""
                if time.monotonic() - shown > 0.1:  # at most ~10 widget updates a second
                    self._render([*messages, answer])
                    shown = time.monotonic()
            history[:] = [*messages, answer]
            self._render(history)
            return answer["content"]
        finally:
            self.send.disabled = False
