"""The llama.cpp engine: GGUF models through llama-cpp-python's low-level API.

Text generation goes through :class:`~xnb.engines.llama_batch.BatchScheduler`
(continuous batching: many concurrent requests decode in one batch).  Chat
prompts are rendered with the chat template the GGUF carries (or the
catalog's), in a Jinja sandbox.  Embeddings use a second context created on
first use, for models whose family says they embed.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import sys
import threading
from typing import Any, Literal

from pydantic import Field

from xnb.engines.base import (
    BASE_PARAMS,
    EmbedResult,
    Engine,
    Prompt,
    EngineOptions,
    GenerateRequest,
    Sink,
)
from xnb.engines.text import StopChecker
from xnb.errors import InvalidRequest, LaunchFailed, UnsupportedParameter
from xnb.openai.tools import auto_choice, tools_grammar

__all__ = ["LlamaCppEngine", "LlamaCppOptions"]

logger = logging.getLogger(__name__)
_llama_logger = logging.getLogger("xnb.llama_cpp.native")


class LlamaCppOptions(EngineOptions):
    """Launch options of the llama.cpp engine."""

    n_ctx: int | None = Field(
        default=None, ge=64,
        description="context of each sequence (KV cells per slot); default min(context length, 2048)",
    )
    max_num_seqs: int | None = Field(
        default=None, ge=1, le=64, description="sequences decoded in one batch; default: as many "
        "n_ctx KV streams as fit in a quarter of free memory, at most 16")
    n_batch: int = Field(default=512, ge=32, description="most tokens evaluated in one step")
    prefill_chunk: int = Field(
        default=32, ge=2, le=63, description="prompt tokens a sequence evaluates per step (under 64 keeps output batch-invariant)"
    )
    prefix_cache: bool = Field(default=True, description="keep finished sequences' KV for prefix reuse")
    n_threads: int | None = Field(default=None, ge=1, description="default: the replica's cores")
    n_gpu_layers: int | None = Field(
        default=None, description="layers offloaded to the GPU (-1: all); default: all when the replica has GPUs"
    )
    flash_attn: bool | None = Field(default=None, description="None: llama.cpp decides")
    kv_type: Literal["f16", "q8_0"] = "f16"
    use_mmap: bool = True
    chat_template: str | None = Field(default=None, description="override the GGUF's template")


_GGML_TYPES = {"f16": 1, "q8_0": 8}
_KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32}  # per element (q8_0: 32 values in 34 bytes)
_backend_lock = threading.Lock()
_backend_ready = False


def _init_backend() -> None:
    """Initialise llama.cpp once per process and route its log through `logging`."""
    global _backend_ready, _log_callback
    with _backend_lock:
        if _backend_ready:
            return
        _share_libstdcxx()
        import llama_cpp

        levels = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}

        @llama_cpp.llama_log_callback
        def _log(level: int, text: bytes, _user: Any) -> None:
            _llama_logger.log(levels.get(level, logging.DEBUG), "%s", text.decode("utf-8", "replace").rstrip())

        _log_callback = _log  # keep a reference: llama.cpp holds the pointer
        llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _backend_ready = True


_log_callback: Any = None


def _share_libstdcxx() -> None:
    """Put the C++ runtime in the process's global symbol scope before llama.cpp loads.

    Seen on an H200 with a CUDA build of llama-cpp-python (GCC 13, CUDA 13): when
    numpy had loaded libstdc++ first (every Dask worker imports numpy), llama.cpp
    bound some C++ runtime symbols to copies inside libggml-cuda.so and crashed
    (SIGSEGV compiling the tokenizer's std::regex in ``llama_model_load_from_file``),
    taking the worker down.  With libstdc++ global, every library binds to the one
    runtime.  Harmless where there is no such problem (it is already loaded).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libstdc++.so.6", mode=ctypes.RTLD_GLOBAL)
    except OSError:  # no system C++ runtime under that name: nothing to share
        pass


class LlamaCppEngine(Engine):
    name = "llama-cpp"
    abilities = frozenset({"chat", "generate", "embed"})
    formats = frozenset({"gguf"})
    can_constrain = True
    supported_params = BASE_PARAMS | {
        "top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty",
        "logit_bias", "grammar", "json_schema", "ignore_eos", "n", "tools",
        "logprobs", "top_logprobs",
    }
    requires = ("llama_cpp",)
    Options = LlamaCppOptions

    options: LlamaCppOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Native handles, set by load() and freed by unload().
        self._model: Any = None
        self._ctx: Any = None
        self._embed_ctx: Any = None
        self._embed_lock = threading.Lock()
        self.scheduler: Any = None  # llama_batch.BatchScheduler once loaded
        self._max_num_seqs = 0  # chosen by load()

    def load(self) -> dict[str, Any]:
        _init_backend()
        import llama_cpp

        from xnb.engines.chat_template import ChatTemplate
        from xnb.engines.llama_batch import BatchScheduler
        from xnb.engines.llama_native import Vocab

        opts = self.options
        mparams = llama_cpp.llama_model_default_params()
        gpus = self.resources.gpus
        if gpus and not llama_cpp.llama_supports_gpu_offload():
            raise LaunchFailed(
                f"this replica was given GPU {gpus}, but the worker's llama-cpp-python was built "
                "without GPU support, so the model would run on the CPU; reinstall it there with "
                "CMAKE_ARGS='-DGGML_CUDA=on' pip install --force-reinstall --no-binary llama-cpp-python "
                "llama-cpp-python, or launch with gpus=0"
            )
        if gpus:  # the Supervisor gave this replica these devices
            mparams.n_gpu_layers = -1 if opts.n_gpu_layers is None else opts.n_gpu_layers
            mparams.main_gpu = gpus[0]
            if len(gpus) == 1:
                mparams.split_mode = llama_cpp.LLAMA_SPLIT_MODE_NONE
        else:
            mparams.n_gpu_layers = 0
        mparams.use_mmap = opts.use_mmap
        model = llama_cpp.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not model:
            raise LaunchFailed(
                f"llama.cpp could not load {self.model_path.name}: is it a GGUF file this "
                "llama-cpp-python version supports? (`xnb cached` shows where it is)"
            )
        self._model = model
        n_ctx_train = llama_cpp.llama_model_n_ctx_train(model)
        n_ctx_seq = opts.n_ctx or min(self.spec.context_length, n_ctx_train or 2048, 2048)
        threads = opts.n_threads or max(1, self.resources.threads)
        n_seqs = opts.max_num_seqs or self._default_num_seqs(model, n_ctx_seq)
        self._max_num_seqs = n_seqs
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx_seq * n_seqs
        cparams.n_batch = opts.n_batch
        cparams.n_ubatch = opts.n_batch
        cparams.n_seq_max = n_seqs
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = False  # one KV stream per slot: see llama_batch's docstring
        cparams.no_perf = True
        cparams.type_k = cparams.type_v = _GGML_TYPES[opts.kv_type]
        if opts.flash_attn is not None:
            cparams.flash_attn_type = 1 if opts.flash_attn else 0
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise LaunchFailed(
                f"llama.cpp could not create a context of {n_ctx_seq} × {n_seqs} tokens; "
                "try a smaller n_ctx or max_num_seqs"
            )
        self._ctx = ctx
        self.n_ctx = llama_cpp.llama_n_ctx_seq(ctx)
        self.max_len = min(self.n_ctx, self.spec.context_length)
        self.vocab = Vocab(model)
        self.threads = threads
        source = opts.chat_template or self.spec.chat_template
        if source is None:
            raw = llama_cpp.llama_model_chat_template(model, None)
            source = raw.decode("utf-8") if raw else None
        self.template = (
            ChatTemplate(
                source,
                bos_token=self.vocab.token_text(self.vocab.bos),
                eos_token=self.vocab.token_text(self.vocab.eos),
            )
            if source
            else None
        )
        self.scheduler = BatchScheduler(
            ctx,
            self.vocab,
            n_ctx=self.n_ctx,
            max_num_seqs=n_seqs,
            n_batch=opts.n_batch,
            prefill_chunk=opts.prefill_chunk,
            prefix_cache=opts.prefix_cache,
        )
        return {
            "n_ctx": self.n_ctx,
            "threads": threads,
            "max_num_seqs": n_seqs,
            "max_num_seqs_source": "option" if opts.max_num_seqs else "auto",
            "gpus": list(gpus),
            "n_gpu_layers": int(mparams.n_gpu_layers),
            "model_bytes": int(llama_cpp.llama_model_size(model)),
            "chat_template": "gguf" if source and not opts.chat_template and not self.spec.chat_template else ("custom" if source else None),
        }

    def _default_num_seqs(self, model: Any, n_ctx_seq: int) -> int:
        """Slots whose KV streams (allocated up front) fit in a quarter of the free
        memory of the replica's GPU, or of the host (:mod:`xnb.engines.sizing`)."""
        import llama_cpp

        from xnb.engines.sizing import default_max_num_seqs, free_memory

        heads = max(1, llama_cpp.llama_model_n_head(model))
        head_dim = llama_cpp.llama_model_n_embd(model) // heads
        kv_width = llama_cpp.llama_model_n_head_kv(model) * head_dim  # per K and per V, per layer
        cell_bytes = 2 * llama_cpp.llama_model_n_layer(model) * kv_width * _KV_BYTES[self.options.kv_type]
        gpus = self.resources.gpus
        return default_max_num_seqs(int(cell_bytes * n_ctx_seq), free_memory(gpus[0] if gpus else None))

    @property
    def max_concurrency(self) -> int:
        return self._max_num_seqs or self.options.max_num_seqs or 1

    def unload(self) -> None:
        import llama_cpp

        if self.scheduler is not None:
            self.scheduler.close()
            self.scheduler = None
        if self._embed_ctx:
            llama_cpp.llama_free(self._embed_ctx)
            self._embed_ctx = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    # -- generation ------------------------------------------------------------------------

    def tokenize_prompt(self, text: str) -> list[int]:
        bos_text = self.template.bos_token if self.template else ""
        add_bos = self.vocab.add_bos and not (bos_text and text.startswith(bos_text))
        return self.vocab.tokenize(text, add_special=add_bos, parse_special=True)

    context_hint = "shorten it or launch with a larger n_ctx"

    def tokenize(self, text: str, request: GenerateRequest) -> list[int]:
        return self.tokenize_prompt(text)

    def submit(self, request: GenerateRequest, sink: Sink) -> None:
        # tool_choice "auto" on a model that over-calls tools: decide here, once, for both steps.
        if request.tools and request.tool_choice == "auto" and self.spec.tool_auto == "relevance":
            request = request.model_copy(update={"tool_choice": auto_choice(request.messages or [], request.tools)})
        super().submit(request, sink)

    def start(self, request: GenerateRequest, prompt: Prompt, sink: Sink) -> None:
        from xnb.engines.llama_batch import Sequence, SequenceGroup
        from xnb.engines.llama_native import build_sampler, is_plain_greedy

        text = prompt.text
        assert prompt.ids is not None
        tokens = prompt.ids
        params = request.params
        bad = [t for t in params.logit_bias or {} if not 0 <= t < self.vocab.n_tokens]
        if bad:
            raise InvalidRequest(
                f"logit_bias names token {bad[0]}, but this model's vocabulary has tokens 0 to "
                f"{self.vocab.n_tokens - 1}", param="logit_bias",
            )
        if request.tools:
            grammar = tools_grammar(request.tools, request.tool_choice, request.parallel_tool_calls)
        else:
            grammar = self._grammar(params.grammar, params.json_schema)
        group = SequenceGroup(sink, request.n, len(tokens))
        stops = prompt.stops
        seqs = []
        for i in range(request.n):
            p = params if params.seed is None or i == 0 else params.model_copy(update={"seed": params.seed + i})
            try:
                sampler = build_sampler(self.vocab, p, grammar)
            except ValueError as exc:
                raise InvalidRequest(str(exc), param="response_format") from None
            if request.echo:
                sink.put(i, text)
            seqs.append(
                Sequence(group=group, index=i, tokens=list(tokens), n_prompt=len(tokens),
                         params=p, max_len=self.max_len, sampler=sampler, stop=StopChecker(stops),
                         greedy=is_plain_greedy(p, grammar))
            )
        self.scheduler.submit(seqs)

    def abort(self, sink: Sink) -> None:
        sink.cancelled.set()
        if self.scheduler is not None:
            self.scheduler.wake()

    @staticmethod
    def _grammar(grammar: str | None, schema: dict[str, Any] | None) -> str | None:
        if grammar:
            return grammar
        if schema is None:
            return None
        from llama_cpp import llama_grammar

        if not schema:
            return llama_grammar.JSON_GBNF
        try:
            return llama_grammar.json_schema_to_gbnf(json.dumps(schema))
        except (ValueError, KeyError, TypeError, NotImplementedError) as exc:
            raise UnsupportedParameter(
                f"the JSON schema uses a feature llama.cpp grammars cannot express: {exc}",
                param="response_format",
            ) from None

    # -- embeddings ---------------------------------------------------------------------------

    def embed(self, texts: list[str], *, normalize: bool | None = None) -> EmbedResult:
        import llama_cpp

        from xnb.engines.llama_native import native_call

        if "embed" not in self.spec.abilities:
            raise UnsupportedParameter(
                f"{self.spec.model_name!r} is not an embedding model", param="model"
            )
        with self._embed_lock:
            ctx = self._embedding_context()
            n_embd = llama_cpp.llama_model_n_embd(self._model)
            batch = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)
            vectors: list[list[float]] = []
            total = 0
            try:
                for text in texts:
                    tokens = self.vocab.tokenize(text, add_special=True, parse_special=False)
                    tokens = tokens[: self.n_ctx]
                    total += len(tokens)
                    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
                    for i, tok in enumerate(tokens):
                        batch.token[i] = tok
                        batch.pos[i] = i
                        batch.n_seq_id[i] = 1
                        batch.seq_id[i][0] = 0
                        batch.logits[i] = 1
                    batch.n_tokens = len(tokens)
                    run = llama_cpp.llama_encode if llama_cpp.llama_model_has_encoder(self._model) else llama_cpp.llama_decode
                    if native_call(run, ctx, batch) != 0:
                        raise InvalidRequest("llama.cpp could not embed this input", param="input")
                    ptr = llama_cpp.llama_get_embeddings_seq(ctx, 0)
                    vec = [ptr[j] for j in range(n_embd)]
                    if normalize is not False:
                        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
                        vec = [v / norm for v in vec]
                    vectors.append(vec)
            finally:
                llama_cpp.llama_batch_free(batch)
        return EmbedResult(vectors=vectors, prompt_tokens=total)

    def _embedding_context(self) -> Any:
        import llama_cpp

        if self._embed_ctx is None:
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = self.n_ctx
            cparams.n_batch = cparams.n_ubatch = self.n_ctx
            cparams.n_threads = cparams.n_threads_batch = self.threads
            cparams.embeddings = True
            cparams.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
            ctx = llama_cpp.llama_init_from_model(self._model, cparams)
            if ctx and llama_cpp.llama_pooling_type(ctx) == llama_cpp.LLAMA_POOLING_TYPE_NONE:
                # A causal LM has no pooling of its own: mean-pool its hidden states.
                llama_cpp.llama_free(ctx)
                cparams.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
                ctx = llama_cpp.llama_init_from_model(self._model, cparams)
            if not ctx:
                raise InvalidRequest("llama.cpp could not create an embedding context", param="model")
            self._embed_ctx = ctx
        return self._embed_ctx

    def stats(self) -> dict[str, Any]:
        return self.scheduler.stats() if self.scheduler is not None else {}
