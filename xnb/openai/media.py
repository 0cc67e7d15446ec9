"""Request bodies and response shapes of the audio, image and rerank endpoints.

Shared by the sidecar routes and the Python client, like
:mod:`xnb.openai.requests`:

* ``/v1/audio/transcriptions`` and ``/translations`` (OpenAI's multipart form):
  :class:`TranscriptionRequest`, answered by :func:`transcription_body` as
  ``json``, ``text``, ``srt``, ``vtt`` or ``verbose_json`` (with segments).
* ``/v1/audio/speech``: :class:`SpeechBody`.
* ``/v1/images/generations``: :class:`ImagesRequest` → :func:`images_body`.
* ``/v1/rerank`` (and ``/rerank``, ``/v2/rerank``) in the shape Cohere, Jina,
  vLLM and Xinference clients send: :class:`RerankRequest` → :func:`rerank_body`.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from xnb.engines.media import ImageRequest, SpeechRequest, TranscribeRequest
from xnb.errors import InvalidRequest, UnsupportedParameter

__all__ = [
    "TRANSCRIPTION_FORMATS",
    "TranscriptionRequest",
    "SpeechBody",
    "ImagesRequest",
    "RerankRequest",
    "transcription_body",
    "images_body",
    "rerank_body",
    "document_text",
]

TRANSCRIPTION_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")

#: Accepted and ignored everywhere: they change nothing about the answer.
_IGNORED = {"user"}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- speech to text ------------------------------------------------------------------------------


class TranscriptionRequest(_Body):
    """The form fields of ``/v1/audio/transcriptions`` (the file travels apart)."""

    model: str
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float = Field(default=0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[Literal["segment", "word"]] = Field(default_factory=lambda: ["segment"])
    stream: bool = False

    @field_validator("response_format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v not in TRANSCRIPTION_FORMATS:
            raise ValueError(f"{v!r} is not supported; use one of {', '.join(TRANSCRIPTION_FORMATS)}")
        return v

    def to_engine(self, task: str) -> TranscribeRequest:
        return TranscribeRequest(
            task=task, language=self.language or None, prompt=self.prompt or None,
            temperature=self.temperature, word_timestamps="word" in self.timestamp_granularities,
        )


def transcription_body(items: list[dict[str, Any]], response_format: str, task: str) -> tuple[Any, str]:
    """``(body, media type)`` from the engine's info and segments."""
    info = next((i for i in items if i.get("kind") == "info"), {"language": None, "duration": 0.0})
    segments = [i for i in items if i.get("kind") == "segment"]
    text = "".join(s["text"] for s in segments).strip()
    if response_format == "text":
        return text + "\n", "text/plain; charset=utf-8"
    if response_format == "srt":
        return _subtitles(segments, vtt=False), "application/x-subrip; charset=utf-8"
    if response_format == "vtt":
        return _subtitles(segments, vtt=True), "text/vtt; charset=utf-8"
    if response_format == "json":
        return {"text": text, "usage": _duration_usage(info)}, "application/json"
    body: dict[str, Any] = {
        "task": task, "language": info.get("language"), "duration": info.get("duration"), "text": text,
        "segments": [{k: v for k, v in s.items() if k not in ("kind", "words")} for s in segments],
        "usage": _duration_usage(info),
    }
    words = [w for s in segments for w in s.get("words", [])]
    if words:
        body["words"] = words
    return body, "application/json"


def _duration_usage(info: dict[str, Any]) -> dict[str, Any]:
    return {"type": "duration", "seconds": int(round(float(info.get("duration") or 0.0)))}


def _timestamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _subtitles(segments: list[dict[str, Any]], *, vtt: bool) -> str:
    lines = ["WEBVTT", ""] if vtt else []
    for n, seg in enumerate(segments, 1):
        sep = "." if vtt else ","
        if not vtt:
            lines.append(str(n))
        lines.append(f"{_timestamp(seg['start'], sep)} --> {_timestamp(seg['end'], sep)}")
        lines.append(seg["text"].strip())
        lines.append("")
    return "\n".join(lines) + ("\n" if lines else "")


def transcript_event(kind: str, text: str) -> bytes:
    """One Server-Sent Event of a streamed transcription (OpenAI's event names)."""
    data = {"type": f"transcript.text.{kind}", ("delta" if kind == "delta" else "text"): text}
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


# -- text to speech ------------------------------------------------------------------------------


class SpeechBody(_Body):
    """The JSON body of ``/v1/audio/speech``."""

    model: str
    input: str = Field(min_length=1, max_length=4096)
    voice: str | None = None
    response_format: str = "wav"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: str | None = None
    user: str | None = None

    def to_engine(self, *, stream: bool) -> SpeechRequest:
        if self.instructions:
            raise UnsupportedParameter("instructions are not supported: Piper voices cannot be steered by "
                                       "text; leave them out", param="instructions")
        if self.stream_format == "sse":
            raise UnsupportedParameter("stream_format 'sse' is not supported; xnb streams audio bytes "
                                       "(stream_format 'audio')", param="stream_format")
        return SpeechRequest(input=self.input, voice=self.voice, response_format=self.response_format,
                             speed=self.speed, stream=stream)


