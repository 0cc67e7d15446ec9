"""The Hugging Face transformers engine: causal LMs from a model folder or a GGUF file.

GGUF files load with ``from_pretrained(folder, gguf_file=name)``: transformers
dequantizes them (memory of the unquantized model; needs the ``gguf`` package).
Chat prompts are rendered by xnb's sandboxed :class:`~xnb.engines.chat_template.ChatTemplate`
(option, catalog or tokenizer template), never ``tokenizer.apply_chat_template``.

Generation is continuous batching (:mod:`xnb.engines.transformers_batch`): up to
``max_num_seqs`` requests share one forward pass per step, each with its own
sampler (a ``seed`` reproduces an answer while other requests run), incremental
detokenization that never splits a character and stop strings.  torch is
imported only in ``load``; on CPU ``load`` calls ``torch.set_num_threads``, which
is per *process* (all torch models of a worker process share it; the last
replica loaded wins).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import re
from typing import Any, Literal

from pydantic import Field

from xnb.engines.base import (
    BASE_PARAMS,
    Engine,
    EngineOptions,
    GenerateRequest,
    Prompt,
    Sink,
)
from xnb.engines.text import StopChecker
from xnb.engines.torch_sampling import IncrementalDetokenizer, Sampler, TokenBytes, adds_bos, eos_ids
from xnb.errors import InvalidRequest, LaunchFailed

__all__ = ["TransformersEngine", "TransformersOptions", "IncrementalDetokenizer"]

logger = logging.getLogger(__name__)

_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$")


class TransformersOptions(EngineOptions):
    """Launch options of the transformers engine."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="'auto': the checkpoint's dtype on a GPU, float32 on CPU")
    device_map: str | None = Field(
        default=None, description="accelerate device map ('auto': over all GPUs the process "
        "sees); default: the replica's first GPU, else the CPU")
    trust_remote_code: bool = Field(default=False, description="run code shipped with the model")
    max_num_seqs: int | None = Field(
        default=None, ge=1, le=256, description="sequences decoded in one batch; default: as many "
        "full-context KV caches as fit in half the free memory, at most 16")
    max_batched_tokens: int = Field(
        default=512, ge=16, description="most tokens evaluated in one step (decode rows + prompt chunks)")
    prefill_chunk: int = Field(
        default=256, ge=8, description="prompt tokens a new sequence evaluates per step")
    chat_template: str | None = Field(
        default=None, description="override the catalog's and the tokenizer's chat template")


