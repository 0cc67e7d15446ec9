"""The cross-encoder engine: rerankers that read query and document together.

The model folder is a Hugging Face sequence-classification checkpoint with one
output (``BAAI/bge-reranker-base``, ``cross-encoder/ms-marco-MiniLM-L-6-v2``,
...), loaded with :class:`sentence_transformers.CrossEncoder`.  Scores are the
model's logit passed through a sigmoid (``activation="sigmoid"``, in [0, 1] as
Cohere and Jina report them) or left raw (``"none"``).

torch and sentence_transformers are imported only inside :meth:`load`.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field

from xnb.engines.base import Engine, EngineOptions
from xnb.engines.media import RerankResult
from xnb.errors import InvalidRequest, LaunchFailed

__all__ = ["CrossEncoderEngine", "CrossEncoderOptions"]

logger = logging.getLogger(__name__)


class CrossEncoderOptions(EngineOptions):
    """Launch options of the cross-encoder engine."""

    batch_size: int = Field(default=32, ge=1, description="query-document pairs scored per forward pass")
    device: str | None = Field(default=None, description="torch device; default: the replica's first GPU, else cpu")
    max_length: int | None = Field(default=None, ge=8, description="truncate each pair to this many tokens")
    activation: Literal["sigmoid", "none"] = Field(default="sigmoid", description="how logits become scores")
    trust_remote_code: bool = Field(default=False, description="run code shipped with the model")


class CrossEncoderEngine(Engine):
    name = "cross-encoder"
    abilities = frozenset({"rerank"})
    formats = frozenset({"pytorch"})
    supported_params = frozenset()
    requires = ("sentence_transformers", "torch")
    Options = CrossEncoderOptions

    options: CrossEncoderOptions

    @classmethod
    def can_serve(cls, abilities: list[str], fmt: str) -> bool:
        # An embedding model also reranks (as a bi-encoder), but it is no cross-encoder.
        return fmt in cls.formats and "rerank" in abilities and "embed" not in abilities

    def load(self) -> dict[str, Any]:
        import torch
        from sentence_transformers import CrossEncoder

        opts = self.options
        if not self.model_path.is_dir():
            raise LaunchFailed(f"a cross-encoder needs a model folder, but {self.model_path} is not one")
        device = opts.device or (f"cuda:{self.resources.gpus[0]}" if self.resources.gpus else "cpu")
        torch.set_num_threads(max(1, self.resources.threads))  # per process, as sentence-transformers
        model = CrossEncoder(
            str(self.model_path), device=device, max_length=opts.max_length,
            trust_remote_code=opts.trust_remote_code, local_files_only=True,
        )
        labels = model.num_labels
        if labels != 1:
            raise LaunchFailed(
                f"{self.spec.model_name} has {labels} output labels; a reranker has one relevance score"
            )
        model.eval()
        self._model = model
        self._requests = 0
        self._pairs = 0
        return {"device": device, "max_length": model.max_length, "threads": torch.get_num_threads()}

    def unload(self) -> None:
        self._model = None

    def rerank(self, query: str, documents: list[str]) -> RerankResult:
        import torch

        model = self._model
        if model is None:
            raise InvalidRequest(f"{self.spec.model_name!r} is not loaded", param="model")
        pairs = [(query, doc) for doc in documents]
        activation = torch.nn.Sigmoid() if self.options.activation == "sigmoid" else torch.nn.Identity()
        scores = model.predict(
            pairs, batch_size=self.options.batch_size, activation_fn=activation,
            convert_to_numpy=True, show_progress_bar=False,
        )
        tokenizer = model.tokenizer
        encoded = tokenizer([q for q, _ in pairs], [d for _, d in pairs], truncation=True,
                            max_length=model.max_length)
        tokens = sum(len(ids) for ids in encoded["input_ids"])
        self._requests += 1
        self._pairs += len(pairs)
        return RerankResult(scores=[float(s) for s in scores], prompt_tokens=tokens)

    def stats(self) -> dict[str, Any]:
        return {"requests": getattr(self, "_requests", 0), "pairs": getattr(self, "_pairs", 0)}