# -- images ----------------------------------------------------------------------------------------


class ImagesRequest(_Body):
    """The JSON body of ``/v1/images/generations``; ``steps``, ``guidance_scale``,
    ``negative_prompt`` and ``seed`` are xnb's extra parameters."""

    model: str
    prompt: str = Field(min_length=1)
    n: int = Field(default=1, ge=1, le=10)
    size: str | None = Field(default=None, description="WIDTHxHEIGHT or auto")
    response_format: str = "b64_json"
    output_format: str = "png"
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    seed: int | None = None
    steps: int | None = Field(default=None, ge=1, le=200)
    num_inference_steps: int | None = Field(default=None, ge=1, le=200)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=50.0)
    negative_prompt: str | None = None

    def to_engine(self) -> ImageRequest:
        if self.response_format != "b64_json":
            raise UnsupportedParameter(
                f"response_format {self.response_format!r} is not supported; use b64_json (xnb hosts no image URLs)",
                param="response_format",
            )
        if self.output_format != "png":
            raise UnsupportedParameter(f"output_format {self.output_format!r} is not supported; use png",
                                       param="output_format")
        width = height = None
        if self.size and self.size != "auto":
            w, sep, h = self.size.lower().partition("x")
            if not (sep and w.isdigit() and h.isdigit()) or not (8 <= int(w) <= 4096 and 8 <= int(h) <= 4096):
                raise InvalidRequest(f"size {self.size!r} must look like 512x512 (8 to 4096 pixels a side) or auto",
                                     param="size")
            width, height = int(w), int(h)
        return ImageRequest(prompt=self.prompt, negative_prompt=self.negative_prompt, n=self.n, width=width,
                            height=height, steps=self.steps or self.num_inference_steps,
                            guidance_scale=self.guidance_scale, seed=self.seed)


def images_body(pngs: list[bytes]) -> dict[str, Any]:
    return {
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(png).decode("ascii")} for png in pngs],
        "output_format": "png",
    }


# -- rerank ---------------------------------------------------------------------------------------------


class RerankRequest(BaseModel):
    """A rerank body as Cohere (v1, v2), Jina, vLLM and Xinference clients send it."""

    model_config = ConfigDict(extra="allow")

    model: str
    query: str = Field(min_length=1)
    documents: list[str | dict[str, Any]] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = True
    rank_fields: list[str] | None = None
    max_chunks_per_doc: int | None = None
    max_tokens_per_doc: int | None = None
    return_len: bool | None = None
    truncation: bool | None = None

    @field_validator("documents")
    @classmethod
    def _not_empty(cls, v: list[Any]) -> list[Any]:
        if not v:
            raise ValueError("must contain at least one document")
        return v

    def check_extra(self) -> None:
        unknown = sorted(set(self.model_extra or {}) - _IGNORED)
        if unknown:
            raise UnsupportedParameter(f"unknown rerank parameter(s): {', '.join(unknown)}", param=unknown[0])

    def texts(self) -> list[str]:
        return [document_text(d, i, self.rank_fields) for i, d in enumerate(self.documents)]


def document_text(doc: str | dict[str, Any], index: int, rank_fields: list[str] | None = None) -> str:
    """The text a document is ranked by: a string, ``{"text": ...}``, or (Cohere's
    ``rank_fields``) the named fields written as ``key: value`` lines."""
    if isinstance(doc, str):
        return doc
    if rank_fields:
        missing = [f for f in rank_fields if f not in doc]
        if missing:
            raise InvalidRequest(f"documents[{index}] lacks rank field(s) {', '.join(missing)}", param="documents")
        return "\n".join(f"{f}: {doc[f]}" for f in rank_fields)
    if isinstance(doc.get("text"), str):
        return doc["text"]
    raise InvalidRequest(f"documents[{index}] must be a string or an object with a 'text' string "
                         "(or name its fields in rank_fields)", param="documents")


def rerank_body(body: RerankRequest, scores: list[float], tokens: int) -> dict[str, Any]:
    """Results ranked best first (``index``, ``relevance_score``, ``document``), with usage
    in Jina/vLLM form and Cohere's ``meta``."""
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    if body.top_n is not None:
        order = order[: body.top_n]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if body.return_documents:
            doc = body.documents[i]
            item["document"] = {"text": doc} if isinstance(doc, str) else doc
        results.append(item)
    return {
        "id": str(uuid.uuid4()),
        "model": body.model,
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
    }
