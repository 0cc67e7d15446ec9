"""``%xnb transcribe``, ``%xnb speak``, ``%xnb rerank`` and ``%xnb image``.

Each picks its model like ``%%xnb chat`` does (``--model UID``, else the
default model, else the only running model that can do it), prints or shows
its result, and stores it with ``--out VAR``.  Text arguments may use
``{var}`` to insert Python variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from IPython.core.error import UsageError

if TYPE_CHECKING:
    from xnb.jupyter.magics import XnbMagics

__all__ = ["MEDIA_HELP", "media_commands"]

MEDIA_HELP = """
  %xnb transcribe [--model UID] [--language L] [--format text|json|srt|vtt|verbose_json] [--out VAR] FILE
                                   speech to text of an audio file (or a bytes variable)
  %xnb speak [--model UID] [--voice V] [--speed S] [--save FILE] [--out VAR] TEXT
                                   text to speech; plays it here
  %xnb rerank [--model UID] [--top N] [--out VAR] --docs VAR QUERY
                                   rank the strings in VAR by relevance to QUERY
  %xnb image [--model UID] [--size WxH] [--seed N] [--steps N] [--out VAR] PROMPT
                                   text to image; shows it here
"""

#: What ``%xnb launch`` suggests per ability, and ``_pick`` names when nothing runs.
EXAMPLES = {"transcribe": "whisper", "speech": "piper-en-us-joe", "rerank": "all-minilm-l6-v2",
            "image": "sd-turbo"}


def media_commands(magics: "XnbMagics") -> dict[str, Callable[[list[str], str | None], Any]]:
    """The commands this module adds to ``%xnb``."""
    return {
        "transcribe": lambda a, c: transcribe(magics, a),
        "speak": lambda a, c: speak(magics, a),
        "rerank": lambda a, c: rerank(magics, a),
        "image": lambda a, c: image(magics, a),
    }


def _store(magics: "XnbMagics", var: str | None, value: Any) -> None:
    if var:
        magics.shell.user_ns[var] = value


def _text(magics: "XnbMagics", words: list[str], what: str) -> str:
    from xnb.jupyter.magics import interpolate

    text = interpolate(" ".join(words), magics._namespace()).strip()
    if not text:
        raise UsageError(f"{what} is empty")
    return text


def transcribe(magics: "XnbMagics", args: list[str]) -> None:
    from xnb.jupyter.magics import _parser

    p = _parser("transcribe")
    p.add_argument("--model")
    p.add_argument("--language")
    p.add_argument("--format", default="text")
    p.add_argument("--out")
    p.add_argument("file")
    ns = p.parse_args(args)
    value = magics._namespace().get(ns.file)
    if isinstance(value, (bytes, bytearray)):
        audio: Any = bytes(value)
    else:
        path = Path(ns.file).expanduser()
        if not path.is_file():
            raise UsageError(f"no audio file {ns.file!r} (and no bytes variable of that name)")
        audio = path
    params = {"language": ns.language} if ns.language else {}
    model = magics.client.get(magics._pick(ns.model, "transcribe"))
    result = model.transcribe(audio, response_format=ns.format, **params)
    print(result if isinstance(result, str) else result.get("text", result))
    _store(magics, ns.out, result)


def speak(magics: "XnbMagics", args: list[str]) -> None:
    from IPython.display import Audio, display

    from xnb.jupyter.magics import _parser

    p = _parser("speak")
    p.add_argument("--model")
    p.add_argument("--voice")
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--save")
    p.add_argument("--out")
    p.add_argument("text", nargs="+")
    ns = p.parse_args(args)
    text = _text(magics, ns.text, "the text to speak")
    model = magics.client.get(magics._pick(ns.model, "speech"))
    audio = model.speak(text, voice=ns.voice, speed=ns.speed, display=False)
    if ns.save:
        Path(ns.save).expanduser().write_bytes(audio)
        print(f"saved {len(audio)} bytes of WAV to {ns.save}")
    _store(magics, ns.out, audio)
    display(Audio(data=audio, autoplay=True))


def rerank(magics: "XnbMagics", args: list[str]) -> None:
    from IPython.display import display

    from xnb.jupyter.display import Table
    from xnb.jupyter.magics import _parser

    p = _parser("rerank")
    p.add_argument("--model")
    p.add_argument("--docs", required=True, help="a variable holding a list of strings")
    p.add_argument("--top", type=int)
    p.add_argument("--out")
    p.add_argument("query", nargs="+")
    ns = p.parse_args(args)
    namespace = magics._namespace()
    if ns.docs not in namespace:
        raise UsageError(f"--docs {ns.docs}: no variable {ns.docs!r} in this notebook")
    docs = namespace[ns.docs]
    if isinstance(docs, str) or not docs:
        raise UsageError(f"--docs {ns.docs} must be a non-empty list of strings")
    query = _text(magics, ns.query, "the query")
    model = magics.client.get(magics._pick(ns.model, "rerank"))
    results = model.rerank(query, [str(d) for d in docs], top_n=ns.top)
    display(Table(["RANK", "SCORE", "INDEX", "DOCUMENT"],
                  [[i + 1, f"{r['relevance_score']:.4f}", r["index"], _short(r["document"]["text"])]
                   for i, r in enumerate(results)]))
    _store(magics, ns.out, results)


def image(magics: "XnbMagics", args: list[str]) -> None:
    from IPython.display import display

    from xnb.jupyter.magics import _parser

    p = _parser("image")
    p.add_argument("--model")
    p.add_argument("--size")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--out")
    p.add_argument("prompt", nargs="+")
    ns = p.parse_args(args)
    prompt = _text(magics, ns.prompt, "the prompt")
    params = {k: v for k, v in (("seed", ns.seed), ("steps", ns.steps)) if v is not None}
    model = magics.client.get(magics._pick(ns.model, "image"))
    picture = model.image(prompt, size=ns.size, **params)
    _store(magics, ns.out, picture)
    display(picture)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
