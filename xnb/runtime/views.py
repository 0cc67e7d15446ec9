"""What the Supervisor reports about its workers, from the scheduler's worker states
and its model records: the placement view of each worker and the cluster description
(``xnb_cluster``: ``xnb cluster``, ``%xnb status``, ``GET /api/cluster``, the panel's cluster view)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from xnb.runtime.placement import PlacedReplica, WorkerView
from xnb.runtime.registry import ModelRecord
from xnb.runtime.worker_info import ENGINES_KEY

__all__ = ["worker_views", "describe_cluster"]


def worker_views(workers: Mapping[str, Any], models: Iterable[ModelRecord],
                 exclude: Collection[str] = frozenset()) -> list[WorkerView]:
    """Each worker (a Dask ``WorkerState``) with the live replicas placed on it."""
    placed: dict[str, list[PlacedReplica]] = {}
    for record in models:
        for r in record.replicas:
            if r.status.live:
                placed.setdefault(r.worker, []).append(PlacedReplica(record.uid, r.memory, r.gpus))
    views = []
    for addr, ws in workers.items():
        if addr in exclude:
            continue
        n_gpus = int(ws.resources.get("GPU", 0))
        views.append(
            WorkerView(
                address=addr,
                nthreads=ws.nthreads,
                memory_limit=ws.memory_limit or 0,
                gpus=tuple(range(n_gpus)),
                placed=tuple(placed.get(addr, [])),
                name=str(ws.name),
                engines=_engines(ws),
            )
        )
    return views


def _engines(ws: Any) -> tuple[str, ...] | None:
    """The engines a worker announced (``xnb.runtime.worker_info``), or None."""
    names = (getattr(ws, "extra", None) or {}).get(ENGINES_KEY)
    return tuple(names) if names is not None else None


def describe_cluster(scheduler_address: str, workers: Mapping[str, Any],
                     models: Collection[ModelRecord]) -> dict[str, Any]:
    """The scheduler, each worker (resources, load, the replicas on it) and the model count."""
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for record in models:
        for r in record.replicas:
            by_worker.setdefault(r.worker, []).append(
                {"uid": record.uid, "replica": r.index, "status": r.status.value, "gpus": list(r.gpus)}
            )
    rows = []
    for addr, ws in workers.items():
        metrics = ws.metrics or {}
        rows.append(
            {
                "address": addr,
                "name": str(ws.name),
                "nthreads": ws.nthreads,
                "memory_limit": ws.memory_limit,
                "memory_used": metrics.get("memory", 0),
                "cpu_percent": metrics.get("cpu", 0.0),
                "resources": dict(ws.resources),
                "gpus": int(ws.resources.get("GPU", 0)),
                "engines": list(_engines(ws) or []),
                "status": str(ws.status.name if hasattr(ws.status, "name") else ws.status),
                "models": by_worker.get(addr, []),
            }
        )
    return {
        "scheduler": scheduler_address,
        "workers": sorted(rows, key=lambda w: w["address"]),
        "models": len(models),
    }
