"""The engine protocol and the neutral types engines deal in.

An engine loads one model replica and serves it.  It never builds OpenAI
shapes: it takes a :class:`GenerateRequest` and pushes text deltas, a finish
reason and token counts into a :class:`Sink`.  :mod:`xnb.openai.shapes`
turns those into OpenAI objects, once, for every engine.

Capabilities are class attributes (``abilities``, ``formats``,
``can_constrain``, ``supported_params``) so the catalog, the API and the CLI
can reason about an engine without loading anything; per-engine launch options
are a pydantic model with ``extra="forbid"`` (:attr:`Engine.Options`).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from xnb.errors import EngineError, InvalidRequest, UnsupportedParameter, XnbError
from xnb.protocol import MAX_TOP_LOGPROBS, Delta, TokenLogprob

__all__ = [
    "Engine",
    "EngineOptions",
    "SamplingParams",
    "GenerateRequest",
    "EmbedResult",
    "ReplicaResources",
    "Sink",
    "ThreadedEngine",
    "FinishReason",
    "Prompt",
]

if TYPE_CHECKING:
    from xnb.catalog.schema import LaunchSpec
    from xnb.engines.media import ImageRequest, RerankResult, SpeechRequest, TranscribeRequest
    from xnb.engines.chat_template import ChatTemplate

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "tool_calls", "abort", "error"]

#: Sampling parameters every engine understands (the OpenAI core set).
BASE_PARAMS = frozenset({"max_tokens", "temperature", "top_p", "stop", "seed"})


class EngineOptions(BaseModel):
    """Base of per-engine launch options; unknown options are an error."""

    model_config = ConfigDict(extra="forbid")


class SamplingParams(BaseModel):
    """Neutral sampling parameters; ``None`` means "the engine's default"."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[int, float] | None = None
    grammar: str | None = Field(default=None, description="GBNF grammar constraining output")
    json_schema: dict[str, Any] | None = Field(
        default=None, description="JSON schema constraining output ({} = any JSON object)"
    )
    ignore_eos: bool = False
    logprobs: bool = False  # report each generated token's log-probability (protocol.TokenLogprob)
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)  # alternatives per position

    def set_fields(self) -> set[str]:
        """Names of parameters the caller actually set (to check engine support)."""
        out = set()
        for name in self.model_fields_set:
            value = getattr(self, name)
            if value is None or value == [] or value is False:
                continue
            out.add(name)
        return out


