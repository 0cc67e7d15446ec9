"""The Supervisor: xnb's registry and launcher, living inside the Dask scheduler.

It is a :class:`~distributed.diagnostics.plugin.SchedulerPlugin` that adds
``xnb_*`` handlers to the scheduler, so every client — a notebook kernel, the
API sidecar, the CLI — asks it the same questions over the scheduler's own
connection (``client.scheduler.xnb_list()``) and gets the same answers.  It
outlives any client: models launched by one process are used and terminated
by another.

It launches replicas through its own Dask client (so the actors' futures are
held by the scheduler process, not by whoever asked), places them with
:func:`xnb.runtime.placement.place`, follows their progress (Dask events on
:data:`xnb.runtime.actor.PROGRESS_TOPIC`), and notices worker loss
(``remove_worker``): replicas there become ``lost`` and, if the model asks
for it, are relaunched elsewhere with backoff.

Handlers answer :func:`xnb.protocol.ok` or :func:`xnb.protocol.failed`; :class:`xnb.manager.ModelManager`
unwraps them (:func:`xnb.protocol.unwrap`), raising the same exception class.  Launch options are
:class:`xnb.protocol.LaunchOptions`; statuses are :mod:`xnb.protocol` enums.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid
from typing import Any, Awaitable, Callable

from distributed.diagnostics.plugin import SchedulerPlugin

from xnb.runtime.actor import PROGRESS_TOPIC, RELOADED, ModelActor
from xnb.runtime.rpc import ActorRef
from xnb.catalog import Catalog
from xnb.engines import get_engine
from xnb.errors import (
    NextStep,
    DuplicateModel,
    InvalidRequest,
    LaunchFailed,
    ModelNotFound,
    XnbError,
)
from xnb.protocol import LaunchOptions, ModelInfo, ModelStatus, ReplicaStatus, failed, ok, validate
from xnb.runtime.placement import Needs, WorkerView, estimate_memory, place
from xnb.runtime.views import describe_cluster, worker_views
from xnb.runtime.registry import ModelRecord, ReplicaRecord
from xnb.runtime.store import StateStore, restore_models
from xnb.settings import XnbSettings

__all__ = ["Supervisor", "PLUGIN_NAME"]

logger = logging.getLogger(__name__)

PLUGIN_NAME = "xnb-supervisor"
_UID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0)


def _handler(fn: Callable[..., Any]) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Wrap a handler so XnbErrors travel as data (and bugs as a logged 500)."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            result = fn(*args, **kwargs)
            if asyncio.iscoroutine(result):
                result = await result
            return ok(result)
        except XnbError as exc:
            return failed(exc)
        except Exception as exc:  # a supervisor bug: log it, answer a 500 without internals
            logger.exception("xnb supervisor handler %s failed", fn.__name__)
            return failed(XnbError(f"internal supervisor error ({type(exc).__name__})"))

    return wrapper


class Supervisor(SchedulerPlugin):
    """Registry of launched models, catalog registrations and placement."""

    name = PLUGIN_NAME

    def __init__(self, home: str | None = None, state_dir: str | None = None) -> None:
        self.home = home
        self.state_dir = state_dir  # None: nothing persists (the embedded cluster)
        self.store: StateStore | None = None
        self.models: dict[str, ModelRecord] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._client: Any = None
        self._client_lock: asyncio.Lock | None = None

    # -- plugin hooks ---------------------------------------------------------------------

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        settings = XnbSettings(**({"home": self.home} if self.home else {}))
        self.settings = settings
        self.catalog = Catalog(custom_dir=settings.catalog_dir)
        self._client_lock = asyncio.Lock()
        self._worker_joined = asyncio.Event()
        handlers = {
            "xnb_ping": self.ping,
            "xnb_launch": self.launch_handler,
            "xnb_list": self.list,
            "xnb_describe": self.describe,
            "xnb_watch": self.watch,
            "xnb_terminate": self.terminate,
            "xnb_scale": self.scale,
            "xnb_events": self.events,
            "xnb_routes": self.routes,
            "xnb_catalog": self.catalog_list,
            "xnb_catalog_get": self.catalog_get,
            "xnb_catalog_register": self.catalog_register,
            "xnb_catalog_unregister": self.catalog_unregister,
            "xnb_catalog_engines": self.catalog_engines,
            "xnb_cluster": self.cluster,
        }
        scheduler.handlers.update({k: _handler(v) for k, v in handlers.items()})
        if self.state_dir is not None:
            self.store = StateStore(self.state_dir)
            restore_models(self, self.store.models())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._client is not None:
            await self._client.close()
            self._client = None

    def add_worker(self, scheduler: Any, worker: str) -> None:
        # Wake replicas waiting to be relaunched: the new worker may take them.
        event, self._worker_joined = self._worker_joined, asyncio.Event()
        event.set()

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        for record in list(self.models.values()):
            for replica in record.replicas:
                if replica.worker != worker or not replica.status.live:
                    continue
                replica.status = ReplicaStatus.LOST
                replica.error = f"worker {worker} left the cluster"
                self._release(replica)
                self._emit(record, ReplicaStatus.LOST, f"replica {replica.index} lost: worker {worker} left",
                           replica=replica.index)
                if record.options.get("restart") == "on-failure" and not record.terminating:
                    replica.status = ReplicaStatus.RESTARTING
                    self._spawn(self._restart(record, replica))

    def log_event(self, topic: str, msg: Any) -> None:
        if topic != PROGRESS_TOPIC or not isinstance(msg, dict):
            return
        record = self.models.get(msg.get("uid", ""))
        if record is None:
            return
        index = msg.get("replica")
        replica = next((r for r in record.replicas if r.index == index), None)
        phase = msg.get("phase")
        if replica is not None and phase in (ReplicaStatus.UNLOADED, RELOADED) and replica.status.serving:
            unloaded = phase == ReplicaStatus.UNLOADED
            replica.status = ReplicaStatus.UNLOADED if unloaded else ReplicaStatus.READY
            replica.load_info = {**replica.load_info, "loaded": not unloaded}
            what = "unloaded after being idle" if unloaded else "reloaded for a request"
            self._emit(record, phase, f"replica {index} {what}", replica=index)
            return
        if replica is None or replica.status not in (ReplicaStatus.LAUNCHING, ReplicaStatus.DOWNLOADING,
                                                     ReplicaStatus.LOADING):
            return
        replica.progress = {k: v for k, v in msg.items() if k not in ("uid", "replica")}
        if phase in (ReplicaStatus.DOWNLOADING, ReplicaStatus.LOADING) and replica.status != phase:
            replica.status = ReplicaStatus(phase)
            self._emit(record, phase, f"replica {index} {phase}", replica=index)
        else:
            record.version += 1
            self._notify(record.uid)

    # -- bookkeeping ----------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _emit(self, record: ModelRecord, kind: str, message: str, **data: Any) -> None:
        record.event(kind, message, **data)
        logger.info("model %s: %s", record.uid, message)
        self._notify(record.uid)

    def _notify(self, uid: str) -> None:
        event = self._changed.pop(uid, None)
        if event is not None:
            event.set()

    def _get(self, uid: str) -> ModelRecord:
        try:
            return self.models[uid]
        except KeyError:
            raise ModelNotFound(
                f"no model with uid {uid!r} is running",
                param="model", next_step=NextStep("list", why="shows the running models"),
            ) from None

    def _persist(self, change: str, record: ModelRecord) -> None:
        """Tell the state store, if any: ``launch``, ``scale`` or ``terminate``."""
        if self.store is not None:
            self.store.apply(change, record, self.scheduler.workers)

    def _release(self, replica: ReplicaRecord) -> None:
        if replica.future is not None:
            replica.future.release()
            replica.future = None
        replica.actor = None

    async def _dask(self) -> Any:
        """The Supervisor's own client (holds the actors' futures)."""
        assert self._client_lock is not None
        async with self._client_lock:
            if self._client is None:
                from distributed import Client

                self._client = await Client(
                    self.scheduler.address,
                    asynchronous=True,
                    security=self.scheduler.security,
                    name="xnb-supervisor",
                    direct_to_workers=True,
                    set_as_default=False,
                )
            return self._client

    def _workers(self, exclude: set[str] = frozenset()) -> list[WorkerView]:
        return worker_views(self.scheduler.workers, self.models.values(), exclude)

    # -- handlers: models -------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        from xnb import __version__

        return {"version": __version__, "models": len(self.models)}

    def launch_handler(self, **options: Any) -> ModelInfo:
        """``xnb_launch``: the options as sent over the wire, validated here too (the same 400)."""
        return self.launch(validate(LaunchOptions, options))

    def launch(self, opts: LaunchOptions) -> ModelInfo:
        """Place the replicas and start loading them; answers at once (status ``launching``)."""
        record, needs = self._new_record(opts)
        placements = place(self._workers(), needs, opts.replicas, pin_workers=opts.workers,
                           pin_gpus=opts.gpu_idx, uid=record.uid)
        record.replicas = [
            ReplicaRecord(index=i, worker=p.worker, gpus=p.gpus, memory=needs.memory)
            for i, p in enumerate(placements)
        ]
        self.models[record.uid] = record
        self._persist("launch", record)
        self._emit(record, "launch", f"launching {opts.replicas} replica(s) of {record.spec.model_name} "
                   f"on {record.spec.engine}")
        for replica in record.replicas:
            self._spawn(self._start_replica(record, replica))
        return record.describe()

    def _new_record(self, opts: LaunchOptions) -> tuple[ModelRecord, Needs]:
        """Resolve and check launch options: a record without replicas (its ``launch``:
        the options with the uid chosen), and what one replica needs."""
        uid, gpus, gpu_idx = opts.uid, opts.gpus, opts.gpu_idx
        spec = self.catalog.resolve(
            opts.model, engine=opts.engine, fmt=opts.format, size=opts.size, quantization=opts.quantization,
            engine_options=opts.engine_options,
        )
        if uid is None:  # the model's own name, unless another replica set already uses it
            uid = spec.model_name if spec.model_name not in self.models else f"{spec.model_name}-{uuid.uuid4().hex[:6]}"
        if not _UID_RE.match(uid):
            raise InvalidRequest(
                f"uid {uid!r} must be 1-128 letters, digits, '.', '_' or '-'", param="uid"
            )
        if uid in self.models:
            raise DuplicateModel(
                f"a model with uid {uid!r} is already running; choose another uid",
                param="uid", next_step=NextStep("terminate", (uid,), "stops it"),
            )
        n_gpus = gpus if gpus is not None else (len(gpu_idx) if gpu_idx else int(get_engine(spec.engine).requires_gpu))
        record = ModelRecord(
            uid=uid,
            spec=spec,
            options={
                "max_queue": self.settings.max_queue if opts.max_queue is None else opts.max_queue,
                "restart": opts.restart,
                "max_restarts": opts.max_restarts,
                "gpus": n_gpus,
                "workers": opts.workers,
                "keep_alive": opts.keep_alive,
            },
        )
        record.launch = opts.model_dump(mode="json", exclude_none=True) | {"uid": uid}
        return record, Needs(memory=estimate_memory(spec.file_size_mb), gpus=n_gpus, engine=spec.engine)

    async def _start_replica(self, record: ModelRecord, replica: ReplicaRecord) -> None:
        """Create the actor on its worker and load the model."""
        try:
            client = await self._dask()
            ws = self.scheduler.workers.get(replica.worker)
            threads = ws.nthreads if ws is not None else 1
            future = client.submit(
                ModelActor,
                record.uid,
                replica.index,
                record.spec.model_dump(),
                threads=threads,
                gpus=list(replica.gpus),
                max_queue=record.options["max_queue"],
                keep_alive=record.options.get("keep_alive"),
                cache_dir=str(self.settings.cache_dir),
                actor=True,
                workers=[replica.worker],
                allow_other_workers=False,
                pure=False,
                key=f"xnb-{record.uid}-{replica.index}-{uuid.uuid4().hex[:8]}",
            )
            replica.future = future
            replica.key = future.key
            try:
                await future  # the (cheap) constructor ran on the worker
            except Exception as exc:
                raise LaunchFailed(f"could not create the model actor: {type(exc).__name__}: {exc}") from None
            replica.actor = ActorRef(client.rpc, replica.worker, future.key)
            info = await replica.actor.call("load")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if replica.status in (ReplicaStatus.LOST, ReplicaStatus.RESTARTING) or record.terminating:
                return  # remove_worker or terminate already dealt with it
            message = exc.message if isinstance(exc, XnbError) else f"{type(exc).__name__}: {exc}"
            replica.status = ReplicaStatus.ERROR
            replica.error = message
            record.last_error = message
            self._release(replica)
            self._emit(record, "error", f"replica {replica.index} failed to load: {message}",
                       replica=replica.index)
            return
        if record.terminating or replica.status in (ReplicaStatus.LOST, ReplicaStatus.RESTARTING):
            return
        replica.status = ReplicaStatus.READY
        replica.load_info = info
        replica.since = time.time()
        if record.ready_at is None:
            record.ready_at = time.time()
        self._emit(record, ReplicaStatus.READY, f"replica {replica.index} ready on {replica.worker} "
                   f"in {info.get('load_seconds', 0):.2f}s", replica=replica.index)

    async def _restart(self, record: ModelRecord, lost: ReplicaRecord) -> None:
        """Relaunch a lost replica on another worker: bounded launch attempts with
        backoff; while no worker can take it, wait (a joining worker wakes us)."""
        max_restarts = int(record.options.get("max_restarts", 3))
        attempts = 0
        waiting_said = False
        exclude = {lost.worker}
        while attempts < max_restarts:
            delay = RESTART_BACKOFF_S[min(attempts, len(RESTART_BACKOFF_S) - 1)]
            try:
                await asyncio.wait_for(self._worker_joined.wait(), delay)
            except asyncio.TimeoutError:
                pass
            if record.terminating or self.models.get(record.uid) is not record:
                return
            needs = Needs(memory=lost.memory, gpus=len(lost.gpus), engine=record.spec.engine)
            try:
                (placement,) = place(self._workers(exclude=exclude), needs, 1, uid=record.uid)
            except XnbError as exc:
                if not waiting_said:
                    self._emit(record, "restart-wait", f"replica {lost.index}: waiting for a worker "
                               f"({exc.message})", replica=lost.index)
                    waiting_said = True
                continue
            attempts += 1
            fresh = ReplicaRecord(index=lost.index, worker=placement.worker, gpus=placement.gpus,
                                  memory=lost.memory, attempts=lost.attempts + 1)
            record.replicas = [fresh if r is lost else r for r in record.replicas]
            self._emit(record, "restart", f"relaunching replica {lost.index} on {placement.worker} "
                       f"(restart {attempts} of {max_restarts})", replica=lost.index)
            await self._start_replica(record, fresh)
            if fresh.status is ReplicaStatus.READY:
                return
            if fresh.status is ReplicaStatus.RESTARTING:
                return  # its worker died too: remove_worker started another restart for it
            exclude = set()
            lost = fresh
        if lost.status is ReplicaStatus.RESTARTING:
            lost.status = ReplicaStatus.LOST
        self._emit(record, "restart-gave-up", f"replica {lost.index}: gave up after {max_restarts} restarts",
                   replica=lost.index)

    def list(self) -> list[ModelInfo]:
        return [r.describe() for r in sorted(self.models.values(), key=lambda r: r.created)]

    def describe(self, uid: str) -> ModelInfo:
        return self._get(uid).describe()

    async def watch(self, uid: str, version: int = -1, timeout: float = 10.0) -> ModelInfo:
        """Long poll: the model's description once its version passes ``version``."""
        record = self._get(uid)
        deadline = time.monotonic() + max(0.0, min(timeout, 60.0))
        while record.version <= version:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            event = self._changed.setdefault(uid, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                break
            if uid not in self.models:
                raise ModelNotFound(f"model {uid!r} was terminated", param="model")
        return record.describe()

    def routes(self, uid: str) -> dict[str, Any]:
        return self._get(uid).routes()

    def events(self, uid: str, since: float = 0.0) -> list[dict[str, Any]]:
        return [e for e in self._get(uid).events if e["time"] > since]

    async def terminate(self, uid: str) -> dict[str, Any]:
        record = self._get(uid)
        if record.terminating:
            return record.describe()
        record.terminating = True
        self._persist("terminate", record)
        self._emit(record, ModelStatus.TERMINATING, "terminating the model")
        await asyncio.gather(*(self._stop_replica(r) for r in record.replicas))
        self.models.pop(uid, None)
        self._notify(uid)
        out = record.describe()
        out["status"] = ModelStatus.TERMINATED.value
        return out

    async def _stop_replica(self, replica: ReplicaRecord, timeout: float = 20.0) -> None:
        if replica.actor is not None and replica.status.serving:
            try:
                await asyncio.wait_for(replica.actor.call("unload"), timeout)
            except (asyncio.TimeoutError, OSError, XnbError) as exc:
                logger.warning("unloading replica %s cleanly failed: %s", replica.key, exc)
        replica.status = ReplicaStatus.STOPPED
        self._release(replica)

    async def scale(self, uid: str, replicas: int) -> ModelInfo:
        """Add or remove replicas of a running model."""
        record = self._get(uid)
        if not 1 <= replicas <= 64:
            raise InvalidRequest("replicas must be between 1 and 64", param="replicas")
        live = [r for r in record.replicas if r.status.live]
        if replicas > len(live):
            needs = Needs(memory=estimate_memory(record.spec.file_size_mb), gpus=record.options.get("gpus", 0),
                          engine=record.spec.engine)
            placements = place(self._workers(), needs, replicas - len(live), uid=uid,
                               pin_workers=record.options.get("workers"), pin_gpus=record.launch.get("gpu_idx"))
            start = max((r.index for r in record.replicas), default=-1) + 1
            fresh = [ReplicaRecord(index=start + i, worker=p.worker, gpus=p.gpus, memory=needs.memory)
                     for i, p in enumerate(placements)]
            record.replicas.extend(fresh)
            self._emit(record, "scale", f"scaling up to {replicas} replicas")
            for replica in fresh:
                self._spawn(self._start_replica(record, replica))
        elif replicas < len(live):
            drop = sorted(live, key=lambda r: (r.status.serving, -r.index))[: len(live) - replicas]
            self._emit(record, "scale", f"scaling down to {replicas} replicas")
            await asyncio.gather(*(self._stop_replica(r) for r in drop))
            record.replicas = [r for r in record.replicas if r not in drop]
            self._notify(uid)
        self._persist("scale", record)
        return record.describe()

    # -- handlers: catalog and cluster ----------------------------------------------------------

    def catalog_list(self, query: str | None = None, ability: str | None = None,
                     format: str | None = None) -> list[dict[str, Any]]:
        return [f.summary() for f in self.catalog.search(query, ability=ability, fmt=format)]

    def catalog_get(self, name: str) -> dict[str, Any]:
        family = self.catalog.get(name)
        return {**family.model_dump(mode="json"), "builtin": family.builtin}

    def catalog_register(self, family: dict[str, Any], overwrite: bool = False) -> dict[str, Any]:
        return self.catalog.register(family, overwrite=overwrite).summary()

    def catalog_unregister(self, name: str) -> dict[str, Any]:
        in_use = [r.uid for r in self.models.values() if r.spec.model_name == name]
        if in_use:
            raise InvalidRequest(
                f"{name!r} is in use by {', '.join(in_use)}; terminate those first", param="name"
            )
        self.catalog.unregister(name)
        return {"name": name, "unregistered": True}

    def catalog_engines(self, name: str) -> list[dict[str, Any]]:
        return self.catalog.engines(name)

    def cluster(self) -> dict[str, Any]:
        return describe_cluster(self.scheduler.address, self.scheduler.workers, self.models.values())
