"""The Python API: ``xnb.connect()`` → :class:`Client` → :class:`Model` handles.

Both a synchronous API (notebooks, scripts) and an asyncio one
(:func:`connect_async`, :class:`AsyncClient`) sit on the same
:class:`~xnb.manager.ModelManager`; the synchronous one runs the manager's
coroutines on the Dask client's own event-loop thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import logging
from typing import Any, AsyncGenerator, Awaitable, Callable, Iterator, TypeVar, cast

import numpy as np

from xnb.runtime.cluster import (
    find_running_cluster,
    open_dask,
    remove_runtime_file,
    start_local_cluster,
    write_runtime_file,
)
from xnb.errors import ClusterUnavailable, XnbError
from xnb.runtime.cluster_process import ClusterProcess, main_runs_from_a_file
from xnb.manager import ModelManager
from xnb.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse_request,
)
from xnb.openai.media import (
    ImagesRequest,
    RerankRequest,
    SpeechBody,
    TranscriptionRequest,
    transcription_body,
)
from xnb.media_io import AudioInput, in_notebook, read_audio
from xnb.protocol import ModelInfo
from xnb.settings import XnbSettings

__all__ = ["DEFAULT_MAX_TOKENS", "connect", "connect_async", "Client", "AsyncClient", "Model", "AsyncModel"]

#: Longest answer of ``Model.chat`` / ``complete`` (and of ``%%xnb chat``, the panel's chat)
#: when the call names no ``max_tokens``: a small model left unbounded can ramble for
#: minutes.  The HTTP API keeps OpenAI's behaviour (no limit but the context).
DEFAULT_MAX_TOKENS = 512

logger = logging.getLogger(__name__)

Progress = Callable[[ModelInfo], None]


#: Rows of plain JSON records (events, replicas, catalog entries).
Rows = list[dict[str, Any]]
Models = list[ModelInfo]
T = TypeVar("T")


def _log_progress(record: ModelInfo) -> None:
    logger.info("model %s: %s", record["uid"], record["status"])


def _with_default_limit(params: dict[str, Any]) -> dict[str, Any]:
    """``max_tokens`` = :data:`DEFAULT_MAX_TOKENS` unless given (``None``: no limit)."""
    if "max_tokens" not in params and "max_completion_tokens" not in params:
        return {**params, "max_tokens": DEFAULT_MAX_TOKENS}
    return {k: v for k, v in params.items() if v is not None or k not in ("max_tokens", "max_completion_tokens")}


# -- asyncio ---------------------------------------------------------------------------------


class AsyncModel:
    """A launched model (asyncio API).  Results are OpenAI-shaped dicts."""

    def __init__(self, manager: ModelManager, record: ModelInfo) -> None:
        self.manager = manager
        self.uid: str = record["uid"]
        self.record = record

    def __repr__(self) -> str:
        return f"<xnb model {self.uid} ({self.record.get('model_name')}) {self.record.get('status')}>"

    async def refresh(self) -> ModelInfo:
        self.record = await self.manager.describe(self.uid)
        return self.record

    @property
    def status(self) -> str:
        return str(self.record["status"])

    async def wait(self, timeout: float | None = None, on_progress: Progress | None = None) -> "AsyncModel":
        self.record = await self.manager.wait_ready(self.uid, timeout=timeout, on_update=on_progress)
        return self

    async def chat(self, messages: list[dict[str, Any]] | str, *, stream: bool = False, **params: Any) -> Any:
        """OpenAI chat completion (a dict), or an async iterator of chunks when streaming.

        ``max_tokens`` defaults to :data:`DEFAULT_MAX_TOKENS` (512); pass
        ``max_tokens=None`` for no limit but the model's context."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        params = _with_default_limit(params)
        body = parse_request(ChatCompletionRequest, {"model": self.uid, "messages": messages, "stream": stream, **params})
        if stream:
            return self.manager.chat_completion_stream(body)
        return await self.manager.chat_completion(body)

    async def complete(self, prompt: str | list[str], *, stream: bool = False, **params: Any) -> Any:
        """OpenAI text completion (a dict), or an async iterator of chunks when streaming;
        ``max_tokens`` defaults to :data:`DEFAULT_MAX_TOKENS` as in :meth:`chat`."""
        params = _with_default_limit(params)
        body = parse_request(CompletionRequest, {"model": self.uid, "prompt": prompt, "stream": stream, **params})
        if stream:
            return self.manager.completion_stream(body)
        return await self.manager.completion(body)

    async def embed(self, texts: str | list[str], *, normalize: bool | None = None) -> np.ndarray:
        """Embeddings as a float32 array of shape ``(len(texts), dim)``."""
        body = parse_request(EmbeddingRequest, {"model": self.uid, "input": texts})
        vectors, _ = await self.manager.embed(self.uid, body.texts, normalize=normalize)
        return vectors

    async def embeddings(self, input: str | list[str], **params: Any) -> dict[str, Any]:
        """OpenAI embeddings response (a dict)."""
        return await self.manager.embeddings(
            parse_request(EmbeddingRequest, {"model": self.uid, "input": input, **params})
        )

    async def transcribe(self, audio: AudioInput, *, response_format: str = "text", task: str = "transcribe",
                         **params: Any) -> Any:
        """Speech to text from a file path or the file's bytes: the text (``response_format="text"``),
        else the OpenAI body (``json``, ``verbose_json`` dicts; ``srt``, ``vtt`` strings).
        Params: ``language``, ``prompt``, ``temperature``, ``timestamp_granularities``."""
        body = parse_request(TranscriptionRequest, {"model": self.uid, "response_format": response_format, **params})
        items = await self.manager.transcribe(self.uid, read_audio(audio), body.to_engine(task))
        content, _ = transcription_body(items, body.response_format, task)
        return content.strip() if response_format == "text" else content

    async def speak(self, text: str, *, voice: str | None = None, response_format: str = "wav",
                    speed: float = 1.0) -> bytes:
        """Text to speech: the audio file's bytes (WAV by default)."""
        body = parse_request(SpeechBody, {"model": self.uid, "input": text, "voice": voice,
                                          "response_format": response_format, "speed": speed})
        return await self.manager.speech(self.uid, body.to_engine(stream=False))

    async def rerank(self, query: str, documents: list[Any], *, top_n: int | None = None,
                     **params: Any) -> Rows:
        """Documents ranked best first: ``[{"index", "relevance_score", "document"}]``."""
        body = parse_request(RerankRequest, {"model": self.uid, "query": query, "documents": documents,
                                             "top_n": top_n, **params})
        results: Rows = (await self.manager.rerank_response(body))["results"]
        return results

    async def image(self, prompt: str, *, n: int = 1, size: str | None = None, **params: Any) -> Any:
        """Text to image: a PIL image (a list of them when ``n > 1``); Jupyter shows it inline.
        Params: ``seed``, ``steps``, ``guidance_scale``, ``negative_prompt``."""
        from PIL import Image

        body = parse_request(ImagesRequest, {"model": self.uid, "prompt": prompt, "n": n, "size": size, **params})
        pngs = await self.manager.images(self.uid, body.to_engine())
        images = [Image.open(io.BytesIO(png)) for png in pngs]
        return images[0] if n == 1 else images

    async def info(self) -> Rows:
        """Each replica's status and counters."""
        return await self.manager.replica_info(self.uid)

    async def events(self) -> Rows:
        return await self.manager.events(self.uid)

    async def terminate(self) -> dict[str, Any]:
        return await self.manager.terminate(self.uid)


