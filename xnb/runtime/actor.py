"""ModelActor: one replica of one model, living on a Dask worker.

The Supervisor creates it with ``client.submit(ModelActor, ..., actor=True)``
and then calls :meth:`ModelActor.load`.  Clients call it directly on its
worker (``direct_to_workers``), never through the scheduler.

Every method is ``async``, so Dask runs it on the worker's event loop; the
blocking work (file download, model load, embedding) runs on the actor's own
thread pool and generation on the engine's own thread(s) — never on the
worker's loop and never on Dask's single shared actor thread, so two models on
one worker serve at the same time.

Streaming is pulled (Dask actor calls only return values): :meth:`start`
returns a stream id, :meth:`pull` returns every delta produced since the last
pull — compact ``(index, text, finish_reason, logprobs)`` tuples, OpenAI shapes are
built on the client side — and :meth:`abort` cancels.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import ValidationError

from xnb.catalog import validation_message
from xnb.catalog.schema import LaunchSpec
from xnb.engines import engine_installed, get_engine
from xnb.engines.base import Engine, GenerateRequest, ReplicaResources, Sink
from xnb.protocol import GenerateResult, PullResult, ReplicaStatus
from xnb.runtime.media import MediaCalls
from xnb.errors import (
    NextStep,
    EngineError,
    InvalidRequest,
    LaunchFailed,
    ModelNotReady,
    NotFound,
    QueueFull,
    XnbError,
)

__all__ = ["ModelActor", "PROGRESS_TOPIC", "RELOADED"]

logger = logging.getLogger(__name__)

#: Dask event topic the actor reports launch progress on (the Supervisor listens).
PROGRESS_TOPIC = "xnb-progress"
#: The progress phase an idle-unloaded replica reports when a request reloads it.
RELOADED = "reloaded"

#: After a stream's first output, how long a pull lets further deltas gather.
PULL_COALESCE_S = 0.02

#: A stream nobody pulled for this long is aborted (its client went away).
STREAM_IDLE_TIMEOUT_S = 60.0


class _Wake:
    """The wake-up of a waiting pull: one per stream, or one shared by every stream
    of a *puller* (a manager pulling all its streams on this replica in one call)."""

    __slots__ = ("loop", "event", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()
        self.waiting = False

    def notify(self) -> None:  # called from engine threads
        if self.waiting:
            self.loop.call_soon_threadsafe(self.event.set)

    async def wait(self, ready: Callable[[], bool], timeout: float) -> None:
        """Until ``ready()`` or ``timeout`` seconds (one waiter at a time)."""
        self.event.clear()
        self.waiting = True  # before the check: output put after it wakes us
        try:
            if ready():
                return
            try:
                await asyncio.wait_for(self.event.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        finally:
            self.waiting = False


class _Stream:
    """One request's output buffer, whose output wakes its pull."""

    __slots__ = ("sink", "wake", "puller", "last_pull", "kind", "pulled")

    def __init__(self, wake: _Wake, n: int, kind: str, puller: str | None = None) -> None:
        self.wake = wake
        self.puller = puller
        self.pulled = False  # has a pull returned output yet (the first one must be fast)
        self.last_pull = time.monotonic()
        self.kind = kind
        self.sink = Sink(n, notify=wake.notify)


def _import_all(modules: tuple[str, ...]) -> None:
    for name in modules:
        importlib.import_module(name)


