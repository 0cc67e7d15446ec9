"""The audio routes: ``/v1/audio/transcriptions``, ``/v1/audio/translations``, ``/v1/audio/speech``.

Transcriptions take OpenAI's multipart form (``file`` plus ``model``,
``language``, ``prompt``, ``response_format``, ``temperature``,
``timestamp_granularities[]``, ``stream``).  The upload is refused with a 400
naming ``file`` when it is empty, over the ``max_upload_mb`` setting, or not
audio.  ``stream=true`` answers Server-Sent Events, a ``transcript.text.delta``
per segment then ``transcript.text.done``.

Speech takes JSON and answers audio bytes, streamed as the voice synthesizes
them (``pcm`` sentence by sentence; ``wav`` too when the body says
``"stream": true``, with the header's sizes unknown as in OpenAI's streamed WAV).
"""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from xnb.api.metrics import Metrics
from xnb.engines.media import SPEECH_MEDIA_TYPES
from xnb.errors import InvalidRequest, XnbError
from xnb.manager import ModelManager
from xnb.media import check_upload
from xnb.openai.media import SpeechBody, TranscriptionRequest, transcript_event, transcription_body
from xnb.protocol import validate

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/audio", tags=["audio"])

_FORM_OVERHEAD = 1024 * 1024  # the form's other fields and boundaries


class _SpeechRequest(SpeechBody):
    stream: bool | None = Field(default=None, description="stream the audio; default: only pcm")


def _state(request: Request) -> tuple[ModelManager, Metrics, int]:
    state = request.app.state
    return state.manager, state.metrics, int(state.settings.max_upload_mb * 1024 * 1024)


async def _read_form(request: Request, limit: int) -> tuple[dict[str, Any], bytes]:
    """The form's fields and the uploaded file's bytes (400 for anything else)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("send the audio as multipart/form-data with a 'file' field (as the openai "
                             "client does)", param="file")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + _FORM_OVERHEAD:
        raise InvalidRequest(
            f"the upload is {int(length) / 1e6:.1f} MB, over the {limit / 1e6:.1f} MB limit; send a shorter or "
            "compressed file (the server's limit is the setting max_upload_mb, XNB_MAX_UPLOAD_MB)",
            param="file",
        )
    try:
        form = await request.form(max_files=1, max_fields=32)
    except HTTPException as exc:
        raise InvalidRequest(f"the form could not be read: {exc.detail}", param="file") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("the form has no 'file' upload; send the audio in a field named file", param="file")
    audio = await upload.read(limit + 1)
    check_upload(audio, limit)
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        if key == "file" or not isinstance(value, str):
            continue
        if key in ("timestamp_granularities[]", "timestamp_granularities"):
            fields.setdefault("timestamp_granularities", []).append(value)
        elif key in ("chunking_strategy", "include[]", "include", "user"):
            continue  # accepted, changes nothing here
        else:
            fields[key] = value
    return fields, audio


async def _transcribe(request: Request, task: str, endpoint: str) -> Any:
    manager, metrics, limit = _state(request)
    fields, audio = await _read_form(request, limit)
    body: TranscriptionRequest = validate(TranscriptionRequest, fields)
    engine_request = body.to_engine(task)
    if body.stream:
        return await _sse(metrics, body.model, endpoint,
                          manager.transcribe_stream(body.model, audio, engine_request, max_bytes=limit))
    with metrics.request(body.model, endpoint):
        items = await manager.transcribe(body.model, audio, engine_request, max_bytes=limit)
    info = next((i for i in items if i.get("kind") == "info"), {})
    metrics.audio_seconds.labels(body.model, endpoint).inc(float(info.get("duration") or 0.0))
    content, media_type = transcription_body(items, body.response_format, task)
    if isinstance(content, str):
        return PlainTextResponse(content, media_type=media_type)
    return content


@router.post("/transcriptions")
async def transcriptions(request: Request) -> Any:
    return await _transcribe(request, "transcribe", "transcriptions")


@router.post("/translations")
async def translations(request: Request) -> Any:
    return await _transcribe(request, "translate", "translations")


async def _sse(metrics: Metrics, model: str, endpoint: str, items: AsyncIterator[dict[str, Any]]) -> Response:
    """Segments as ``transcript.text.delta`` events; errors before the first are HTTP errors."""
    try:
        first = await items.__anext__()  # the info item: the audio decoded, the model is on it
    except StopAsyncIteration:
        first = {}
    except XnbError as exc:
        metrics.requests.labels(model, endpoint, str(exc.status)).inc()
        raise

    async def events() -> AsyncIterator[bytes]:
        status, texts = "200", []
        try:
            if first.get("kind") == "segment":
                texts.append(first["text"])
                yield transcript_event("delta", first["text"])
            async for item in items:
                if item.get("kind") == "segment":
                    texts.append(item["text"])
                    yield transcript_event("delta", item["text"])
            yield transcript_event("done", "".join(texts).strip())
            yield b"data: [DONE]\n\n"
        except XnbError as exc:
            status = str(exc.status)
            yield b"data: " + json.dumps(exc.openai_body()).encode() + b"\n\n"
        finally:
            await items.aclose()
            metrics.requests.labels(model, endpoint, status).inc()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/speech")
async def speech(request: Request) -> Response:
    from xnb.api.openai import read_json

    manager, metrics, _ = _state(request)
    body: _SpeechRequest = validate(_SpeechRequest, await read_json(request))
    stream = body.stream if body.stream is not None else body.response_format == "pcm"
    engine_request = body.to_engine(stream=stream)
    media_type = SPEECH_MEDIA_TYPES.get(body.response_format, "application/octet-stream")
    if not stream:
        with metrics.request(body.model, "speech"):
            audio = await manager.speech(body.model, engine_request)
        return Response(audio, media_type=media_type)
    chunks = manager.speech_stream(body.model, engine_request)
    try:
        first = await chunks.__anext__()  # errors (unknown voice, format) are still HTTP errors
    except StopAsyncIteration:
        first = b""
    except XnbError as exc:
        metrics.requests.labels(body.model, "speech", str(exc.status)).inc()
        raise

    async def audio_bytes() -> AsyncIterator[bytes]:
        status = "200"
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        except XnbError as exc:  # mid-stream: the connection ends short, the log says why
            status = str(exc.status)
            logger.info("speech stream of %s failed mid-way: %s", body.model, exc.message)
        finally:
            await chunks.aclose()
            metrics.requests.labels(body.model, "speech", status).inc()

    return StreamingResponse(audio_bytes(), media_type=media_type)
