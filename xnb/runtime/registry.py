"""The Supervisor's records of launched models: plain data, no Dask.

A :class:`ModelRecord` holds one launched model (uid, spec, options,
replicas, timestamps, last error, a bounded list of events); its status is
derived from its replicas' statuses by :meth:`ModelStatus.of_replicas`
(:mod:`xnb.protocol`), a pure function.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from xnb.catalog.schema import LaunchSpec
from xnb.protocol import ModelInfo, ModelStatus, ReplicaInfo, ReplicaStatus

__all__ = [
    "progress_line",
    "ModelRecord",
    "ReplicaRecord",
    "MAX_EVENTS",
]

MAX_EVENTS = 200


@dataclass(eq=False)
class ReplicaRecord:
    index: int
    worker: str
    gpus: tuple[int, ...] = ()
    memory: int = 0
    status: ReplicaStatus = ReplicaStatus.LAUNCHING
    key: str | None = None
    future: Any = field(default=None, repr=False)  # distributed.Future of the actor
    actor: Any = field(default=None, repr=False)
    progress: dict[str, Any] = field(default_factory=dict)
    load_info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 1
    since: float = field(default_factory=time.time)

    def describe(self) -> ReplicaInfo:
        return {
            "replica": self.index,
            "worker": self.worker,
            "gpus": list(self.gpus),
            "status": self.status.value,
            "key": self.key,
            "progress": dict(self.progress),
            "load": dict(self.load_info),
            "error": self.error,
            "attempts": self.attempts,
            "since": self.since,
        }


@dataclass(eq=False)
class ModelRecord:
    uid: str
    spec: LaunchSpec
    replicas: list[ReplicaRecord] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # launch options: max_queue, restart, ...
    launch: dict[str, Any] = field(default_factory=dict)  # what the user asked for (kept by the state store)
    created: float = field(default_factory=time.time)
    ready_at: float | None = None
    last_error: str | None = None
    terminating: bool = False
    version: int = 0
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))

    @property
    def status(self) -> ModelStatus:
        return ModelStatus.of_replicas([r.status for r in self.replicas], terminating=self.terminating)

    def event(self, kind: str, message: str, *, replica: int | None = None, **data: Any) -> None:
        self.version += 1
        self.events.append(
            {"time": time.time(), "kind": str(kind), "replica": replica, "message": message, **data}
        )

    def describe(self) -> ModelInfo:
        return {
            "uid": self.uid,
            "model_name": self.spec.model_name,
            "status": self.status.value,
            "spec": self.spec.describe(),
            "replicas": [r.describe() for r in self.replicas],
            "replicas_ready": sum(1 for r in self.replicas if r.status.serving),
            "workers": sorted({r.worker for r in self.replicas}),
            "options": dict(self.options),
            "created": self.created,
            "ready_at": self.ready_at,
            "last_error": self.last_error,
            "version": self.version,
        }

    def routes(self) -> dict[str, Any]:
        """What a client needs to call the replicas directly."""
        return {
            "uid": self.uid,
            "status": self.status.value,
            "abilities": list(self.spec.abilities),
            "engine": self.spec.engine,
            "model_name": self.spec.model_name,
            "dimensions": self.spec.dimensions,
            "matryoshka_min_dimensions": self.spec.matryoshka_min_dimensions,
            "version": self.version,
            "replicas": [
                {"replica": r.index, "worker": r.worker, "key": r.key, "status": r.status.value}
                for r in self.replicas
            ],
        }


def progress_line(record: ModelInfo, now: float | None = None) -> str:
    """One line of launch progress from a described record (CLI, magics, widgets):
    ``m: loading 12s (importing torch) [1/2 ready]``, phases with their elapsed time
    and bytes where known.  While any replica still launches the model is "launching",
    whatever the status of the replicas already up."""
    now = time.time() if now is None else now
    replicas = record["replicas"]
    ready = sum(1 for r in replicas if ReplicaStatus(r["status"]).serving)
    phases = []
    for r in replicas:
        status, p = ReplicaStatus(r["status"]), r.get("progress") or {}
        if status.serving or status is ReplicaStatus.STOPPED:
            continue
        text = status.value
        if status.launching and p.get("since"):
            text += f" {_elapsed(now - p['since'])}"
        if status is ReplicaStatus.DOWNLOADING and p.get("total"):
            text += f" {_mb(p.get('downloaded', 0))} of {_mb(p['total'])}"
        elif status is ReplicaStatus.DOWNLOADING and p.get("phase") == "converting":
            target = p.get("quantization") or f"{p.get('dtype')} safetensors"
            text += f" (converting {p.get('file')} to {target})"
        elif status is ReplicaStatus.LOADING and p.get("step"):
            size = f", {_mb(p['size_bytes'])}" if p.get("size_bytes") and "weights" in p["step"] else ""
            text += f" ({p['step']}{size})"
        phases.append(text if len(replicas) == 1 else f"#{r.get('replica', '?')} {text}")
    launching = any(ReplicaStatus(r["status"]).launching for r in replicas)
    model_status = ModelStatus(record["status"])
    label = ModelStatus.LAUNCHING.value if launching and model_status.serving else model_status.value
    error = f": {record['last_error']}" if model_status.failed and record.get("last_error") else ""
    if len(replicas) == 1 and phases and not error:
        return f"{record['uid']} {phases[0]} [{ready}/1 ready]"
    detail = f": {'; '.join(phases)}" if phases and not error else ""
    return f"{record['uid']} {label}{detail}{error} [{ready}/{len(replicas)} ready]"


def _elapsed(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"


def _mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"
