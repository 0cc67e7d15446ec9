"""The sentence-transformers engine: pytorch embedding models (``all-MiniLM-L6-v2``, ...).

The model folder (a sentence-transformers snapshot: ``modules.json``, pooling,
tokenizer) is loaded with :class:`sentence_transformers.SentenceTransformer`.
``embed`` encodes in batches of ``batch_size`` to float32 and counts the
tokens the model actually sees (special tokens included, truncated to
``max_seq_length``) for usage reporting.

torch and sentence_transformers are imported only inside :meth:`load`, so
importing this module (to list engines, or on a worker serving only GGUF)
never imports torch.

Threads: :meth:`SentenceTransformersEngine.load` calls ``torch.set_num_threads``
with the replica's thread count.  That setting is per *process*: every torch
model in the same worker process shares it, and the last replica loaded there
wins.  Give torch replicas a worker process of their own when that matters.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from xnb.engines.base import EmbedResult, Engine, EngineOptions
from xnb.errors import InvalidRequest, LaunchFailed

__all__ = ["SentenceTransformersEngine", "SentenceTransformersOptions"]

logger = logging.getLogger(__name__)


class SentenceTransformersOptions(EngineOptions):
    """Launch options of the sentence-transformers engine."""

    batch_size: int = Field(default=32, ge=1, description="texts encoded per forward pass")
    device: str | None = Field(
        default=None, description="torch device; default: the replica's first GPU, else 'cpu'"
    )
    normalize: bool = Field(
        default=True,
        description="unit-length vectors when a request does not say (embed(normalize=None))",
    )
    max_seq_length: int | None = Field(
        default=None, ge=1, description="truncate inputs to this many tokens; default: the model's"
    )
    trust_remote_code: bool = Field(default=False, description="run code shipped with the model")


class SentenceTransformersEngine(Engine):
    name = "sentence-transformers"
    #: rerank: as a bi-encoder (:meth:`Engine.rerank`, the cosine of query and document vectors).
    abilities = frozenset({"embed", "rerank"})
    formats = frozenset({"pytorch"})
    requires = ("sentence_transformers", "torch")
    Options = SentenceTransformersOptions

    @classmethod
    def can_serve(cls, abilities: list[str], fmt: str) -> bool:
        # It reranks only what it embeds: a cross-encoder family (rerank alone) is not for it.
        return fmt in cls.formats and "embed" in abilities

    options: SentenceTransformersOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: Any = None  # set by load()
        self._device = "cpu"
        self._prompt: str | None = None
        self._requests = self._texts = self._tokens = 0

    def load(self) -> dict[str, Any]:
        import torch
        from sentence_transformers import SentenceTransformer

        opts = self.options
        if not self.model_path.is_dir():
            raise LaunchFailed(
                f"sentence-transformers needs a model folder, but {self.model_path} is not one; "
                "launch a pytorch spec of this model (`xnb engines MODEL` lists them)"
            )
        device = opts.device or (f"cuda:{self.resources.gpus[0]}" if self.resources.gpus else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise LaunchFailed(
                f"device {device!r} was asked for, but this worker's torch has no CUDA; "
                "launch on a GPU worker or set engine option device='cpu'"
            )
        # Per process: every torch model in this worker process shares it (see module docstring).
        torch.set_num_threads(max(1, self.resources.threads))
        model = SentenceTransformer(
            str(self.model_path),
            device=device,
            trust_remote_code=opts.trust_remote_code,
            local_files_only=True,
        )
        model.eval()
        if opts.max_seq_length is not None:
            model.max_seq_length = opts.max_seq_length
        self._model = model
        self._device = device
        self._prompt = _default_prompt(model)
        self._requests = 0
        self._texts = 0
        self._tokens = 0
        dims = _dimension(model)
        if self.spec.dimensions is not None and dims is not None and dims != self.spec.dimensions:
            logger.warning(
                "model %s: catalog says %d dimensions, the model gives %d",
                self.spec.model_name, self.spec.dimensions, dims,
            )
        return {
            "dimensions": dims,
            "max_seq_length": model.max_seq_length,
            "device": device,
            # Models ending in a Normalize module (all-MiniLM-L6-v2) are unit length even
            # when a request asks for normalize=False, exactly as with SentenceTransformer.encode.
            "normalizes": any(type(m).__name__ == "Normalize" for m in model),
            "threads": torch.get_num_threads(),
            "batch_size": opts.batch_size,
        }

    def unload(self) -> None:
        model, self._model = self._model, None
        if model is not None and self._device.startswith("cuda"):
            import torch

            del model
            torch.cuda.empty_cache()

    def embed(self, texts: list[str], *, normalize: bool | None = None) -> EmbedResult:
        """Embed ``texts``; ``normalize=None`` uses the launch option ``normalize``."""
        model = self._model
        if model is None:
            raise InvalidRequest(f"{self.spec.model_name!r} is not loaded", param="model")
        if not all(isinstance(t, str) for t in texts):
            raise InvalidRequest("every input to embed must be a string", param="input")
        if not texts:
            return EmbedResult(vectors=[], prompt_tokens=0)
        unit = self.options.normalize if normalize is None else normalize
        vectors = model.encode(
            texts,
            batch_size=self.options.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=unit,
            show_progress_bar=False,
            precision="float32",
        )
        tokens = self.count_tokens(texts)
        self._requests += 1
        self._texts += len(texts)
        self._tokens += tokens
        return EmbedResult(vectors=vectors.astype("float32", copy=False), prompt_tokens=tokens)

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model sees for ``texts``: truncated, special tokens included."""
        model = self._model
        total = 0
        size = self.options.batch_size
        for start in range(0, len(texts), size):
            batch = texts[start : start + size]
            features = _preprocess(model, batch, self._prompt)
            mask = features.get("attention_mask")
            if mask is not None:
                total += int(mask.sum())
            else:  # a tokenizer without a mask pads nothing it is not asked to
                total += int(features["input_ids"].numel())
        return total

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self._requests,
            "texts": self._texts,
            "prompt_tokens": self._tokens,
        }


def _dimension(model: Any) -> int | None:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return getter()


def _default_prompt(model: Any) -> str | None:
    """The prompt ``encode`` prepends when none is named (the model's default prompt)."""
    name = getattr(model, "default_prompt_name", None)
    prompts = getattr(model, "prompts", None) or {}
    return prompts.get(name) if name else None


def _preprocess(model: Any, texts: list[str], prompt: str | None) -> dict[str, Any]:
    """Tokenize as ``encode`` does (``preprocess`` in sentence-transformers ≥ 6, else ``tokenize``)."""
    if hasattr(model, "preprocess"):
        return model.preprocess(texts, prompt=prompt)
    if prompt:
        texts = [prompt + t for t in texts]
    return model.tokenize(texts)