class AsyncClient:
    """asyncio API over an asynchronous Dask client."""

    def __init__(self, dask_client: Any, *, cluster: Any = None, settings: XnbSettings | None = None) -> None:
        self.dask = dask_client
        self.cluster = cluster
        self.settings = settings or XnbSettings()
        self.manager = ModelManager(dask_client, stream_poll_s=self.settings.stream_poll_s)

    @property
    def scheduler_address(self) -> str:
        return str(self.dask.scheduler.address)

    async def launch(self, name: str, *, wait: bool = True, timeout: float | None = None,
                     on_progress: Progress | None = None, **options: Any) -> AsyncModel:
        """Launch a catalog model; ``options`` are :class:`xnb.protocol.LaunchOptions`
        fields (invalid ones raise :class:`~xnb.errors.InvalidRequest`, as over HTTP)."""
        model = AsyncModel(self.manager, await self.manager.launch(name, **options))
        if wait:
            await model.wait(timeout=timeout, on_progress=on_progress)
        return model

    async def get(self, uid: str) -> AsyncModel:
        return AsyncModel(self.manager, await self.manager.describe(uid))

    async def list(self) -> Models:
        return await self.manager.list()

    async def terminate(self, uid: str) -> dict[str, Any]:
        return await self.manager.terminate(uid)

    async def catalog(self, query: str | None = None, **filters: Any) -> Rows:
        return await self.manager.catalog(query, **filters)

    async def cluster_info(self) -> dict[str, Any]:
        return await self.manager.cluster()

    async def scale(self, uid: str, replicas: int) -> ModelInfo:
        return await self.manager.scale(uid, replicas)

    async def register(self, family: dict[str, Any], *, overwrite: bool = False) -> dict[str, Any]:
        return await self.manager.register(family, overwrite=overwrite)

    async def unregister(self, name: str) -> dict[str, Any]:
        return await self.manager.unregister(name)

    async def engines(self, name: str) -> Rows:
        return await self.manager.engines(name)

    async def cached(self) -> dict[str, Rows]:
        return await self.manager.cached()

    async def replica_info(self, uid: str) -> Rows:
        return await self.manager.replica_info(uid)

    async def close(self) -> None:
        await self.manager.close()
        await self.dask.close()
        if self.cluster is not None:
            remove_runtime_file(self.settings)
            await self.cluster.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


