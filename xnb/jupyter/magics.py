"""The ``%xnb`` / ``%%xnb`` magics (``%load_ext xnb``, then ``%xnb help``).

They use :func:`xnb.connect` underneath (the cluster the Jupyter server
extension runs, or one on this machine, or an embedded one) and keep, per
kernel, a default model and one chat conversation per model.  Prompts may use
``{name}`` to insert Python variables (``{{`` for a literal brace).
"""

from __future__ import annotations

import argparse
import re
import shlex
import time
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from xnb.client import DEFAULT_MAX_TOKENS
from xnb.errors import XnbError
from xnb.jupyter.display import Report, Table, code
from xnb.jupyter.media_magics import EXAMPLES, MEDIA_HELP, media_commands
from xnb.protocol import ModelStatus, launch_option_specs, parse_pairs
from xnb.runtime.registry import progress_line

__all__ = ["HELP", "XnbMagics", "interpolate", "launch_parser", "load_ipython_extension"]

HELP = """\
%xnb — xnb models from this notebook

  %xnb launch NAME [--engine E] [--format F] [--size S] [-q QUANT] [--uid UID] [--replicas N] [--no-wait]
                   [--keep-alive S] [--max-queue N] [--gpus N] ... (every flag of `xnb launch`)
  %xnb list                        running models
  %xnb events UID                  what happened to a model (launch steps, failures)
  %xnb terminate UID
  %xnb catalog [TEXT] [--ability A] [--format F]
  %xnb status                      cluster, workers, models, API address
  %xnb use UID                     the default model of chat / complete / embed
  %xnb embed [--model UID] VAR     embeddings of a string or list of strings (a numpy array)
  %xnb reset [UID]                 forget the chat conversation
  %xnb panel                       the widget panel
  %xnb help

  %%xnb chat [UID] [--system TEXT] [--max-tokens N (512)] [--temperature T] [--out VAR]
  PROMPT (the cell; {var} inserts a Python variable, {{ a literal brace})
      streams the answer and keeps the conversation (per model) until %xnb reset

  %%xnb complete [UID] [--max-tokens N (512)] [--temperature T] [--out VAR]
  TEXT TO CONTINUE

Without UID, chat/complete/embed use the model set by %xnb use or the last %xnb launch,
or the only running model that can do it.  Interrupting the kernel stops an answer
(the model keeps running).  Unknown or misspelled options are errors.
""" + MEDIA_HELP

_VAR = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")


def interpolate(text: str, namespace: dict[str, Any]) -> str:
    """Replace ``{name}`` / ``{obj.attr}`` with values from ``namespace``.

    ``{{`` and ``}}`` are literal braces; other braces (JSON, code) are kept as
    they are.  An unknown name is an error that names it.
    """

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        head, *attrs = match.group(1).split(".")
        if head not in namespace:
            raise UsageError(f"{{{match.group(1)}}} in the prompt: no variable {head!r} in this notebook "
                             "(write {{ and }} for literal braces)")
        value = namespace[head]
        for attr in attrs:
            value = getattr(value, attr)
        return str(value)

    return _VAR.sub(replace, text)


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as IPython UsageErrors instead of exiting."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}  (%xnb help shows the usage)")


def _parser(name: str) -> _Parser:
    # allow_abbrev=False: "--replica 2" is an error, not a silent "--replicas 2".
    return _Parser(prog=f"%xnb {name}", add_help=False, allow_abbrev=False)


def launch_parser() -> _Parser:
    """``%xnb launch NAME``: an option per :class:`xnb.protocol.LaunchOptions` field,
    spelled as ``xnb launch`` spells it, plus ``--no-wait``."""
    p = _parser("launch")
    p.add_argument("name")
    for spec in launch_option_specs():
        if spec.mapping or spec.multiple:
            p.add_argument(*spec.flags, dest=spec.name, action="append",
                           type=None if spec.mapping else spec.type, help=spec.help)
        else:
            p.add_argument(*spec.flags, dest=spec.name, type=spec.type, choices=spec.choices, help=spec.help)
    p.add_argument("--no-wait", action="store_true")
    return p


