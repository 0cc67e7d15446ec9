"""The Hugging Face transformers engine: causal LMs from a model folder or a GGUF file.

GGUF files load with ``from_pretrained(folder, gguf_file=name)``: transformers
dequantizes them (memory of the unquantized model; needs the ``gguf`` package).
Chat prompts are rendered by xnb's sandboxed :class:`~xnb.engines.chat_template.ChatTemplate`
(option, catalog or tokenizer template), never ``tokenizer.apply_chat_template``.

Generation is a token loop over the KV cache on an engine thread: a per-request
``torch.Generator`` (a ``seed`` reproduces an answer while other requests run),
incremental detokenization that never splits a character, stop strings, and a
``sink.cancelled`` check before every step.  torch is imported only in ``load``;
on CPU ``load`` calls ``torch.set_num_threads``, which is per *process* (all torch
models of a worker process share it; the last replica loaded wins).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import re
import threading
import time
from typing import Any, Literal

from pydantic import Field

from xnb.engines.base import (
    BASE_PARAMS,
    EngineOptions,
    GenerateRequest,
    Prompt,
    SamplingParams,
    Sink,
    StopChecker,
    ThreadedEngine,
)
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
    max_concurrency: int = Field(default=1, ge=1, le=64, description="requests generated at once")
    chat_template: str | None = Field(
        default=None, description="override the catalog's and the tokenizer's chat template")


class IncrementalDetokenizer:
    """Token ids → text deltas, never splitting a multi-byte character.

    Decodes a small window of recent tokens (so tokenizers whose text depends on
    the neighbouring token, like SentencePiece's leading spaces, decode right)
    and holds text back while it ends in U+FFFD, i.e. a partial UTF-8 sequence.
    Special tokens render as nothing, as in the llama.cpp engine.
    """

    __slots__ = ("_tokenizer", "ids", "_prefix", "_read")

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is held back (an incomplete character decodes as U+FFFD)."""
        if self._read == len(self.ids):
            return ""
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return after[len(before) :]


class TransformersEngine(ThreadedEngine):
    name = "transformers"
    abilities = frozenset({"chat", "generate"})
    formats = frozenset({"pytorch", "gguf"})
    supported_params = BASE_PARAMS | {
        "top_k", "min_p", "repeat_penalty", "logit_bias", "ignore_eos",
    }
    requires = ("transformers", "torch")
    Options = TransformersOptions

    options: TransformersOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: Any = None  # set by load()
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._counters: dict[str, float] = dict.fromkeys(
            ("requests", "prompt_tokens", "tokens_generated", "active", "sequences_finished",
             "sequences_aborted", "decode_seconds"), 0)

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
        self._eos = _eos_ids(model, tokenizer)
        self._adds_bos = _adds_bos(tokenizer)
        self.template, template_origin = self._chat_template(tokenizer)
        logger.info("transformers loaded %s (%s) on %s as %s", self.spec.model_name, path.name,
                    self._device, model.dtype)
        return {
            "n_ctx": self.max_len,
            "device": str(self._device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
            "max_concurrency": opts.max_concurrency,
            "parameters": sum(p.numel() for p in model.parameters()),
            "chat_template": template_origin,
            "gguf": "gguf_file" in kwargs,
        }

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
        return self.options.max_concurrency

    def unload(self) -> None:
        super().unload()
        model, self._model = self._model, None
        self._tokenizer = None
        if model is not None and model.device.type == "cuda":
            del model
            self._torch.cuda.empty_cache()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self._counters)
        secs = out.pop("decode_seconds")
        out["decode_tokens_per_second"] = round(out["tokens_generated"] / secs, 2) if secs else None
        return out

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

    def generate(self, request: GenerateRequest, prompt: Prompt, sink: Sink) -> None:
        assert prompt.ids is not None
        if request.echo:
            sink.put(0, prompt.text)
        with self._lock:
            self._counters["requests"] += 1
            self._counters["prompt_tokens"] += len(prompt.ids)
            self._counters["active"] += 1
        try:
            reason, generated, tail = self._decode(prompt, request.params, sink)
        finally:
            with self._lock:
                self._counters["active"] -= 1
        with self._lock:
            key = "sequences_aborted" if reason == "abort" else "sequences_finished"
            self._counters[key] += 1
        sink.finish(0, reason, tail)
        sink.close(len(prompt.ids), generated)

    def _decode(self, prompt: Prompt, params: SamplingParams, sink: Sink) -> tuple[str, int, str]:
        """The token loop: ``(finish reason, tokens generated, text still to send)``."""
        torch, model = self._torch, self._model  # unload() may drop self._model meanwhile
        sampler = _Sampler(torch, params)
        detok = IncrementalDetokenizer(self._tokenizer)
        assert prompt.ids is not None and prompt.max_new is not None
        stop = StopChecker(prompt.stops)
        eos = set() if params.ignore_eos else self._eos
        history = torch.tensor([prompt.ids], dtype=torch.long, device=self._device)
        step_input = history
        cache = None
        generated = 0
        reason = "length"
        by_string = False
        started = time.monotonic()
        with torch.inference_mode():
            while generated < prompt.max_new:
                if sink.cancelled.is_set():
                    reason = "abort"
                    break
                out = model(input_ids=step_input, use_cache=True, **{self._cache_arg: cache},
                            **self._forward_extra)
                cache = getattr(out, self._cache_arg)
                token = sampler.sample(history, out.logits[:, -1, :])
                generated += 1
                if token in eos:
                    reason = "stop"
                    break
                step_input = torch.tensor([[token]], dtype=torch.long, device=self._device)
                history = torch.cat([history, step_input], dim=1)
                text = detok.push(token)
                if text:
                    safe, by_string = stop.feed(text)
                    sink.put(0, safe)
                    if by_string:
                        reason = "stop"
                        break
        with self._lock:
            self._counters["tokens_generated"] += generated
            self._counters["decode_seconds"] += time.monotonic() - started
        if reason == "abort" or by_string:
            return reason, generated, ""
        rest = detok.flush()
        safe, by_string = stop.feed(rest) if rest else ("", False)
        if by_string:
            return "stop", generated, safe
        return reason, generated, safe + stop.flush()


class _Sampler:
    """Next-token choice as ``generate`` makes it, with a per-request generator.

    Repetition penalty and logit bias, then (unless greedy) temperature, top-k,
    top-p, min-p; unset parameters take OpenAI defaults (temperature 1).
    """

    def __init__(self, torch: Any, params: SamplingParams) -> None:
        import transformers as tf

        self._torch = torch
        self._seed = params.seed
        self._generator: Any = None
        self._bias = {int(k): float(v) for k, v in (params.logit_bias or {}).items()}
        temperature = 1.0 if params.temperature is None else params.temperature
        self.greedy = temperature <= 0.0
        procs = tf.LogitsProcessorList()
        if params.repeat_penalty is not None and params.repeat_penalty != 1.0:
            procs.append(tf.RepetitionPenaltyLogitsProcessor(params.repeat_penalty))
        self._penalties = procs
        warpers = tf.LogitsProcessorList()
        if not self.greedy:
            if temperature != 1.0:
                warpers.append(tf.TemperatureLogitsWarper(temperature))
            if params.top_k:
                warpers.append(tf.TopKLogitsWarper(params.top_k))
            if params.top_p is not None and params.top_p < 1.0:
                warpers.append(tf.TopPLogitsWarper(params.top_p))
            if params.min_p:
                warpers.append(tf.MinPLogitsWarper(params.min_p))
        self._warpers = warpers

    def sample(self, history: Any, logits: Any) -> int:
        """One token id from the last position's ``logits`` (shape ``(1, vocab)``)."""
        torch = self._torch
        scores = logits.float()
        scores = self._penalties(history, scores)
        if self._bias:
            ids = torch.tensor(list(self._bias), device=scores.device)
            ids = ids[ids < scores.shape[-1]]
            values = torch.tensor([self._bias[int(i)] for i in ids], device=scores.device)
            scores[0, ids] += values
        if self.greedy:
            return int(scores.argmax(dim=-1)[0])
        scores = self._warpers(history, scores)
        probs = torch.softmax(scores, dim=-1)
        if self._generator is None:
            self._generator = torch.Generator(device=scores.device)
            if self._seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(self._seed & 0xFFFF_FFFF_FFFF_FFFF)
        return int(torch.multinomial(probs, 1, generator=self._generator)[0, 0])


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a generation: the generation config's and the tokenizer's EOS."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(i) for i in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front of text it tokenizes with special tokens."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id