class TransformersEngine(Engine):
    name = "transformers"
    abilities = frozenset({"chat", "generate"})
    formats = frozenset({"pytorch", "gguf"})
    supported_params = BASE_PARAMS | {
        "top_k", "min_p", "repeat_penalty", "logit_bias", "ignore_eos", "logprobs", "top_logprobs",
    }
    requires = ("transformers", "torch")
    Options = TransformersOptions

    options: TransformersOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: Any = None  # set by load()
        self._tokenizer: Any = None
        self.scheduler: Any = None  # transformers_batch.TorchBatchScheduler once loaded
        self._max_num_seqs = 0

    # -- lifecycle -------------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        import torch
        import transformers

        opts = self.options
        path = self.model_path
        kwargs: dict[str, Any] = {"trust_remote_code": opts.trust_remote_code, "local_files_only": True}
        if path.is_file():
            if path.suffix != ".gguf":
                raise LaunchFailed(f"transformers loads a model folder or a .gguf file, not {path.name}")
            if _SPLIT_GGUF.search(path.name):
                raise LaunchFailed(
                    f"transformers cannot load a split GGUF ({path.name}); launch it on the "
                    "llama-cpp engine, or use a single-file quantization"
                )
            if importlib.util.find_spec("gguf") is None:
                raise LaunchFailed(
                    "transformers needs the 'gguf' package to load GGUF files: "
                    "pip install gguf (or 'xnb[transformers]') on this worker"
                )
            folder, kwargs["gguf_file"] = str(path.parent), path.name
        else:
            folder = str(path)
        if opts.device_map is not None:  # accelerate places it, over every GPU the process sees
            if importlib.util.find_spec("accelerate") is None:
                raise LaunchFailed(
                    "engine option device_map needs the 'accelerate' package: pip install "
                    "accelerate (or 'xnb[transformers]') on this worker, or drop device_map"
                )
            on_gpu = opts.device_map != "cpu" and torch.cuda.is_available()
        else:
            on_gpu = bool(self.resources.gpus)
            if on_gpu and not torch.cuda.is_available():
                raise LaunchFailed(
                    "this replica was given a GPU, but this worker's torch has no CUDA; "
                    "install a CUDA build of torch there or launch without GPUs"
                )
        if opts.dtype != "auto":
            dtype: Any = getattr(torch, opts.dtype)
        else:
            dtype = "auto" if on_gpu else torch.float32  # CPU matmuls in fp16 are slow or missing
        if not on_gpu:
            # Per process: every torch model in this worker process shares it (module docstring).
            torch.set_num_threads(max(1, self.resources.threads))

        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kwargs)
        model_kwargs = dict(kwargs, dtype=dtype)
        if opts.device_map is not None:
            model_kwargs["device_map"] = opts.device_map
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, **model_kwargs)
        if opts.device_map is None:
            model.to(f"cuda:{self.resources.gpus[0]}" if self.resources.gpus else "cpu")
        model.eval()
        self._torch = torch
        self._model = model
        self._tokenizer = tokenizer
        self._device = model.get_input_embeddings().weight.device  # where input ids go
        config_len = getattr(model.config, "max_position_embeddings", None)
        self.max_len = min(self.spec.context_length, config_len or self.spec.context_length)
        # transformers ≥ 5.24 calls the KV cache `cache` (was `past_key_values`); models that
        # take `logits_to_keep` skip the vocabulary projection of every prompt position.
        forward_args = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self._forward_extra = {"logits_to_keep": 1} if "logits_to_keep" in forward_args else {}
        self._eos = frozenset(eos_ids(model, tokenizer))
        self._adds_bos = adds_bos(tokenizer)
        self._token_bytes = TokenBytes(tokenizer)
        self.template, template_origin = self._chat_template(tokenizer)
        self._max_num_seqs, auto = self._batch_size(model, dtype_bytes=model.dtype.itemsize)
        from xnb.engines.transformers_batch import TorchBatchScheduler

        self.scheduler = TorchBatchScheduler(
            model, device=self._device, cache_arg=self._cache_arg, forward_extra=self._forward_extra,
            max_num_seqs=self._max_num_seqs, max_batched_tokens=opts.max_batched_tokens,
            prefill_chunk=opts.prefill_chunk,
        )
        logger.info("transformers loaded %s (%s) on %s as %s, %d sequences at once", self.spec.model_name,
                    path.name, self._device, model.dtype, self._max_num_seqs)
        return {
            "n_ctx": self.max_len,
            "device": str(self._device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
            "max_num_seqs": self._max_num_seqs,
            "max_num_seqs_source": "auto" if auto else "option",
            "max_batched_tokens": opts.max_batched_tokens,
            "parameters": sum(p.numel() for p in model.parameters()),
            "chat_template": template_origin,
            "gguf": "gguf_file" in kwargs,
        }

    def _batch_size(self, model: Any, *, dtype_bytes: int) -> tuple[int, bool]:
        """``(max_num_seqs, chosen automatically)``: the option, else what fits in memory
        (:mod:`xnb.engines.sizing`); 1 for models whose cache cannot be padded and merged."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        from xnb.engines.sizing import default_max_num_seqs, free_memory

        layers = DynamicCache(config=model.config).layers
        if any(type(layer) is not DynamicLayer for layer in layers):
            # Sliding-window or recurrent layers: rows cannot be left-padded and merged.
            logger.info("%s has cache layers other than DynamicLayer: one sequence at a time",
                        self.spec.model_name)
            return 1, self.options.max_num_seqs is None
        if self.options.max_num_seqs is not None:
            return self.options.max_num_seqs, False
        config = model.config.get_text_config(decoder=True)
        heads = getattr(config, "num_attention_heads", 1)
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes
        gpu = self.resources.gpus[0] if self._device.type == "cuda" and self.resources.gpus else None
        # Nothing is allocated ahead (the cache grows with use): half the free memory may hold it.
        return default_max_num_seqs(per_token * self.max_len, free_memory(gpu), share=0.5), True

    def _chat_template(self, tokenizer: Any) -> tuple[Any, str | None]:
        from xnb.engines.chat_template import ChatTemplate

        if self.options.chat_template:
            source, origin = self.options.chat_template, "custom"
        elif self.spec.chat_template:
            source, origin = self.spec.chat_template, "catalog"
        else:
            source, origin = tokenizer.chat_template, "tokenizer"
            if isinstance(source, dict):  # named templates: the default one serves chat
                source = source.get("default") or next(iter(source.values()), None)
        if not source:
            return None, None
        template = ChatTemplate(
            source, bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or ""
        )
        return template, origin

    @property
    def max_concurrency(self) -> int:
        return self._max_num_seqs or self.options.max_num_seqs or 1

    def unload(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
            self.scheduler = None
        model, self._model = self._model, None
        self._tokenizer = None
        if model is not None and model.device.type == "cuda":
            del model
            self._torch.cuda.empty_cache()

    def stats(self) -> dict[str, Any]:
        return self.scheduler.stats() if self.scheduler is not None else {}

    # -- prompts ------------------------------------------------------------------------------

    def tokenize_prompt(self, text: str, *, chat: bool) -> list[int]:
        """Token ids of a prompt; a chat prompt gets BOS only if its template left it out."""
        tokenizer = self._tokenizer
        if not chat:
            return list(tokenizer(text, add_special_tokens=True)["input_ids"])
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        bos = tokenizer.bos_token
        if self._adds_bos and bos and not text.startswith(bos):
            ids.insert(0, tokenizer.bos_token_id)
        return ids

    def tokenize(self, text: str, request: GenerateRequest) -> list[int]:
        return self.tokenize_prompt(text, chat=request.kind == "chat")

    def prepare(self, request: GenerateRequest) -> Prompt:
        """The base checks, then this engine's own: logit_bias token ids must exist."""
        prompt = super().prepare(request)
        bias = request.params.logit_bias or {}
        vocab = len(self._tokenizer)
        bad = [t for t in bias if not 0 <= int(t) < max(vocab, self._model.config.vocab_size)]
        if bad:
            raise InvalidRequest(f"logit_bias names unknown token ids: {bad[:5]}", param="logit_bias")
        return prompt

    # -- generation ---------------------------------------------------------------------------

    def start(self, request: GenerateRequest, prompt: Prompt, sink: Sink) -> None:
        from xnb.engines.transformers_batch import TorchSequence

        assert prompt.ids is not None and prompt.max_new is not None
        params = request.params
        if request.echo:
            sink.put(0, prompt.text)
        seq = TorchSequence(
            sink=sink, ids=list(prompt.ids), n_prompt=len(prompt.ids), max_new=prompt.max_new,
            sampler=Sampler(self._torch, params),
            stop=StopChecker(prompt.stops),
            detok=IncrementalDetokenizer(self._tokenizer),
            eos=frozenset() if params.ignore_eos else self._eos,
            logprobs=(params.top_logprobs or 0) if params.logprobs else None,
            piece=self._token_bytes,
        )
        self.scheduler.submit(seq)

    def abort(self, sink: Sink) -> None:
        sink.cancelled.set()
        if self.scheduler is not None:
            self.scheduler.wake()
