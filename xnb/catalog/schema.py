"""Pydantic models of the model catalog: families, specs and sources.

A *family* (``qwen2.5-instruct``) has abilities, a context length and one or
more *specs*; a spec is one format × size with the quantizations it comes in
and the *sources* its files can be fetched from, in order of preference.
A :class:`LaunchSpec` is what a launch resolves to: one family, one spec, one
quantization and one engine — everything a worker needs to load the model.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "Ability",
    "Format",
    "HubSource",
    "PackageSource",
    "LocalSource",
    "ConvertedSource",
    "Source",
    "ModelSpec",
    "ModelFamily",
    "LaunchSpec",
    "size_to_billions",
]

#: What a model does: text (chat, generate), vectors (embed), scores (rerank),
#: speech to text (transcribe), text to speech (speech), text to image (image).
Ability = Literal["chat", "generate", "embed", "rerank", "transcribe", "speech", "image"]
#: How its weights are stored: one .gguf file, or a folder (pytorch snapshot, a
#: CTranslate2 conversion, an ONNX voice with its .json, a diffusers pipeline);
#: "none": an engine that needs no weights (the echo test engine).
Format = Literal["gguf", "pytorch", "ctranslate2", "onnx", "diffusers", "none"]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([mb])$")


def size_to_billions(size: str) -> float:
    """``"135m"`` → 0.135, ``"1.5b"`` → 1.5."""
    m = _SIZE_RE.match(size.lower())
    if not m:
        raise ValueError(f"size {size!r} must look like '135m' or '1.5b'")
    value = float(m.group(1))
    return value / 1000 if m.group(2) == "m" else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HubSource(_Strict):
    """Files in a Hugging Face Hub repository.

    ``file`` names the file (GGUF) or ``None`` for a whole snapshot (pytorch);
    it may contain ``{quantization}`` and shell-style wildcards.
    ``allow_patterns`` limits what a snapshot fetches.
    """

    kind: Literal["huggingface"] = "huggingface"
    repo: str
    file: str | None = None
    revision: str | None = None
    allow_patterns: list[str] | None = None

    @field_validator("repo")
    @classmethod
    def _repo_shape(cls, v: str) -> str:
        if v.count("/") != 1 or v.startswith("/") or v.endswith("/"):
            raise ValueError(f"Hugging Face repo {v!r} must look like 'owner/name'")
        return v


class PackageSource(_Strict):
    """A file or folder inside an installed Python package (found without importing it)."""

    kind: Literal["package"] = "package"
    package: str = Field(description="pip distribution name, used in install hints")
    module: str = Field(description="top-level import name whose folder holds the files")
    path: str = Field(description="path inside that folder; may contain {quantization}")


class LocalSource(_Strict):
    """A file or folder on the worker's disk."""

    kind: Literal["local"] = "local"
    path: str


class ConvertedSource(_Strict):
    """A GGUF file inside an installed Python package, converted once into xnb's cache
    (:mod:`xnb.catalog.convert`): in a ``pytorch`` spec to a safetensors folder in
    ``dtype``; in a ``gguf`` spec, requantized by llama.cpp to the launch's quantization
    (only to a finer type: Q8_0, F16 or BF16)."""

    kind: Literal["converted"] = "converted"
    package: str = Field(description="pip distribution name, used in install hints")
    module: str = Field(description="top-level import name whose folder holds the GGUF file")
    path: str = Field(description="the .gguf file inside that folder; may contain {quantization}")
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


Source = Annotated[
    Union[HubSource, PackageSource, LocalSource, ConvertedSource], Field(discriminator="kind")
]


class ModelSpec(_Strict):
    format: Format
    size: str
    quantizations: list[str] = Field(default_factory=lambda: ["none"], min_length=1)
    sources: list[Source] = Field(min_length=1)
    file_size_mb: float | None = Field(
        default=None, description="approximate size of the weights, for placement"
    )

    @field_validator("size")
    @classmethod
    def _size_shape(cls, v: str) -> str:
        size_to_billions(v)
        return v.lower()


class ModelFamily(_Strict):
    name: str
    description: str = ""
    abilities: list[Ability] = Field(min_length=1)
    context_length: int = Field(default=2048, gt=0)
    languages: list[str] = Field(default_factory=lambda: ["en"])
    specs: list[ModelSpec] = Field(min_length=1)
    chat_template: str | None = Field(
        default=None, description="Jinja chat template; default: the one the model files carry"
    )
    stop: list[str] = Field(default_factory=list)
    dimensions: int | None = Field(default=None, description="embedding size (embed models)")
    matryoshka_min_dimensions: int | None = Field(
        default=None, ge=1,
        description="Matryoshka-trained embeddings: the API's `dimensions` may truncate (and renormalise) "
        "them to any size from this one up to `dimensions`; unset: only the full size",
    )
    tool_auto: Literal["model", "relevance"] = Field(
        default="model",
        description="how tool_choice=auto decides: the model (grammar lets it call or answer) or, "
        "for models too small to decide, by relevance of the tools to the request",
    )
    engine_options: dict[str, Any] = Field(
        default_factory=dict,
        description="default launch options for the engine (e.g. an image model's steps); "
        "options given at launch win",
    )
    builtin: bool = Field(default=False, exclude=True)

    @field_validator("name")
    @classmethod
    def _name_shape(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(
                f"model name {v!r} must be lower-case letters, digits, '.', '_' or '-'"
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> "ModelFamily":
        if self.matryoshka_min_dimensions is not None and (
            self.dimensions is None or self.matryoshka_min_dimensions > self.dimensions
        ):
            raise ValueError("matryoshka_min_dimensions needs dimensions, and must not exceed it")
        seen: set[tuple[str, str]] = set()
        for spec in self.specs:
            key = (spec.format, spec.size)
            if key in seen:
                raise ValueError(f"two specs for format {spec.format!r} size {spec.size!r}")
            seen.add(key)
        return self

    def summary(self) -> dict[str, Any]:
        """One catalog row: what lists and widgets show."""
        return {
            "name": self.name,
            "description": self.description,
            "abilities": list(self.abilities),
            "context_length": self.context_length,
            "formats": sorted({s.format for s in self.specs}),
            "sizes": list(dict.fromkeys(s.size for s in self.specs)),  # one per size, in catalog order
            "sources": sorted({src.kind for s in self.specs for src in s.sources}),
            "quantizations": sorted({q for s in self.specs for q in s.quantizations}),
            "builtin": self.builtin,
        }


class LaunchSpec(_Strict):
    """A family narrowed to the one spec, quantization and engine a replica loads."""

    model_name: str
    abilities: list[Ability]
    context_length: int
    format: Format
    size: str
    quantization: str
    engine: str
    sources: list[Source]
    file_size_mb: float | None = None
    chat_template: str | None = None
    stop: list[str] = Field(default_factory=list)
    dimensions: int | None = None
    matryoshka_min_dimensions: int | None = None
    tool_auto: Literal["model", "relevance"] = "model"
    engine_options: dict[str, Any] = Field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "engine": self.engine,
            "format": self.format,
            "size": self.size,
            "quantization": self.quantization,
            "abilities": list(self.abilities),
            "context_length": self.context_length,
        }