class ModelActor(MediaCalls):
    """One replica of one model (a Dask actor); speech, rerank and image calls come
    from :class:`~xnb.runtime.media.MediaCalls`."""

    def __init__(
        self,
        uid: str,
        replica: int,
        spec: dict[str, Any],
        *,
        threads: int = 1,
        gpus: list[int] | None = None,
        max_queue: int = 64,
        cache_dir: str | None = None,
        keep_alive: float | None = None,
    ) -> None:
        # Cheap on purpose: Dask runs the constructor as a task; loading is load().
        self.uid = uid
        self.replica = replica
        self.spec = LaunchSpec.model_validate(spec)
        self.resources = ReplicaResources(threads=threads, gpus=list(gpus or []))
        self.max_queue = max_queue
        self.keep_alive = keep_alive
        self._engine_lock = asyncio.Lock()
        self._last_used = time.monotonic()
        self.cache_dir = Path(cache_dir) if cache_dir else Path("~/.xnb/cache").expanduser()
        self.status = ReplicaStatus.LAUNCHING
        self.engine: Engine | None = None
        self.load_info: dict[str, Any] = {}
        self._streams: dict[str, _Stream] = {}
        self._pullers: dict[str, _Wake] = {}  # puller → the wake-up its streams share
        self._embedding = 0
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"xnb-actor-{uid}")
        self._reaper: asyncio.Task[None] | None = None
        self.counters = {"requests": 0, "rejected": 0, "aborted": 0, "failed": 0, "embed_requests": 0,
                         "idle_unloads": 0, "reloads": 0, "pulls": 0}
        self.created_at = time.time()

    # -- lifecycle -----------------------------------------------------------------------

    def _report(self, phase: str, **extra: Any) -> None:
        """Tell the Supervisor (a Dask event); callable from any thread.  ``since`` is
        when this phase began and ``step`` what it does now, so progress shows elapsed time."""
        now = time.time()
        if phase != getattr(self, "_phase", None):
            self._phase, self._phase_started = phase, now
        msg = {"uid": self.uid, "replica": self.replica, "phase": phase, "since": self._phase_started, **extra}
        self._loop.call_soon_threadsafe(self._worker.log_event, PROGRESS_TOPIC, msg)

    async def load(self) -> dict[str, Any]:
        """Fetch the files, load the engine; reports progress as Dask events."""
        from distributed import get_worker

        from xnb.catalog.files import resolve_files

        self._loop = asyncio.get_running_loop()
        self._worker = get_worker()
        engine_cls = get_engine(self.spec.engine)
        if not engine_installed(self.spec.engine):
            missing = ", ".join(engine_cls.requires)
            raise LaunchFailed(
                f"engine {self.spec.engine!r} is not installed on worker {self._worker.address} "
                f"(missing: {missing}); install it there, e.g. pip install 'xnb[{self.spec.engine}]'"
            )
        self.status = ReplicaStatus.DOWNLOADING
        self._report(ReplicaStatus.DOWNLOADING.value)
        self._files = await self._loop.run_in_executor(
            self._pool,
            lambda: resolve_files(self.spec, cache_dir=self.cache_dir, progress=lambda p: self._report(**p)),
        )
        self.status = ReplicaStatus.LOADING
        where = {"path": str(self._files.path), "size_bytes": self._files.size_bytes}
        if engine_cls.requires:  # importing torch & co. takes seconds: say so
            self._report(ReplicaStatus.LOADING.value, step=f"importing {', '.join(engine_cls.requires)}", **where)
            await self._loop.run_in_executor(self._pool, _import_all, engine_cls.requires)
        self._report(ReplicaStatus.LOADING.value, step="reading the weights", **where)
        await self._load_engine()
        self._reaper = asyncio.create_task(self._reap_idle())
        return self.load_info

    async def _load_engine(self) -> None:
        engine_cls = get_engine(self.spec.engine)
        options = engine_cls.Options.model_validate(self.spec.engine_options)
        engine = engine_cls(self.spec, self._files.path, options, self.resources)
        engine.progress = self._report
        started = time.monotonic()
        try:
            info = await self._loop.run_in_executor(self._pool, engine.load)
        except XnbError:
            raise
        except Exception as exc:  # a library failure: say what failed, keep the worker
            logger.exception("loading %s failed", self.uid)
            raise LaunchFailed(
                f"{self.spec.engine} could not load {self.spec.model_name}: {type(exc).__name__}: {exc}"
            ) from None
        self.engine = engine
        self.status = ReplicaStatus.READY
        self._last_used = time.monotonic()
        self.load_info = {
            **info,
            "load_seconds": round(time.monotonic() - started, 3),
            "path": str(self._files.path),
            "downloaded": self._files.downloaded,
            "size_bytes": self._files.size_bytes,
        }

    async def unload(self) -> None:
        self.status = ReplicaStatus.TERMINATING
        for stream in self._streams.values():  # in-flight requests end with an error, not silently
            stream.sink.fail(ModelNotReady(f"model {self.uid!r} was terminated during the request"))
            stream.sink.cancelled.set()
        if self._reaper is not None:
            self._reaper.cancel()
        engine, self.engine = self.engine, None
        if engine is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, engine.unload)
        self._pool.shutdown(wait=False)
        self._close_media()
        self.status = ReplicaStatus.STOPPED

    async def info(self) -> dict[str, Any]:
        """Status and counters (engine counters included) for listings and metrics."""
        return {
            "uid": self.uid,
            "replica": self.replica,
            "status": self.status.value,
            "inflight": self._inflight(),
            "streams": len(self._streams),
            "capacity": self._capacity() if self.engine else 0,
            "keep_alive": self.keep_alive,
            "counters": dict(self.counters),
            "engine": self.engine.stats() if self.engine else {},
            "load": self.load_info,
        }

    # -- admission -----------------------------------------------------------------------

    def _inflight(self) -> int:
        return self._embedding + self._media_busy + sum(1 for s in self._streams.values() if not s.sink.done)

    def _capacity(self) -> int:
        assert self.engine is not None
        return self.engine.max_concurrency + self.max_queue

    def _ready_engine(self) -> Engine:
        if self.engine is None or self.status is not ReplicaStatus.READY:
            raise ModelNotReady(
                f"model {self.uid!r} (replica {self.replica}) is {self.status.value}, not ready; wait for it and retry",
                next_step=NextStep("list", why="shows its progress"),
            )
        if self._inflight() >= self._capacity():
            self.counters["rejected"] += 1
            raise QueueFull(
                f"model {self.uid!r} has {self._inflight()} requests in flight, its limit; "
                "retry later or launch more replicas",
                retry_after=1,
            )
        return self.engine

    # -- generation ------------------------------------------------------------------------

    async def start(self, request: dict[str, Any], *, sid: str | None = None, puller: str | None = None) -> str:
        """Begin a generation; returns the stream id to pull (``sid`` if the caller chose
        one).  With ``puller``, the stream is also returned by :meth:`pull_all`."""
        engine = await self._engine_for_request()
        try:
            req = GenerateRequest.model_validate(request)
        except ValidationError as exc:
            raise InvalidRequest(f"invalid request: {validation_message(exc)}") from None
        stream = self._new_stream(req.n, req.kind, sid, puller)
        engine.submit(req, stream.sink)
        return self._register(stream, sid)

    def _new_stream(self, n: int, kind: str, sid: str | None, puller: str | None) -> _Stream:
        if sid is not None and sid in self._streams:
            raise InvalidRequest(f"stream {sid} already exists", param="stream")
        loop = asyncio.get_running_loop()
        if puller is None:
            return _Stream(_Wake(loop), n, kind)
        wake = self._pullers.get(puller)
        if wake is None:
            wake = self._pullers[puller] = _Wake(loop)
        return _Stream(wake, n, kind, puller)

    def _register(self, stream: _Stream, sid: str | None) -> str:
        sid = sid or uuid.uuid4().hex
        self._streams[sid] = stream
        self.counters["requests"] += 1
        return sid

    async def pull(self, sid: str, max_wait: float = 0.5) -> PullResult:
        """Deltas since the last pull: a :class:`~xnb.protocol.PullResult`
        ``(deltas, done, usage, error)``.

        Waits up to ``max_wait`` seconds for the first delta, then returns
        everything available (batching when the client is slower than the engine).
        After the first output, a pull also lets deltas gather for
        ``PULL_COALESCE_S``: fewer round trips per token leave the cores to the
        engine (on a 2-core machine every wake-up costs decode speed).
        """
        stream = self._streams.get(sid)
        if stream is None:
            raise NotFound(f"stream {sid} is unknown or finished", param="stream")
        stream.last_pull = time.monotonic()
        self.counters["pulls"] += 1
        sink = stream.sink
        await stream.wake.wait(sink.has_output, max_wait)
        if stream.pulled and not sink.done and PULL_COALESCE_S > 0:
            await asyncio.sleep(PULL_COALESCE_S)
        return self._take(sid, stream)

    async def pull_all(self, puller: str, max_wait: float = 0.5) -> dict[str, PullResult]:
        """:meth:`pull` for every stream started with ``puller``, in one call: the
        results of the streams with output (or done), by stream id.

        One call per step for all of a manager's streams on this replica, instead
        of one per stream: at 8 streams, 8 times fewer round trips, each of which
        costs the sidecar and this worker CPU time the engine would use.  Waits
        up to ``max_wait`` for any output; coalesces like :meth:`pull` unless a
        stream's first output is among it (time to first token comes first).
        """
        def mine() -> list[tuple[str, _Stream]]:
            return [(sid, s) for sid, s in self._streams.items() if s.puller == puller]

        wake = self._pullers.get(puller)
        streams = mine()
        if wake is None or not streams:
            self._pullers.pop(puller, None)
            return {}
        now = time.monotonic()
        self.counters["pulls"] += 1
        for _, stream in streams:
            stream.last_pull = now
        await wake.wait(lambda: any(s.sink.has_output() for _, s in mine()), max_wait)
        ready = [(sid, s) for sid, s in mine() if s.sink.has_output()]
        if ready and PULL_COALESCE_S > 0 and all(s.pulled and not s.sink.done for _, s in ready):
            await asyncio.sleep(PULL_COALESCE_S)
            ready = [(sid, s) for sid, s in mine() if s.sink.has_output()]
        out = {sid: self._take(sid, stream) for sid, stream in ready}
        self._forget_puller(puller)  # its last stream may have been aborted while we waited
        return out

    def _take(self, sid: str, stream: _Stream) -> PullResult:
        """A stream's output since the last pull; forgets the stream once it is done."""
        stream.pulled = True
        sink = stream.sink
        items = sink.take()
        if not sink.done:
            return PullResult(items, False, None, None)
        items += sink.take()
        del self._streams[sid]
        self._forget_puller(stream.puller)
        if sink.error is not None:
            self.counters["failed"] += 1
        return PullResult(items, True, sink.usage, sink.error)

    def _forget_puller(self, puller: str | None) -> None:
        """Drop a puller's wake-up once it has no streams and nobody waits on it (a new
        stream of that puller makes a new one; the next ``pull_all`` waits on that)."""
        wake = self._pullers.get(puller) if puller is not None else None
        if wake is not None and not wake.waiting and all(s.puller != puller for s in self._streams.values()):
            del self._pullers[puller]  # type: ignore[arg-type]

    async def abort(self, sid: str) -> bool:
        """Cancel a stream (client went away); frees its engine slot."""
        stream = self._streams.pop(sid, None)
        if stream is None:
            return False
        self.counters["aborted"] += 1
        stream.sink.cancelled.set()
        if self.engine is not None:
            self.engine.abort(stream.sink)
        self._forget_puller(stream.puller)
        return True

    async def generate(self, request: dict[str, Any]) -> GenerateResult:
        """A whole non-streaming generation in one call: a :class:`~xnb.protocol.GenerateResult`
        ``(deltas, usage, error)``."""
        sid = await self.start(request)
        items: list[Any] = []
        while True:
            pulled = await self.pull(sid, max_wait=5.0)
            items.extend(pulled.deltas)
            if pulled.done:
                return GenerateResult(items, pulled.usage, pulled.error)

    async def _reap_idle(self) -> None:
        """Abort streams nobody pulls; unload the engine after ``keep_alive`` idle seconds."""
        period = STREAM_IDLE_TIMEOUT_S / 4
        if self.keep_alive is not None:
            period = max(0.05, min(period, self.keep_alive / 4))
        while True:
            await asyncio.sleep(period)
            cutoff = time.monotonic() - STREAM_IDLE_TIMEOUT_S
            for sid, stream in list(self._streams.items()):
                if stream.last_pull < cutoff:
                    logger.info("aborting stream %s of %s: nobody pulled it", sid, self.uid)
                    await self.abort(sid)
            idle = time.monotonic() - self._last_used
            if (self.keep_alive is not None and self.engine is not None and self.status is ReplicaStatus.READY
                    and self._inflight() == 0 and not self._streams and idle > self.keep_alive):
                async with self._engine_lock:
                    engine, self.engine = self.engine, None
                    self.status = ReplicaStatus.UNLOADED
                    await self._loop.run_in_executor(self._pool, engine.unload)
                    self.counters["idle_unloads"] += 1
                self._report(ReplicaStatus.UNLOADED.value, idle_seconds=round(idle, 1))

    async def _engine_for_request(self) -> Engine:
        """The loaded engine (reloading it after an idle unload), or 503/429."""
        if self.status is ReplicaStatus.UNLOADED:
            async with self._engine_lock:
                if self.status is ReplicaStatus.UNLOADED:
                    self.status = ReplicaStatus.LOADING
                    try:
                        await self._load_engine()
                    except XnbError:
                        self.status = ReplicaStatus.UNLOADED
                        raise
                    self.counters["reloads"] += 1
                    self._report(RELOADED, load_seconds=self.load_info["load_seconds"])
        self._last_used = time.monotonic()
        return self._ready_engine()

    # -- embeddings ---------------------------------------------------------------------------

    async def embed(self, texts: list[str], normalize: bool | None = None) -> tuple[np.ndarray, int]:
        """Embed texts: ``(float32 array of shape (len(texts), dim), prompt tokens)``.
        ``normalize=None`` lets the engine decide (its launch option)."""
        engine = await self._engine_for_request()
        if not texts:
            raise InvalidRequest("input must not be empty", param="input")
        self._embedding += 1
        self.counters["embed_requests"] += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._pool, lambda: engine.embed(texts, normalize=normalize)
            )
        except XnbError:
            raise
        except Exception as exc:
            logger.exception("embedding failed on %s", self.uid)
            raise EngineError(f"the {engine.name} engine failed to embed: {type(exc).__name__}") from None
        finally:
            self._embedding -= 1
        return np.asarray(result.vectors, dtype=np.float32), result.prompt_tokens
