"""ModelManager: the one model manager every front end calls.

The API sidecar's routes, the Jupyter handlers, the ``%xnb`` magics, the
widgets, the CLI and :class:`xnb.Client` all go through this class.  It has
no HTTP in it: it asks the Supervisor (scheduler handlers) about models and
calls model actors directly on their workers, and it speaks OpenAI shapes
(:mod:`xnb.openai.shapes`).

A request's path: ``chat()`` → :meth:`_route` (the model's replicas, cached
briefly) → :meth:`_pick` (the ready replica with the fewest outstanding
requests) → :class:`ActorRef` (``actor_execute`` on that worker) →
:class:`xnb.runtime.actor.ModelActor` → engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
from distributed.core import ConnectionPool

from xnb.openai import shapes
from xnb.runtime.puller import Pullers
from xnb.runtime.rpc import ActorRef
from xnb.engines.base import GenerateRequest
from xnb.errors import (
    NextStep,
    ClusterUnavailable,
    LaunchFailed,
    ModelNotFound,
    ModelNotReady,
    ReplicaLost,
    UnsupportedParameter,
    XnbError,
    error_from_dict,
)
from xnb.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from xnb.media import MediaOperations
from xnb.openai.shapes import Choice, ChunkBuilder, collect_choices
from xnb.protocol import (
    GenerateResult,
    LaunchOptions,
    ModelInfo,
    ModelStatus,
    ReplicaStatus,
    unwrap,
    validate,
)

__all__ = ["ModelManager", "StreamEvent"]

logger = logging.getLogger(__name__)

ACTOR_CONNECT_TIMEOUT_S = 5.0
ROUTE_TTL_S = 2.0
CONNECTING_GRACE_S = 3.0  # a Dask client still (re)connecting, before a call answers 503
#: How errors name an ability ("cannot speak", not "cannot speech").
_VERBS = {"speech": "speak", "image": "draw images"}

#: What :meth:`ModelManager.stream` yields: ``("deltas", [...])``, then ``("usage", {...})``.
StreamEvent = tuple[str, Any]
UsageHook = Callable[[dict[str, int]], None]


class ModelManager(MediaOperations):
    """Launch, list, describe and terminate models; chat, complete and embed with them;
    transcribe, speak, rerank and draw (:class:`~xnb.media.MediaOperations`)."""

    def __init__(self, client: Any, *, stream_poll_s: float = 0.5,
                 reconnect: Callable[[], Awaitable[Any]] | None = None) -> None:
        self.client = client  # a distributed.Client; coroutines run on its loop
        self.stream_poll_s = stream_poll_s
        # Opens a new Dask client when this one gave up on a scheduler that went away
        # (Dask retries for its connect timeout, then closes the client).
        self._reconnect = reconnect
        self._reconnecting: asyncio.Task[None] | None = None
        self.address: str = client.scheduler.address if client.scheduler is not None else "the scheduler"
        self._routes: dict[str, tuple[float, dict[str, Any]]] = {}
        self._outstanding: dict[str, int] = defaultdict(int)
        self._pool: ConnectionPool | None = None
        self._pullers = Pullers()

    async def _rpc(self) -> ConnectionPool:
        """Connections to workers for actor calls, with a short connect timeout:
        a cached route to a worker that just died fails in seconds, not Dask's 30 s."""
        if self._pool is None:
            pool = ConnectionPool(connection_args=self.client.connection_args, timeout=ACTOR_CONNECT_TIMEOUT_S)
            await pool.start()
            self._pool = pool
        return self._pool

    async def close(self) -> None:
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        self._pullers.cancel_all()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- the Supervisor -----------------------------------------------------------------------

    async def _check_connected(self) -> None:
        """503 (Retry-After) within seconds while the scheduler is away, instead of waiting
        out Dask's connect timeout (a connection being made gets CONNECTING_GRACE_S to come
        up); start reconnecting if Dask gave up."""
        deadline = time.monotonic() + CONNECTING_GRACE_S
        while self.client.status in ("newly-created", "connecting") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        status = self.client.status
        if status == "running":
            return
        if status in ("closing", "closed", "failed") and self._reconnect is not None:
            if self._reconnecting is None or self._reconnecting.done():
                self._reconnecting = asyncio.ensure_future(self._open_new_client())
        raise ClusterUnavailable(
            f"the xnb cluster at {self.address} is away ({status}); "
            "the connection comes back by itself once the scheduler runs again: retry in a few seconds",
            retry_after=2,
        )

    async def _open_new_client(self) -> None:
        assert self._reconnect is not None
        try:
            client = await self._reconnect()
        except (OSError, asyncio.TimeoutError, XnbError) as exc:
            logger.info("the scheduler is still away: %s", exc)
            return
        old, self.client = self.client, client
        self._routes.clear()
        logger.info("reconnected to the scheduler at %s", client.scheduler.address)
        try:
            await old.close()
        except (OSError, asyncio.TimeoutError):
            pass

    async def call(self, op: str, **kwargs: Any) -> Any:
        await self._check_connected()
        try:
            reply = await getattr(self.client.scheduler, op)(**kwargs)
        except OSError as exc:
            raise ClusterUnavailable(
                f"cannot reach the Dask scheduler at {self.address}: {exc}; "
                "is the cluster running? (`xnb local` starts one)",
                retry_after=2,
            ) from None
        try:
            result = unwrap(reply)
        except TypeError:
            raise ClusterUnavailable(
                "the scheduler does not run xnb's supervisor; start it with `xnb scheduler`"
            ) from None
        return _lists(result)

    async def launch(self, model: str | LaunchOptions, **options: Any) -> ModelInfo:
        """Launch a model: a :class:`LaunchOptions`, or its fields as keywords (``None``
        means "not set"); invalid options raise the same 400 as ``POST /api/models``."""
        if isinstance(model, LaunchOptions):
            opts = model
        else:
            opts = validate(LaunchOptions, {"model": model, **{k: v for k, v in options.items() if v is not None}})
        return await self.call("xnb_launch", **opts.model_dump(exclude_none=True))

    async def list(self) -> list[ModelInfo]:
        return await self.call("xnb_list")

    async def describe(self, uid: str) -> ModelInfo:
        return await self.call("xnb_describe", uid=uid)

    async def watch(self, uid: str, version: int = -1, timeout: float = 10.0) -> ModelInfo:
        return await self.call("xnb_watch", uid=uid, version=version, timeout=timeout)

    async def wait_ready(
        self,
        uid: str,
        *,
        timeout: float | None = None,
        on_update: Callable[[ModelInfo], None] | None = None,
    ) -> ModelInfo:
        """Wait until every replica has launched and the model is ready (or degraded);
        ``on_update`` sees every change (progress)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        version = -1
        while True:
            wait = 10.0 if deadline is None else max(0.0, min(10.0, deadline - time.monotonic()))
            record = await self.watch(uid, version, timeout=wait)
            version = record["version"]
            if on_update is not None:
                on_update(record)
            status = ModelStatus(record["status"])
            if ModelStatus.settled(record):  # serving, and every replica has finished launching
                return record
            if status.failed:
                raise LaunchFailed(
                    f"model {uid!r} failed to launch: {record.get('last_error') or status}",
                    next_step=NextStep("events", (uid,), "shows what happened"),
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise ModelNotReady(f"model {uid!r} is still {status} after {timeout:.0f}s")

    async def terminate(self, uid: str) -> dict[str, Any]:
        self._routes.pop(uid, None)
        return await self.call("xnb_terminate", uid=uid)

    async def scale(self, uid: str, replicas: int) -> ModelInfo:
        self._routes.pop(uid, None)
        return await self.call("xnb_scale", uid=uid, replicas=replicas)

    async def events(self, uid: str, since: float = 0.0) -> list[dict[str, Any]]:
        return await self.call("xnb_events", uid=uid, since=since)

    async def catalog(self, query: str | None = None, *, ability: str | None = None,
                      format: str | None = None) -> list[dict[str, Any]]:
        return await self.call("xnb_catalog", query=query, ability=ability, format=format)

    async def catalog_get(self, name: str) -> dict[str, Any]:
        return await self.call("xnb_catalog_get", name=name)

    async def register(self, family: dict[str, Any], *, overwrite: bool = False) -> dict[str, Any]:
        return await self.call("xnb_catalog_register", family=family, overwrite=overwrite)

    async def unregister(self, name: str) -> dict[str, Any]:
        return await self.call("xnb_catalog_unregister", name=name)

    async def engines(self, name: str) -> list[dict[str, Any]]:
        return await self.call("xnb_catalog_engines", name=name)

    async def cluster(self) -> dict[str, Any]:
        return await self.call("xnb_cluster")

    async def cached(self) -> dict[str, list[dict[str, Any]]]:
        """Model files cached on each worker."""
        from xnb.catalog.files import cached_models
        from xnb.settings import XnbSettings

        def on_worker() -> list[dict[str, Any]]:
            return cached_models(XnbSettings().cache_dir)

        return await self.client.run(on_worker)

    # -- routing -------------------------------------------------------------------------------

    async def _route(self, uid: str, *, refresh: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        cached = self._routes.get(uid)
        if cached is None or refresh or now - cached[0] > ROUTE_TTL_S:
            routes = await self.call("xnb_routes", uid=uid)
            self._routes[uid] = (now, routes)
            return routes
        return cached[1]

    async def _pick(self, uid: str, ability: str | None = None) -> tuple[str, ActorRef, dict[str, Any]]:
        routes = await self._route(uid)
        ready = _serving(routes)
        if not ready:
            routes = await self._route(uid, refresh=True)
            ready = _serving(routes)
        if ability is not None and ability not in routes["abilities"]:
            raise UnsupportedParameter(
                f"model {uid!r} ({routes['model_name']}) cannot {_VERBS.get(ability, ability)}; it can "
                f"{', '.join(_VERBS.get(a, a) for a in routes['abilities'])}",
                param="model",
            )
        if not ready:
            raise ModelNotReady(
                f"model {uid!r} is {routes['status']}, not ready; wait for it",
                next_step=NextStep("list", why="shows its progress"),
            )
        # Loaded replicas first (an unloaded one reloads for the request), then the least busy.
        best = min(ready, key=lambda r: (r["status"] != ReplicaStatus.READY, self._outstanding[r["key"]]))
        return best["key"], ActorRef(await self._rpc(), best["worker"], best["key"]), routes

    async def _with_replica(self, uid: str, ability: str, method: str, *args: Any) -> Any:
        """Call a replica; if its worker is gone before it answered, try another once."""
        for attempt in range(2):
            key, actor, _ = await self._pick(uid, ability)
            self._outstanding[key] += 1
            try:
                return await actor.call(method, *args)
            except (ReplicaLost, ModelNotFound):
                self._routes.pop(uid, None)
                if attempt == 1:
                    raise
            finally:
                self._outstanding[key] -= 1
        raise AssertionError("unreachable")

    async def replica_info(self, uid: str) -> list[dict[str, Any]]:
        routes = await self._route(uid, refresh=True)
        out = []
        for r in routes["replicas"]:
            if not ReplicaStatus(r["status"]).serving or not r["key"]:
                continue
            try:
                out.append(await ActorRef(await self._rpc(), r["worker"], r["key"]).call("info"))
            except XnbError as exc:
                out.append({"replica": r["replica"], "status": "unreachable", "error": exc.message})
        return out

    # -- inference -------------------------------------------------------------------------------

    async def generate(self, uid: str, request: GenerateRequest) -> tuple[list[Choice], dict[str, int]]:
        """A whole generation: ``(choices, usage)``, one :class:`~xnb.openai.shapes.Choice`
        ``(text, finish_reason, logprobs)`` per choice."""
        ability = "chat" if request.kind == "chat" else "generate"
        result = GenerateResult.of(await self._with_replica(
            uid, ability, "generate", request.model_dump(exclude_defaults=True)
        ))
        return collect_choices(result.deltas, request.n), result.usage or {}

    async def stream(self, uid: str, request: GenerateRequest) -> AsyncIterator[StreamEvent]:
        """Stream a generation: yields ``("deltas", [Delta])`` batches,
        then ``("usage", usage)``.  Closing the iterator early aborts the generation."""
        ability = "chat" if request.kind == "chat" else "generate"
        events = self._pulled(uid, ability, "start", request.model_dump(exclude_defaults=True))
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # at once: an abandoned generation is aborted on the model

    async def _pulled(self, uid: str, ability: str | None, start: str, *args: Any) -> AsyncIterator[StreamEvent]:
        """Start a stream on a replica with actor method ``start`` and pull it to the end (chat,
        completions, transcription, speech); a :class:`~xnb.runtime.puller.ReplicaPuller`
        pulls all our streams on that replica in one call per step."""
        for attempt in range(2):
            key, actor, _ = await self._pick(uid, ability)
            puller = self._pullers.get(actor, self.stream_poll_s)
            sid, queue = puller.open()
            self._outstanding[key] += 1  # count it now, so concurrent picks spread
            try:
                await actor.call(start, *args, sid=sid, puller=puller.id)
                break
            except BaseException as exc:
                self._outstanding[key] -= 1
                puller.close(sid)
                if attempt == 1 or not isinstance(exc, (ReplicaLost, ModelNotFound)):
                    raise
                self._routes.pop(uid, None)  # its worker or replica is gone: try another once
        puller.started()
        done = False
        try:
            while not done:
                item = await puller.next(queue)
                done = item.done
                if item.deltas:
                    yield ("deltas", item.deltas)
                if item.error is not None:
                    raise error_from_dict(item.error)
            yield ("usage", item.usage)
        except ReplicaLost:
            self._routes.pop(uid, None)
            done = True  # nothing left to abort
            raise
        finally:
            self._outstanding[key] -= 1
            puller.close(sid)
            if not done:
                # The consumer went away (client disconnect): free the engine slot.
                try:
                    await asyncio.shield(actor.call("abort", sid))
                except XnbError as exc:
                    logger.debug("abort of stream %s failed: %s", sid, exc)

    async def stream_chunks(
        self, uid: str, request: GenerateRequest, *, include_usage: bool = False,
        on_usage: UsageHook | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """:meth:`stream` as OpenAI chunk dicts (chat or text completion)."""
        builder = ChunkBuilder(kind=request.kind, model=uid, include_usage=include_usage,
                               tool_mode=_tool_mode(request))
        async for kind, value in self.stream(uid, request):
            if kind == "deltas":
                for chunk in builder.chunks(value):
                    yield chunk
            else:
                if on_usage is not None:
                    on_usage(value)
                final = builder.usage_chunk(value)
                if final is not None:
                    yield final

    async def embed(self, uid: str, texts: list[str], *, normalize: bool | None = None) -> tuple[np.ndarray, int]:
        """Embed texts with a model: ``(vectors, prompt_tokens)``."""
        vectors, tokens = await self._with_replica(uid, "embed", "embed", texts, normalize)
        return vectors, tokens

    # -- OpenAI-shaped calls (shared by the sidecar and the Python client) ----------------------

    async def chat_completion(self, body: ChatCompletionRequest) -> dict[str, Any]:
        request = body.to_generate()
        choices, usage = await self.generate(body.model, request)
        return shapes.chat_completion(
            id=shapes.new_id("chatcmpl"), model=body.model, created=int(time.time()),
            choices=choices, usage=usage, tool_mode=_tool_mode(request),
        )

    def chat_completion_stream(
        self, body: ChatCompletionRequest, *, on_usage: UsageHook | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        return self.stream_chunks(body.model, body.to_generate(), include_usage=body.include_usage,
                                  on_usage=on_usage)

    async def completion(self, body: CompletionRequest) -> dict[str, Any]:
        requests = body.to_generate()
        results = await asyncio.gather(*(self.generate(body.model, r) for r in requests))
        choices = [c for cs, _ in results for c in cs]
        usage = _sum_usage(u for _, u in results)
        return shapes.completion(
            id=shapes.new_id("cmpl"), model=body.model, created=int(time.time()),
            choices=choices, usage=usage,
        )

    async def completion_stream(
        self, body: CompletionRequest, *, on_usage: UsageHook | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        builder = ChunkBuilder(kind="completion", model=body.model, include_usage=body.include_usage)
        usages = []
        for p, request in enumerate(body.to_generate()):
            offset = p * body.n
            async for kind, value in self.stream(body.model, request):
                if kind == "deltas":
                    for chunk in builder.chunks((d[0] + offset, *d[1:]) for d in value):
                        yield chunk
                else:
                    usages.append(value)
        usage = _sum_usage(usages)
        if on_usage is not None:
            on_usage(usage)
        final = builder.usage_chunk(usage)
        if final is not None:
            yield final

    async def embeddings(self, body: EmbeddingRequest) -> dict[str, Any]:
        if body.dimensions is not None:
            await self._check_dimensions(body.model, body.dimensions)
        vectors, tokens = await self.embed(body.model, body.texts)
        if body.dimensions is not None and body.dimensions != vectors.shape[1]:
            if body.dimensions > vectors.shape[1]:
                raise UnsupportedParameter(
                    f"this model embeds into {vectors.shape[1]} dimensions; it cannot give {body.dimensions}",
                    param="dimensions",
                )
            vectors = shapes.matryoshka_truncate(vectors, body.dimensions)
        return shapes.embedding_list(
            model=body.model, vectors=vectors, prompt_tokens=tokens, encoding_format=body.encoding_format
        )


    async def _check_dimensions(self, uid: str, dimensions: int) -> None:
        """``dimensions`` below the full size only for Matryoshka-trained models (catalog)."""
        routes = await self._route(uid)
        full, least = routes.get("dimensions"), routes.get("matryoshka_min_dimensions")
        if full is not None and dimensions == full:
            return
        if least is None:
            raise UnsupportedParameter(
                f"model {uid!r} ({routes['model_name']}) gives {full or 'its full'} dimensions only: its catalog "
                "entry does not say it is Matryoshka-trained, so truncated vectors would be poor; "
                "leave out dimensions", param="dimensions",
            )
        if not least <= dimensions <= (full or dimensions):
            raise UnsupportedParameter(
                f"model {uid!r} ({routes['model_name']}) can give {least} to {full} dimensions, not {dimensions}",
                param="dimensions",
            )


def _serving(routes: dict[str, Any]) -> list[dict[str, Any]]:
    """Replicas that take requests now (an unloaded one reloads for it)."""
    return [r for r in routes["replicas"] if ReplicaStatus(r["status"]).serving and r["key"]]


def _tool_mode(request: GenerateRequest) -> bool:
    """Whether outputs may be tool calls to turn into ``tool_calls``."""
    return bool(request.tools) and request.tool_choice != "none"


def _lists(value: Any) -> Any:
    """Dask's msgpack gives tuples for lists; give callers plain JSON-like data."""
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def _sum_usage(usages: Any) -> dict[str, int]:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for u in usages:
        for k in total:
            total[k] += int(u.get(k, 0))
    return total
