"""The Supervisor's records of launched models: plain data, no Dask.

A :class:`ModelRecord` holds one launched model (uid, spec, options,
replicas, timestamps, last error, a bounded list of events); its status is
derived from its replicas' statuses by :func:`model_status`, a pure function.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from xnb.catalog.schema import LaunchSpec

__all__ = [
    "progress_line",
    "ModelRecord",
    "ReplicaRecord",
    "model_status",
    "REPLICA_PHASES",
    "MAX_EVENTS",
]

#: Replica statuses in launch order ("restarting": lost, a relaunch is pending); then the end states.
REPLICA_PHASES = ("restarting", "launching", "downloading", "loading", "ready")
END_STATES = ("error", "lost", "terminating", "stopped")
MAX_EVENTS = 200


@dataclass(eq=False)
class ReplicaRecord:
    index: int
    worker: str
    gpus: tuple[int, ...] = ()
    memory: int = 0
    status: str = "launching"
    key: str | None = None
    future: Any = field(default=None, repr=False)  # distributed.Future of the actor
    actor: Any = field(default=None, repr=False)
    progress: dict[str, Any] = field(default_factory=dict)
    load_info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 1
    since: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        return {
            "replica": self.index,
            "worker": self.worker,
            "gpus": list(self.gpus),
            "status": self.status,
            "key": self.key,
            "progress": dict(self.progress),
            "load": dict(self.load_info),
            "error": self.error,
            "attempts": self.attempts,
            "since": self.since,
        }


def model_status(replica_statuses: list[str], *, terminating: bool = False) -> str:
    """A model's status from its replicas'.

    ``terminating`` wins; any replica ready → ``ready`` (``degraded`` if others
    are lost or failed); otherwise the least advanced launch phase; otherwise
    ``lost`` if any replica was lost, else ``error``.
    """
    if terminating:
        return "terminating"
    if not replica_statuses:
        return "stopped"
    ready = replica_statuses.count("ready")
    if ready:
        broken = sum(1 for s in replica_statuses if s in ("lost", "error"))
        return "degraded" if broken else "ready"
    phases = [s for s in replica_statuses if s in REPLICA_PHASES]
    if phases:
        return min(phases, key=REPLICA_PHASES.index)
    return "lost" if "lost" in replica_statuses else "error"


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
    def status(self) -> str:
        return model_status([r.status for r in self.replicas], terminating=self.terminating)

    def event(self, kind: str, message: str, *, replica: int | None = None, **data: Any) -> None:
        self.version += 1
        self.events.append(
            {"time": time.time(), "kind": kind, "replica": replica, "message": message, **data}
        )

    def describe(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "model_name": self.spec.model_name,
            "status": self.status,
            "spec": self.spec.describe(),
            "replicas": [r.describe() for r in self.replicas],
            "replicas_ready": sum(1 for r in self.replicas if r.status == "ready"),
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
            "status": self.status,
            "abilities": list(self.spec.abilities),
            "engine": self.spec.engine,
            "model_name": self.spec.model_name,
            "version": self.version,
            "replicas": [
                {"replica": r.index, "worker": r.worker, "key": r.key, "status": r.status}
                for r in self.replicas
            ],
        }


def progress_line(record: dict[str, Any]) -> str:
    """One line of launch progress from a described record (CLI, magics, widgets)."""
    parts = []
    for r in record["replicas"]:
        p = r.get("progress") or {}
        text = r["status"]
        if r["status"] == "downloading" and p.get("total"):
            text += f" {100 * p.get('downloaded', 0) / p['total']:.0f}% of {p['total'] / 1e6:.0f} MB"
        parts.append(text)
    ready = sum(1 for r in record["replicas"] if r["status"] == "ready")
    return f"{record['uid']}: {record['status']} [{', '.join(parts)}] {ready}/{len(record['replicas'])} ready"