class GenerateRequest(BaseModel):
    """A chat or text-completion request in engine-neutral form."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["chat", "completion"]
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    tools: list[dict[str, Any]] | None = Field(
        default=None, description="validated tools (xnb.openai.tools.validate_tools)"
    )
    tool_choice: str = Field(default="auto", description="none, auto, required or a function name")
    parallel_tool_calls: bool = True
    n: int = Field(default=1, ge=1, le=16)
    echo: bool = False
    params: SamplingParams = Field(default_factory=SamplingParams)


@dataclass
class Prompt:
    """A request made ready by :meth:`Engine.prepare`: checked, rendered, tokenized."""

    text: str
    ids: list[int] | None  # None: the engine tokenizes inside its own library (vLLM)
    stops: list[str]  # the request's stop strings, then the model's
    max_new: int | None  # tokens left for the answer (None: the engine decides)


@dataclass
class EmbedResult:
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass
class ReplicaResources:
    """What the supervisor gave this replica: threads and GPU indices."""

    threads: int = 1
    gpus: list[int] = field(default_factory=list)


class Sink:
    """Where an engine puts one request's output; thread-safe.

    The engine calls :meth:`put` with text deltas per choice ``index`` (with ``params.logprobs``,
    their tokens' :class:`~xnb.protocol.TokenLogprob`), :meth:`finish` once per choice, then
    :meth:`close` with usage; or :meth:`fail`.  Readers (the model actor) are woken through ``notify``.
    ``cancelled`` is set when the client aborts: engines check it between
    tokens and stop with finish reason ``"abort"``.
    """

    __slots__ = ("_lock", "_items", "done", "usage", "error", "cancelled", "notify", "n")

    def __init__(self, n: int = 1, notify: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._items: list[Delta] = []
        self.n = n
        self.done = False
        self.usage: dict[str, int] | None = None
        self.error: dict[str, Any] | None = None
        self.cancelled = threading.Event()
        self.notify = notify

    def put(self, index: int, text: str, logprobs: list[TokenLogprob] | None = None) -> None:
        if text or logprobs:
            with self._lock:
                self._items.append((index, text, None, logprobs))
            self._wake()

    def finish(self, index: int, reason: str, text: str = "", logprobs: list[TokenLogprob] | None = None) -> None:
        with self._lock:
            self._items.append((index, text, reason, logprobs))
        self._wake()

    def close(self, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self.usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            self.done = True
        self._wake()

    def fail(self, error: XnbError) -> None:
        with self._lock:
            self.error = error.to_dict()
            self.done = True
        self._wake()

    def has_output(self) -> bool:
        """Whether a pull would return something now."""
        return bool(self._items) or self.done

    def take(self) -> list[Delta]:
        """Every delta produced since the last take (the pull side)."""
        with self._lock:
            items, self._items = self._items, []
        return items

    def _wake(self) -> None:
        if self.notify is not None:
            self.notify()


class Engine(ABC):
    """One loaded model replica.  Subclasses set the class attributes below."""

    #: Registry name, e.g. ``"llama-cpp"``.
    name: ClassVar[str]
    #: What the engine can do with a model: chat, generate, embed, rerank.
    abilities: ClassVar[frozenset[str]]
    #: Weight formats it loads.
    formats: ClassVar[frozenset[str]]
    #: Whether it can constrain output with a grammar / JSON schema.
    can_constrain: ClassVar[bool] = False
    #: Sampling parameters it honours; others are refused with a 400.
    supported_params: ClassVar[frozenset[str]] = BASE_PARAMS
    #: Whether it needs a GPU to run at all.
    requires_gpu: ClassVar[bool] = False
    #: Python modules that must be importable on the worker.
    requires: ClassVar[tuple[str, ...]] = ()
    #: Its launch options.
    Options: ClassVar[type[EngineOptions]] = EngineOptions

    def __init__(
        self,
        spec: LaunchSpec,
        model_path: Path,
        options: EngineOptions,
        resources: ReplicaResources,
    ) -> None:
        self.spec = spec
        self.model_path = model_path
        self.options = options
        self.resources = resources
        #: Longest sequence (prompt + answer) in tokens, set by ``load()``; 0: not known.
        self.max_len = 0

    # -- what the catalog and the CLI ask ------------------------------------

    @classmethod
    def can_serve(cls, abilities: list[str], fmt: str) -> bool:
        """Whether this engine can load a spec of this format with these abilities."""
        return fmt in cls.formats and bool(set(abilities) & cls.abilities)

    @classmethod
    def check_params(cls, request: GenerateRequest) -> None:
        """Refuse (400) any parameter this engine cannot honour, by name."""
        unsupported = sorted(request.params.set_fields() - cls.supported_params)
        if request.n > 1 and "n" not in cls.supported_params:
            unsupported.append("n")
        if request.tools and "tools" not in cls.supported_params:
            unsupported.append("tools")
        if unsupported:
            names = ", ".join(unsupported)
            raise UnsupportedParameter(
                f"engine {cls.name!r} cannot honour: {names}. "
                "Remove these parameters or launch the model on an engine that supports them "
                "(`xnb engines NAME` lists the engines for a model).",
                param=unsupported[0],
            )

    # -- lifecycle -------------------------------------------------------------

    #: Set by the model actor: where :meth:`report` sends launch progress.
    progress: Callable[..., None] | None = None

    def report(self, phase: str, **extra: Any) -> None:
        """Tell the launch's watchers how loading goes (e.g. ``report("loading", step=...)``);
        callable from any thread."""
        if self.progress is not None:
            self.progress(phase, **extra)

    @abstractmethod
    def load(self) -> dict[str, Any]:
        """Load the weights (blocking; runs on a thread of the actor).

        Returns facts worth showing (context size, memory, threads).
        """

    def unload(self) -> None:
        """Free memory; the engine is unusable afterwards."""

    @property
    def max_concurrency(self) -> int:
        """How many requests it works on at once (more wait in the actor's queue)."""
        return 1

    # -- prompts -------------------------------------------------------------------

    #: The model's chat template, set by ``load()`` (None: completions only).
    template: "ChatTemplate | None" = None

    def prompt_text(self, request: GenerateRequest) -> str:
        """The text the model sees: the rendered chat template (tools described
        the one xnb way, :func:`xnb.openai.tools.prepare_messages`), or the raw prompt."""
        from xnb.openai.tools import prepare_messages

        if request.kind == "completion":
            return request.prompt or ""
        if self.template is None:
            raise InvalidRequest(
                f"{self.spec.model_name!r} has no chat template; use /v1/completions, or "
                "register the model with a chat_template",
                param="messages",
            )
        messages, template_tools = request.messages or [], None
        if request.tools:
            messages, template_tools = prepare_messages(
                messages, request.tools, request.tool_choice, request.parallel_tool_calls,
                template_knows_tools=self.template.knows_tools,
            )
        return self.template.render(messages, tools=template_tools)

    # -- serving -----------------------------------------------------------------

    def tokenize(self, text: str, request: GenerateRequest) -> list[int] | None:
        """The prompt's token ids (``None``: the engine's library tokenizes later)."""
        return None

    #: What to suggest when a prompt does not fit (appended to the 400's message).
    context_hint: ClassVar[str] = "shorten it"

    def prepare(self, request: GenerateRequest) -> Prompt:
        """The checks every generation passes, once, before anything streams (400s):
        parameters this engine cannot honour, an empty prompt, a prompt longer than
        the context; then the rendered text, its tokens and the stop strings."""
        if not self.abilities & {"chat", "generate"}:
            raise UnsupportedParameter(f"engine {self.name!r} does not generate text", param="model")
        self.check_params(request)
        text = self.prompt_text(request)
        ids = self.tokenize(text, request)
        param = "messages" if request.kind == "chat" else "prompt"
        if not (text if ids is None else ids):
            raise InvalidRequest("the prompt is empty", param=param)
        max_new = request.params.max_tokens
        if ids is not None and self.max_len:
            if len(ids) >= self.max_len:
                raise InvalidRequest(
                    f"this model's context holds {self.max_len} tokens, but the prompt has "
                    f"{len(ids)}; {self.context_hint}",
                    param=param,
                )
            room = self.max_len - len(ids)
            max_new = min(max_new or room, room)
        stops = list(dict.fromkeys([*request.params.stop, *self.spec.stop]))
        return Prompt(text=text, ids=ids, stops=stops, max_new=max_new)

    def submit(self, request: GenerateRequest, sink: Sink) -> None:
        """Check and start a generation (what the model actor calls); returns at once,
        output goes to ``sink``.  Raises the 400s of :meth:`prepare`."""
        self.start(request, self.prepare(request), sink)

    def start(self, request: GenerateRequest, prompt: Prompt, sink: Sink) -> None:
        """Start a prepared generation; returns at once, output goes to ``sink``.
        Engines that generate text implement this."""
        raise UnsupportedParameter(f"engine {self.name!r} does not generate text", param="model")

    def embed(self, texts: list[str], *, normalize: bool | None = None) -> EmbedResult:
        """Embed texts (blocking; runs on a thread of the actor); ``normalize=None``:
        the engine's default."""
        raise UnsupportedParameter(f"engine {self.name!r} does not embed text", param="model")

    # -- speech, rerank, images (requests and results: xnb.engines.media) ----------------

    def rerank(self, query: str, documents: list[str]) -> "RerankResult":
        """Relevance of each document to ``query`` (blocking; runs on a thread of the actor).

        The default ranks as a bi-encoder, by the cosine of :meth:`embed` vectors, so
        every embedding engine reranks; cross-encoder engines override it.
        """
        import numpy as np

        from xnb.engines.media import RerankResult

        if "embed" not in self.abilities:
            raise UnsupportedParameter(f"engine {self.name!r} does not rerank", param="model")
        result = self.embed([query, *documents], normalize=True)
        vectors = np.asarray(result.vectors, dtype=np.float32)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        scores = vectors[1:] @ vectors[0]
        return RerankResult(scores=[float(s) for s in scores], prompt_tokens=result.prompt_tokens)

    def transcribe(self, audio: bytes, request: "TranscribeRequest") -> Iterator[dict[str, Any]]:
        """Speech to text (blocking iterator, run on a thread): first
        ``{"kind": "info", "language", "duration"}``, then one
        ``{"kind": "segment", "id", "start", "end", "text", ...}`` per segment."""
        raise UnsupportedParameter(f"engine {self.name!r} does not transcribe audio", param="model")

    #: Sample rate of :meth:`speak`'s PCM (set by ``load()``).
    sample_rate: int = 0

    def voices(self) -> list[str]:
        """The voices :meth:`speak` takes (speech engines)."""
        return []

    def speak(self, request: "SpeechRequest") -> Iterator[bytes]:
        """Text to speech (blocking iterator, run on a thread): 16-bit mono PCM at
        :attr:`sample_rate`, a chunk per sentence.  Checks run before the first chunk."""
        raise UnsupportedParameter(f"engine {self.name!r} does not speak", param="model")

    def image(self, request: "ImageRequest") -> list[bytes]:
        """Text to image (blocking): ``request.n`` PNG files."""
        raise UnsupportedParameter(f"engine {self.name!r} does not draw images", param="model")

    def abort(self, sink: Sink) -> None:
        """Stop working on the request writing to ``sink`` (its client went away).
        ``sink.cancelled`` is already set; engines that can free a slot sooner override this."""

    def stats(self) -> dict[str, Any]:
        """Engine counters for metrics and tests (requests, tokens, KV use, ...)."""
        return {}


class ThreadedEngine(Engine):
    """Helper base for engines that serve one request per thread.

    Subclasses implement :meth:`generate` (blocking); :meth:`start` runs it on
    a pool of ``max_concurrency`` threads owned by the engine.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool: ThreadPoolExecutor | None = None

    def _ensure_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.max_concurrency, thread_name_prefix=f"xnb-{self.name}"
            )
        return self._pool

    def start(self, request: GenerateRequest, prompt: Prompt, sink: Sink) -> None:
        self._ensure_pool().submit(self._run, request, prompt, sink)

    def _run(self, request: GenerateRequest, prompt: Prompt, sink: Sink) -> None:
        try:
            self.generate(request, prompt, sink)
        except XnbError as exc:
            sink.fail(exc)
        except Exception as exc:  # engine bug or library failure: keep the model up
            logger.exception("engine %s failed a request", self.name)
            sink.fail(EngineError(f"the {self.name} engine failed: {type(exc).__name__}"))

    @abstractmethod
    def generate(self, request: GenerateRequest, prompt: Prompt, sink: Sink) -> None:
        """Serve one prepared request to completion, writing into ``sink``."""

    def unload(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