def _generation_parser(name: str) -> _Parser:
    p = _parser(name)
    p.add_argument("uid", nargs="?")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--out", default=None, help="store the answer in this variable")
    return p


@magics_class
class XnbMagics(Magics):
    """``%xnb`` line magics and ``%%xnb chat|complete`` cell magics."""

    def __init__(self, shell: Any, client: Any = None) -> None:
        super().__init__(shell)
        self._client = client
        self.current: str | None = None
        self.conversations: dict[str, list[dict[str, str]]] = {}

    # -- plumbing ------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            import xnb

            self._client = xnb.connect()
            if self._client.cluster is not None:
                print(f"xnb: no cluster was running; started one in this kernel at {self._client.scheduler_address}")
        return self._client

    @line_cell_magic
    def xnb(self, line: str, cell: str | None = None) -> Any:
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%xnb: {exc}") from None
        if not argv:
            print(HELP)
            return None
        command, args = argv[0], argv[1:]
        commands: dict[str, Callable[[list[str], str | None], Any]] = {
            "help": lambda a, c: print(HELP),
            "launch": self._launch, "list": self._list, "terminate": self._terminate, "events": self._events,
            "catalog": self._catalog, "status": self._status, "use": self._use,
            "embed": self._embed, "reset": self._reset, "panel": self._panel,
            "chat": self._chat, "complete": self._complete,
            **media_commands(self),
        }
        if command not in commands:
            raise UsageError(f"%xnb: unknown command {command!r}; %xnb help lists them")
        try:
            return commands[command](args, cell)
        except XnbError as exc:  # one line, with the next step as a %xnb command
            raise UsageError(exc.render("notebook")) from None

    def _namespace(self) -> dict[str, Any]:
        return self.shell.user_ns if self.shell is not None else {}

    def _pick(self, uid: str | None, ability: str) -> str:
        """The model to use: named, else the default, else the only one that can do ``ability``."""
        if uid:
            return uid
        running = [m for m in self.client.list() if ModelStatus(m["status"]).serving
                   and ability in m["spec"]["abilities"]]
        uids = [m["uid"] for m in running]
        if self.current in uids:
            return self.current  # type: ignore[return-value]
        if len(uids) == 1:
            return uids[0]
        if not uids:
            example = EXAMPLES.get(ability) or ("all-minilm-l6-v2" if ability == "embed" else "smollm2-135m-instruct")
            raise UsageError(f"no running model can {ability}; launch one first: %xnb launch {example}")
        raise UsageError(f"several models can {ability} ({', '.join(uids)}); name one, or pick a default "
                         "with %xnb use UID")

    # -- commands ------------------------------------------------------------------------

    def _launch(self, args: list[str], cell: str | None) -> Any:
        ns = launch_parser().parse_args(args)
        line = _LiveLine(self.shell)

        def progress(record: dict[str, Any]) -> None:
            line.show(progress_line(record))

        options = {spec.name: getattr(ns, spec.name) for spec in launch_option_specs()}
        for spec in launch_option_specs():
            if spec.mapping and options[spec.name] is not None:
                options[spec.name] = parse_pairs(options[spec.name], spec.flags[0])
        try:
            model = self.client.launch(ns.name, wait=not ns.no_wait, on_progress=progress,
                                       **{k: v for k, v in options.items() if v is not None})
        except BaseException:
            line.done()
            raise
        self.current = model.uid
        if not ns.no_wait:  # the progress line becomes the result
            abilities = model.record["spec"]["abilities"]
            hints = {"chat": "%%xnb chat", "embed": "%xnb embed VAR", "transcribe": "%xnb transcribe FILE",
                     "speech": "%xnb speak TEXT", "rerank": "%xnb rerank --docs VAR QUERY",
                     "image": "%xnb image PROMPT"}
            hint = next((hints[a] for a in abilities if a in hints), "%%xnb complete")
            line.show(f"{model.uid} is ready on {', '.join(_short(a) for a in model.record['workers'])}; try {hint}")
        line.done()
        return model

    def _list(self, args: list[str], cell: str | None) -> Table:
        _parser("list").parse_args(args)
        rows = [[m["uid"], m["model_name"], m["status"], m["spec"]["engine"],
                 f"{m['replicas_ready']}/{len(m['replicas'])}", code(", ".join(_short(a) for a in m["workers"])),
                 m.get("last_error") or ""]
                for m in self.client.list()]
        notes = []
        if any(ModelStatus(r[2]).failed for r in rows):
            notes.append("%xnb events UID shows what happened; %xnb terminate UID removes a failed model")
        return Table(["UID", "MODEL", "STATUS", "ENGINE", "READY", "WORKERS", "PROBLEM"], rows, notes=notes,
                     empty="no models running; %xnb launch NAME starts one (%xnb catalog lists them)")

    def _events(self, args: list[str], cell: str | None) -> Table:
        p = _parser("events")
        p.add_argument("uid")
        uid = p.parse_args(args).uid
        rows = [[time.strftime("%H:%M:%S", time.localtime(e["time"])), e["kind"], e["message"]]
                for e in self.client.get(uid).events()]
        return Table(["TIME", "EVENT", "MESSAGE"], rows, title=f"events of {uid}", empty="no events yet")

    def _terminate(self, args: list[str], cell: str | None) -> None:
        p = _parser("terminate")
        p.add_argument("uid")
        uid = p.parse_args(args).uid
        result = self.client.terminate(uid)
        self.conversations.pop(uid, None)
        if self.current == uid:
            self.current = None
        print(f"{uid}: {result['status']}")

    def _catalog(self, args: list[str], cell: str | None) -> Table:
        p = _parser("catalog")
        p.add_argument("text", nargs="?")
        p.add_argument("--ability")
        p.add_argument("--format")
        ns = p.parse_args(args)
        filters = {k: v for k, v in (("ability", ns.ability), ("format", ns.format)) if v}
        from xnb.jupyter.offline import offline_labels

        found = self.client.catalog(ns.text, **filters)
        offline = offline_labels(self.client, found)
        rows = [[f["name"], ", ".join(f["abilities"]), ", ".join(f["formats"]), ", ".join(f["sizes"]),
                 offline[f["name"]]] for f in found]
        return Table(["NAME", "ABILITIES", "FORMATS", "SIZES", "OFFLINE"], rows, empty="no catalog entry matches",
                     notes=["OFFLINE: packaged = ships in a Python package, cached = downloaded on a worker"])

    def _status(self, args: list[str], cell: str | None) -> Report:
        from xnb.jupyter import api_url, jupyter_api_url

        _parser("status").parse_args(args)
        info = self.client.cluster_info()
        facts: list[tuple[str, Any]] = [("scheduler", code(info["scheduler"]))]
        proxied = jupyter_api_url()
        if proxied:
            facts.append(("OpenAI API (browser, JupyterHub; your Jupyter token)", code(proxied)))
        facts.append(("OpenAI API (this machine)", code(f"{api_url()}/v1")))
        facts.append(("models", f"{info['models']}   (default model: {self.current or '-'})"))
        rows = [[w["name"], code(_short(w["address"])), w["status"], w["nthreads"],
                 _gb(w["memory_used"]) + " / " + _gb(w["memory_limit"]), w["gpus"],
                 ", ".join(f"{m['uid']}#{m['replica']}" for m in w["models"]) or "-"]
                for w in info["workers"]]
        return Report(facts, [Table(["WORKER", "ADDRESS", "STATUS", "CORES", "MEMORY", "GPUS", "MODELS"], rows)])

    def _use(self, args: list[str], cell: str | None) -> None:
        p = _parser("use")
        p.add_argument("uid")
        uid = p.parse_args(args).uid
        self.client.get(uid)  # 404 for an unknown uid
        self.current = uid
        print(f"default model: {uid}")

    def _embed(self, args: list[str], cell: str | None) -> Any:
        p = _parser("embed")
        p.add_argument("--model")
        p.add_argument("text", nargs="+")
        ns = p.parse_args(args)
        ns_user = self._namespace()
        first = ns.text[0]
        if len(ns.text) == 1 and first.split(".")[0] in ns_user:
            value = interpolate("{" + first + "}", ns_user) if "." in first else ns_user[first]
        else:
            value = interpolate(" ".join(ns.text), ns_user)
        if isinstance(value, str):
            texts: Any = value
        else:
            texts = [str(t) for t in value]
        return self.client.get(self._pick(ns.model, "embed")).embed(texts)

    def _reset(self, args: list[str], cell: str | None) -> None:
        if args:
            self.conversations.pop(args[0], None)
        else:
            self.conversations.clear()
        print("conversation cleared")

    def _panel(self, args: list[str], cell: str | None) -> Any:
        from xnb.jupyter.widgets import Panel

        return Panel(self.client)

    def _chat(self, args: list[str], cell: str | None) -> None:
        if cell is None:
            raise UsageError("chat is a cell magic: %%xnb chat [UID] on the first line, the prompt below")
        p = _generation_parser("chat")
        p.add_argument("--system")
        ns = p.parse_args(args)
        uid = self._pick(ns.uid, "chat")
        prompt = interpolate(cell.strip(), self._namespace())
        if not prompt:
            raise UsageError("the prompt (the cell below %%xnb chat) is empty")
        history = self.conversations.setdefault(uid, [])
        if ns.system is not None:
            history[:] = [m for m in history if m["role"] != "system"]
            history.insert(0, {"role": "system", "content": interpolate(ns.system, self._namespace())})
        messages = [*history, {"role": "user", "content": prompt}]
        answer = self._stream(uid, "chat", messages, ns)
        if answer is not None:  # an interrupted exchange is not kept
            history[:] = [*messages, {"role": "assistant", "content": answer}]

    def _complete(self, args: list[str], cell: str | None) -> None:
        if cell is None:
            raise UsageError("complete is a cell magic: %%xnb complete [UID] on the first line, the text below")
        ns = _generation_parser("complete").parse_args(args)
        uid = self._pick(ns.uid, "generate")
        self._stream(uid, "complete", interpolate(cell.rstrip("\n"), self._namespace()), ns)

    def _stream(self, uid: str, kind: str, payload: Any, ns: argparse.Namespace) -> str | None:
        """Print the answer as it arrives; return it (and store it with --out).  Ctrl-C
        (interrupt) stops it with one line and returns None; the model keeps running."""
        params = {k: v for k, v in (("max_tokens", ns.max_tokens), ("temperature", ns.temperature)) if v is not None}
        model = self.client.get(uid)
        chunks = model.chat(payload, stream=True, **params) if kind == "chat" else \
            model.complete(payload, stream=True, **params)
        parts: list[str] = []
        started = time.monotonic()
        try:
            for chunk in chunks:
                for choice in chunk.get("choices") or []:
                    text = choice["delta"].get("content") if kind == "chat" else choice.get("text")
                    if text:
                        parts.append(text)
                        print(text, end="", flush=True)
        except KeyboardInterrupt:
            chunks.close()  # aborts the generation; the model stays up for the next request
            print(f"\n[interrupted after {len(parts)} pieces; the model {uid} keeps running]", flush=True)
            return None
        print(flush=True)
        answer = "".join(parts)
        if ns.out:
            self.shell.user_ns[ns.out] = answer
        self.shell.user_ns["_xnb_last"] = {"uid": uid, "text": answer, "seconds": time.monotonic() - started}
        return answer


def _gb(n: Any) -> str:
    return f"{(n or 0) / 2**30:.1f} GiB"


def _short(address: str) -> str:
    return address.replace("tcp://", "").replace("tls://", "")


class _LiveLine:
    """One line of text that updates in place: a display that is updated in a notebook,
    a carriage return in a terminal."""

    def __init__(self, shell: Any) -> None:
        self.in_kernel = getattr(shell, "kernel", None) is not None
        self.handle: Any = None
        self.text = ""

    def show(self, text: str) -> None:
        if text == self.text:
            return
        self.text = text
        if self.in_kernel:
            from IPython.display import display

            if self.handle is None:
                self.handle = display({"text/plain": text}, raw=True, display_id=True)
            else:
                self.handle.update({"text/plain": text}, raw=True)
        else:
            print(f"\r{text}\x1b[K", end="", flush=True)

    def done(self) -> None:
        if not self.in_kernel and self.text:
            print(flush=True)
        self.handle, self.text = None, ""


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics (``%load_ext xnb``)."""
    ipython.register_magics(XnbMagics(ipython))