async def connect_async(address: str | None = None, *, settings: XnbSettings | None = None) -> AsyncClient:
    """Attach to a running cluster (asyncio).  Starting one needs the sync :func:`connect`."""
    settings = settings or XnbSettings()
    address = address or find_running_cluster(settings)
    if address is None:
        raise ClusterUnavailable(
            "no xnb cluster is running; start one with `xnb local` or xnb.connect()"
        )
    dask = await open_dask(address, settings, asynchronous=True)
    return AsyncClient(dask, settings=settings)


# -- synchronous -------------------------------------------------------------------------------


class Model:
    """A launched model (synchronous API).  Results are OpenAI-shaped dicts."""

    def __init__(self, client: "Client", amodel: AsyncModel) -> None:
        self._client = client
        self._amodel = amodel

    def __repr__(self) -> str:
        return repr(self._amodel)

    @property
    def uid(self) -> str:
        return self._amodel.uid

    @property
    def record(self) -> ModelInfo:
        return self._amodel.record

    @property
    def status(self) -> str:
        return self._client._sync(self._amodel.refresh)["status"]

    def wait(self, timeout: float | None = None, on_progress: Progress | None = None) -> "Model":
        self._client._sync(self._amodel.wait, timeout, on_progress)
        return self

    def chat(self, messages: list[dict[str, Any]] | str, *, stream: bool = False, **params: Any) -> Any:
        """OpenAI chat completion dict; with ``stream=True`` an iterator of chunk dicts."""
        result = self._client._sync(lambda: self._amodel.chat(messages, stream=stream, **params))
        return self._client._iterate(result) if stream else result

    def complete(self, prompt: str | list[str], *, stream: bool = False, **params: Any) -> Any:
        """OpenAI text completion dict; with ``stream=True`` an iterator of chunk dicts."""
        result = self._client._sync(lambda: self._amodel.complete(prompt, stream=stream, **params))
        return self._client._iterate(result) if stream else result

    def embed(self, texts: str | list[str], *, normalize: bool | None = None) -> np.ndarray:
        return self._client._sync(lambda: self._amodel.embed(texts, normalize=normalize))

    def embeddings(self, input: str | list[str], **params: Any) -> dict[str, Any]:
        return self._client._sync(lambda: self._amodel.embeddings(input, **params))

    def transcribe(self, audio: AudioInput, *, response_format: str = "text", task: str = "transcribe",
                   **params: Any) -> Any:
        """Speech to text from a file path or bytes (see :meth:`AsyncModel.transcribe`)."""
        return self._client._sync(lambda: self._amodel.transcribe(
            audio, response_format=response_format, task=task, **params))

    def speak(self, text: str, *, voice: str | None = None, response_format: str = "wav", speed: float = 1.0,
              display: bool | None = None) -> Any:
        """Text to speech: the audio bytes, or in a notebook (``display=None``) an
        ``IPython.display.Audio`` that plays them."""
        audio = self._client._sync(lambda: self._amodel.speak(
            text, voice=voice, response_format=response_format, speed=speed))
        if response_format != "pcm" and (display or (display is None and in_notebook())):
            from IPython.display import Audio

            return Audio(data=audio)  # type: ignore[no-untyped-call]
        return audio

    def rerank(self, query: str, documents: list[Any], *, top_n: int | None = None, **params: Any) -> Rows:
        """Documents ranked best first: ``[{"index", "relevance_score", "document"}]``."""
        return self._client._sync(lambda: self._amodel.rerank(query, documents, top_n=top_n, **params))

    def image(self, prompt: str, *, n: int = 1, size: str | None = None, **params: Any) -> Any:
        """Text to image: a PIL image (shown inline in Jupyter), a list when ``n > 1``."""
        return self._client._sync(lambda: self._amodel.image(prompt, n=n, size=size, **params))

    def info(self) -> Rows:
        return self._client._sync(self._amodel.info)

    def events(self) -> Rows:
        return self._client._sync(self._amodel.events)

    def terminate(self) -> dict[str, Any]:
        return self._client._sync(self._amodel.terminate)


