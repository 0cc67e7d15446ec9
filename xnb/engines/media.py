"""Neutral requests and results of the non-text abilities, and audio encoding.

Engines that transcribe, speak, rerank or draw take these requests (validated
pydantic models, the same from the API and the Python client) and give plain
results: transcription segments as dicts, speech as 16-bit mono PCM, images as
PNG bytes, rerank scores as floats.  Binary payloads cross Dask as ``bytes``.

Speech encoding runs where the engine runs (the worker): WAV and raw PCM with
the standard library, MP3/FLAC/Opus/AAC through PyAV when its encoders are
there (:func:`audio_encoders`).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from xnb.errors import InvalidRequest, UnsupportedParameter

__all__ = [
    "TranscribeRequest",
    "SpeechRequest",
    "ImageRequest",
    "RerankResult",
    "SPEECH_FORMATS",
    "SPEECH_MEDIA_TYPES",
    "audio_encoders",
    "check_speech_format",
    "encode_speech",
    "wav_header",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TranscribeRequest(_Strict):
    """Speech to text: what ``/v1/audio/transcriptions`` and ``/translations`` ask."""

    task: Literal["transcribe", "translate"] = "transcribe"
    language: str | None = Field(default=None, description="ISO-639-1 code; none: detected")
    prompt: str | None = Field(default=None, description="text that precedes the audio (style, words)")
    temperature: float = Field(default=0.0, ge=0.0, le=1.0)
    word_timestamps: bool = False


class SpeechRequest(_Strict):
    """Text to speech: what ``/v1/audio/speech`` asks."""

    input: str = Field(min_length=1, max_length=4096)
    voice: str | None = Field(default=None, description="a voice (speaker) of the model; none: its first")
    response_format: str = "wav"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream: bool = Field(default=False, description="WAV and PCM come sentence by sentence")


class ImageRequest(_Strict):
    """Text to image: what ``/v1/images/generations`` asks."""

    prompt: str = Field(min_length=1)
    negative_prompt: str | None = None
    n: int = Field(default=1, ge=1, le=10)
    width: int | None = Field(default=None, ge=8, le=4096)
    height: int | None = Field(default=None, ge=8, le=4096)
    steps: int | None = Field(default=None, ge=1, le=200)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=50.0)
    seed: int | None = None


@dataclass
class RerankResult:
    scores: list[float]
    prompt_tokens: int


#: Speech formats (OpenAI's names) → the PyAV codec and container that write them.
_AV_FORMATS: dict[str, tuple[str, str]] = {
    "mp3": ("libmp3lame", "mp3"),
    "flac": ("flac", "flac"),
    "opus": ("libopus", "ogg"),
    "aac": ("aac", "adts"),
}
SPEECH_FORMATS = ("wav", "pcm", *_AV_FORMATS)
SPEECH_MEDIA_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "opus": "audio/ogg",
    "aac": "audio/aac",
}


def audio_encoders() -> list[str]:
    """The speech formats this process can write (WAV and PCM always)."""
    out = ["wav", "pcm"]
    try:
        import av
    except ImportError:
        return out
    for fmt, (codec, _) in _AV_FORMATS.items():
        try:
            av.codec.Codec(codec, "w")
        except (av.error.FFmpegError, ValueError):  # this FFmpeg build lacks the encoder
            continue
        out.append(fmt)
    return out


def check_speech_format(fmt: str, available: list[str]) -> None:
    """400 naming the format when it is unknown or has no encoder here."""
    if fmt not in SPEECH_FORMATS:
        raise InvalidRequest(
            f"response_format {fmt!r} is not a speech format; use one of {', '.join(SPEECH_FORMATS)}",
            param="response_format",
        )
    if fmt not in available:
        raise UnsupportedParameter(
            f"response_format {fmt!r} needs an encoder this worker lacks (PyAV with {_AV_FORMATS[fmt][0]}); "
            f"available: {', '.join(available)}",
            param="response_format",
        )


def wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """A 16-bit mono WAV header; ``data_bytes=None`` (a stream) writes the largest size."""
    size = 0xFFFFFFFF - 36 if data_bytes is None else data_bytes
    return (
        b"RIFF" + struct.pack("<I", min(36 + size, 0xFFFFFFFF)) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data" + struct.pack("<I", size)
    )


def encode_speech(chunks: Iterator[bytes], sample_rate: int, fmt: str, *, stream: bool) -> Iterator[bytes]:
    """16-bit mono PCM chunks → the bytes of ``fmt``.

    PCM passes through; a streamed WAV is a header (with the largest size, as
    OpenAI's streamed WAV) then PCM; a whole WAV has its exact sizes; the
    compressed formats are encoded once the speech is complete.
    """
    if fmt == "pcm":
        yield from chunks
        return
    if fmt == "wav" and stream:
        yield wav_header(sample_rate, None)
        yield from chunks
        return
    pcm = b"".join(chunks)
    if fmt == "wav":
        yield wav_header(sample_rate, len(pcm)) + pcm
        return
    yield _av_encode(pcm, sample_rate, fmt)


def _av_encode(pcm: bytes, sample_rate: int, fmt: str) -> bytes:
    import av
    import numpy as np

    codec, container_format = _AV_FORMATS[fmt]
    out = io.BytesIO()
    with av.open(out, "w", format=container_format) as container:
        # Opus takes 48 kHz only; the others keep the voice's rate.
        rate = 48000 if fmt == "opus" else sample_rate
        stream: Any = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(pcm, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = sample_rate
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        frames = resampler.resample(frame) + resampler.resample(None)
        for f in frames:
            for packet in stream.encode(f):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()
