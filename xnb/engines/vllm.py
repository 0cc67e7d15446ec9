"""The vLLM engine: safetensors checkpoints on NVIDIA GPUs, continuous batching by vLLM.

vLLM runs its own asyncio engine; this engine keeps it on a private event-loop
thread and bridges each request's ``RequestOutput`` stream into a
:class:`~xnb.engines.base.Sink`.  Chat prompts are rendered with xnb's sandboxed
chat template (the checkpoint's ``tokenizer_config.json`` template), like every
other engine.

Not exercised by the test suite: it needs a GPU and the ``vllm`` package
(``pip install 'xnb[vllm]'`` on a GPU worker).  The Supervisor gives a replica
whole GPUs (``CUDA_VISIBLE_DEVICES`` for vLLM's worker processes is set from
them) and workers must be non-daemonic, which xnb's workers are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import uuid
from typing import Any

from pydantic import Field

from xnb.engines.base import (
    BASE_PARAMS,
    Engine,
    EngineOptions,
    Prompt,
    GenerateRequest,
    Sink,
    StopChecker,
)
from xnb.errors import EngineError, LaunchFailed, XnbError

__all__ = ["VllmEngine", "VllmOptions"]

logger = logging.getLogger(__name__)


class VllmOptions(EngineOptions):
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_model_len: int | None = Field(default=None, ge=64)
    max_num_seqs: int = Field(default=64, ge=1)
    dtype: str = "auto"
    quantization: str | None = None
    enforce_eager: bool = False
    trust_remote_code: bool = False
    chat_template: str | None = None


class VllmEngine(Engine):
    name = "vllm"
    abilities = frozenset({"chat", "generate"})
    formats = frozenset({"pytorch"})
    can_constrain = True
    supported_params = BASE_PARAMS | {
        "top_k", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty", "json_schema", "n",
        "ignore_eos",
    }
    requires_gpu = True
    requires = ("vllm",)
    Options = VllmOptions

    options: VllmOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine: Any = None  # set by load()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def load(self) -> dict[str, Any]:
        if not self.resources.gpus:
            raise LaunchFailed("the vLLM engine needs a GPU; launch it with --gpus 1 on a GPU worker")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in self.resources.gpus)
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        from xnb.engines.chat_template import ChatTemplate

        opts = self.options
        args = AsyncEngineArgs(
            model=str(self.model_path),
            tensor_parallel_size=len(self.resources.gpus),
            gpu_memory_utilization=opts.gpu_memory_utilization,
            max_model_len=opts.max_model_len or self.spec.context_length,
            max_num_seqs=opts.max_num_seqs,
            dtype=opts.dtype,
            quantization=opts.quantization,
            enforce_eager=opts.enforce_eager,
            trust_remote_code=opts.trust_remote_code,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="xnb-vllm", daemon=True)
        self._thread.start()

        async def build() -> Any:
            return AsyncLLMEngine.from_engine_args(args)

        self._engine = asyncio.run_coroutine_threadsafe(build(), self._loop).result()
        tokenizer = AutoTokenizer.from_pretrained(str(self.model_path), trust_remote_code=opts.trust_remote_code)
        source = opts.chat_template or self.spec.chat_template or getattr(tokenizer, "chat_template", None)
        self.template = (
            ChatTemplate(source, bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "")
            if source else None
        )
        self._tokenizer = tokenizer
        self._running: dict[int, str] = {}
        return {"gpus": list(self.resources.gpus), "max_model_len": args.max_model_len}

    @property
    def max_concurrency(self) -> int:
        return self.options.max_num_seqs

    def start(self, request: GenerateRequest, prompt: Prompt, sink: Sink) -> None:
        params = self._sampling(request)
        asyncio.run_coroutine_threadsafe(self._generate(prompt, params, request, sink), self._loop)

    def _sampling(self, request: GenerateRequest) -> Any:
        from vllm import SamplingParams

        p = request.params
        extra: dict[str, Any] = {}
        if p.json_schema is not None:
            from vllm.sampling_params import GuidedDecodingParams

            extra["guided_decoding"] = GuidedDecodingParams(json=json.dumps(p.json_schema or {"type": "object"}))
        return SamplingParams(
            n=request.n,
            max_tokens=p.max_tokens,
            temperature=1.0 if p.temperature is None else p.temperature,
            top_p=1.0 if p.top_p is None else p.top_p,
            top_k=p.top_k or -1,
            min_p=p.min_p or 0.0,
            seed=p.seed,
            presence_penalty=p.presence_penalty or 0.0,
            frequency_penalty=p.frequency_penalty or 0.0,
            repetition_penalty=p.repeat_penalty or 1.0,
            ignore_eos=p.ignore_eos,
            **extra,
        )

    async def _generate(self, prompt: Prompt, params: Any, request: GenerateRequest, sink: Sink) -> None:
        request_id = uuid.uuid4().hex
        stops = [StopChecker(prompt.stops) for _ in range(request.n)]
        sent = [0] * request.n
        done = [False] * request.n
        prompt_tokens = completion_tokens = 0
        try:
            if request.echo:
                for i in range(request.n):
                    sink.put(i, prompt.text)
            async for output in self._engine.generate(prompt.text, params, request_id):
                if sink.cancelled.is_set():
                    await self._engine.abort(request_id)
                    for i in range(request.n):
                        if not done[i]:
                            sink.finish(i, "abort")
                    break
                prompt_tokens = len(output.prompt_token_ids or [])
                for choice in output.outputs:
                    i = choice.index
                    if done[i]:
                        continue
                    new = choice.text[sent[i]:]
                    sent[i] = len(choice.text)
                    safe, stopped = stops[i].feed(new)
                    sink.put(i, safe)
                    if stopped:
                        done[i] = True
                        sink.finish(i, "stop")
                    elif choice.finish_reason:
                        done[i] = True
                        sink.finish(i, "length" if choice.finish_reason == "length" else "stop",
                                    stops[i].flush())
                completion_tokens = sum(len(c.token_ids) for c in output.outputs)
            sink.close(prompt_tokens, completion_tokens)
        except XnbError as exc:
            sink.fail(exc)
        except Exception as exc:  # vLLM failed this request: keep the model up
            logger.exception("vLLM request failed")
            sink.fail(EngineError(f"vLLM failed the request: {type(exc).__name__}"))

    def abort(self, sink: Sink) -> None:
        sink.cancelled.set()

    def unload(self) -> None:
        engine = self._engine
        if engine is not None:
            shutdown = getattr(engine, "shutdown", None)
            if callable(shutdown):
                shutdown()
            self._engine = None
        loop = self._loop
        if loop is not None and self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=10)