class Client:
    """Synchronous API: launch, list, use and terminate models on an xnb cluster."""

    def __init__(self, address: str, *, cluster: Any = None, settings: XnbSettings | None = None) -> None:
        self.settings = settings or XnbSettings()
        self.cluster = cluster
        self.dask = open_dask(address, self.settings)
        self._async = AsyncClient(self.dask, settings=self.settings)
        self.manager = self._async.manager

    def __repr__(self) -> str:
        return f"<xnb.Client scheduler={self.scheduler_address}{' (embedded)' if self.cluster else ''}>"

    @property
    def scheduler_address(self) -> str:
        return str(self.dask.scheduler.address)

    def _sync(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        try:
            return cast(T, self.dask.sync(fn, *args, **kwargs))
        except XnbError as exc:  # the user's error, not Dask's: drop the event-loop frames
            raise exc.with_traceback(None) from None

    def _iterate(self, agen: AsyncGenerator[Any, None]) -> Iterator[Any]:
        pending: dict[str, asyncio.Task[Any]] = {}

        async def next_item() -> tuple[bool, Any]:
            pending["step"] = step = asyncio.ensure_future(agen.__anext__())
            try:
                return True, await step
            except StopAsyncIteration:
                return False, None

        async def close() -> None:
            # Interrupted (Ctrl-C) while a step still runs on the event loop: cancel it
            # first (closing a running generator is an error), which aborts the generation.
            step = pending.get("step")
            if step is not None and not step.done():
                step.cancel()
                with contextlib.suppress(BaseException):
                    await step
            await agen.aclose()

        finished = False
        try:
            while True:
                more, item = self._sync(next_item)
                if not more:
                    finished = True
                    return
                yield item
        finally:
            if not finished:
                self._sync(close)  # aborts the generation on the model

    def launch(self, name: str, *, wait: bool = True, timeout: float | None = None,
               on_progress: Progress | None = None, **options: Any) -> Model:
        """Launch a catalog model and (by default) wait until it is ready.

        Options are :class:`xnb.protocol.LaunchOptions` fields: ``uid``, ``engine``,
        ``format``, ``size``, ``quantization``, ``replicas``, ``engine_options``,
        ``workers``, ``gpu_idx``, ``gpus``, ``max_queue``, ``restart``,
        ``max_restarts``, ``keep_alive`` (seconds idle before the weights are
        unloaded; the next request reloads them).  Invalid options raise
        :class:`~xnb.errors.InvalidRequest` with the same message as ``xnb launch``
        and ``POST /api/models``.
        """
        amodel = self._sync(lambda: self._async.launch(name, wait=False, **options))
        model = Model(self, amodel)
        if wait:
            model.wait(timeout=timeout, on_progress=on_progress)
        return model

    def get(self, uid: str) -> Model:
        return Model(self, self._sync(self._async.get, uid))

    def list(self) -> Models:
        return self._sync(self.manager.list)

    def terminate(self, uid: str) -> dict[str, Any]:
        return self._sync(self.manager.terminate, uid)

    def catalog(self, query: str | None = None, **filters: Any) -> Rows:
        return self._sync(lambda: self.manager.catalog(query, **filters))

    def cluster_info(self) -> dict[str, Any]:
        return self._sync(self.manager.cluster)

    def engines(self, name: str) -> Rows:
        """Which engines can serve catalog model ``name``, per format and size."""
        return self._sync(self.manager.engines, name)

    def scale(self, uid: str, replicas: int) -> ModelInfo:
        """Add or remove replicas of a running model (answers at once; new ones launch)."""
        return self._sync(self.manager.scale, uid, replicas)

    def register(self, family: dict[str, Any], *, overwrite: bool = False) -> dict[str, Any]:
        """Add a model family to the catalog (a custom entry, kept under ``$XNB_HOME/catalog``)."""
        return self._sync(lambda: self.manager.register(family, overwrite=overwrite))

    def unregister(self, name: str) -> dict[str, Any]:
        """Remove a custom catalog entry."""
        return self._sync(self.manager.unregister, name)

    def cached(self) -> dict[str, Rows]:
        """Model files cached on each worker."""
        return self._sync(self.manager.cached)

    def replica_info(self, uid: str) -> Rows:
        """Each ready replica's status and counters."""
        return self._sync(self.manager.replica_info, uid)

    def close(self) -> None:
        self._sync(self.manager.close)
        self.dask.close()
        if self.cluster is not None:
            remove_runtime_file(self.settings)
            self.cluster.close()
            self.cluster = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect(address: str | None = None, *, settings: XnbSettings | None = None, start: bool = True) -> Client:
    """Attach to an xnb cluster, or start the embedded one.

    ``address`` (or ``XNB_SCHEDULER_ADDRESS``) attaches to that scheduler;
    otherwise a cluster already running on this machine (found through the
    runtime file) is used; otherwise, with ``start``, an embedded cluster is
    started and lives as long as this process: in this process (notebooks, the
    REPL, ``python -m``), or in a child process when this is a script run by
    path, so a script needs no ``if __name__ == "__main__":`` guard
    (:mod:`xnb.runtime.cluster_process`).
    """
    settings = settings or XnbSettings()
    address = address or find_running_cluster(settings)
    if address is not None:
        return Client(address, settings=settings)
    if not start:
        raise ClusterUnavailable("no xnb cluster is running; start one with `xnb local`")
    if main_runs_from_a_file():  # Dask's spawned workers would re-run the script
        child = ClusterProcess(settings)
        return Client(child.scheduler_address, cluster=child, settings=settings)
    cluster = start_local_cluster(settings)
    write_runtime_file(settings, cluster.scheduler_address)  # after the cluster wrote its TLS files
    atexit.register(remove_runtime_file, settings)
    return Client(cluster.scheduler_address, cluster=cluster, settings=settings)
