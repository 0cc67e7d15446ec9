"""Replica placement: pure functions, no cluster needed.

Dask holds an actor's ``resources=`` only while its constructor runs, so the
Supervisor keeps its own accounting of what each worker hosts and asks
:func:`place` where new replicas go.  Given the workers (cores, memory, GPU
indices, what is already placed), what a replica needs (GPUs, a memory
estimate) and how many replicas, it chooses a worker and GPU indices for each,
or raises :class:`PlacementFailed` explaining, worker by worker, why not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xnb.errors import NextStep, PlacementFailed

__all__ = [
    "WorkerView",
    "PlacedReplica",
    "Needs",
    "Placement",
    "PlacementFailed",
    "place",
    "estimate_memory",
]

MB = 1024 * 1024


#: The uid :func:`place` gives the replicas it has just placed (of the model being placed).
NEW = "(new)"


@dataclass(frozen=True)
class PlacedReplica:
    uid: str
    memory: int = 0
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class WorkerView:
    address: str
    nthreads: int = 1
    memory_limit: int = 0  # bytes; 0 = unknown / unlimited
    gpus: tuple[int, ...] = ()  # GPU indices the worker advertises
    placed: tuple[PlacedReplica, ...] = ()
    name: str = ""
    engines: tuple[str, ...] | None = None  # engines it can run; None = not announced (any)

    @property
    def memory_used(self) -> int:
        return sum(r.memory for r in self.placed)

    @property
    def memory_free(self) -> int | None:
        return None if not self.memory_limit else self.memory_limit - self.memory_used

    @property
    def gpus_free(self) -> tuple[int, ...]:
        used = {g for r in self.placed for g in r.gpus}
        return tuple(g for g in self.gpus if g not in used)


@dataclass(frozen=True)
class Needs:
    memory: int = 0
    gpus: int = 0
    engine: str = ""


@dataclass(frozen=True)
class Placement:
    worker: str
    gpus: tuple[int, ...] = field(default=())


def estimate_memory(file_size_mb: float | None, *, context_tokens: int = 2048, sequences: int = 1) -> int:
    """A conservative resident-memory estimate for one replica, in bytes.

    The weights (file size) plus 20 %, plus a KV-cache allowance that grows with
    the context held, plus a fixed runtime overhead.
    """
    weights = int((file_size_mb or 0) * MB)
    kv = int(weights * 0.02 * max(1, context_tokens * sequences) / 2048)
    return int(weights * 1.2) + kv + 64 * MB


def _fits(worker: WorkerView, needs: Needs, pin_gpus: tuple[int, ...] | None) -> str | None:
    """Why this worker cannot take one more replica, or None if it can."""
    if needs.engine and worker.engines is not None and needs.engine not in worker.engines:
        return f"cannot run the {needs.engine} engine (it has {', '.join(worker.engines) or 'none'})"
    free = worker.memory_free
    if free is not None and needs.memory > free:
        return (
            f"needs ~{needs.memory / MB:.0f} MB, has {max(free, 0) / MB:.0f} MB free "
            f"of {worker.memory_limit / MB:.0f} MB"
        )
    if needs.gpus or pin_gpus:
        if not worker.gpus:
            return "has no GPU"
        if pin_gpus:
            busy = [g for g in pin_gpus if g not in worker.gpus_free]
            if busy:
                missing = [g for g in busy if g not in worker.gpus]
                what = "does not have" if missing else "already uses"
                return f"{what} GPU {', '.join(map(str, missing or busy))}"
        elif len(worker.gpus_free) < needs.gpus:
            return f"needs {needs.gpus} free GPU(s), has {len(worker.gpus_free)}"
    return None


def place(
    workers: list[WorkerView],
    needs: Needs,
    replicas: int = 1,
    *,
    pin_workers: list[str] | None = None,
    pin_gpus: list[int] | None = None,
    uid: str = "",
) -> list[Placement]:
    """Choose a worker (and GPU indices) for each of ``replicas`` new replicas of model ``uid``.

    Replicas spread: each goes to the eligible worker hosting the fewest
    replicas of this model so far, then the fewest replicas of any model (ties:
    most free memory, then address) — so a model's replicas land on different
    workers whatever else runs there, and a lost worker takes as few of them
    as it can.  Raises
    :class:`PlacementFailed` with a reason per worker when they do not fit.
    """
    if replicas < 1:
        raise PlacementFailed("replicas must be at least 1")
    candidates = list(workers)
    if pin_workers:
        known = {w.address for w in workers} | {w.name for w in workers if w.name}
        unknown = [p for p in pin_workers if p not in known]
        if unknown:
            raise PlacementFailed(
                f"unknown worker(s) {', '.join(unknown)}; `xnb cluster` lists the workers"
            )
        candidates = [w for w in workers if w.address in pin_workers or (w.name and w.name in pin_workers)]
    if not candidates:
        raise PlacementFailed("the cluster has no workers; start one with `xnb worker SCHEDULER`")
    pins = tuple(pin_gpus) if pin_gpus else None
    if pins and needs.gpus and len(pins) != needs.gpus:
        raise PlacementFailed(f"asked for {needs.gpus} GPU(s) but pinned {len(pins)}: {list(pins)}")
    state = {w.address: w for w in candidates}
    chosen: list[Placement] = []
    for _ in range(replicas):
        reasons: dict[str, str] = {}
        eligible = []
        for w in state.values():
            why = _fits(w, needs, pins)
            if why is None:
                eligible.append(w)
            else:
                reasons[w.address] = why
        if not eligible:
            detail = "; ".join(f"{addr}: {why}" for addr, why in sorted(reasons.items()))
            placed = f" ({len(chosen)} of {replicas} placed)" if chosen else ""
            raise PlacementFailed(
                f"no worker can take the replica{placed}: {detail}. Free room by terminating a model, "
                "add a worker (`xnb worker SCHEDULER` on another machine), or ask for fewer replicas or GPUs",
                next_step=NextStep("list", why="shows what runs where"),
            )
        best = min(
            eligible,
            key=lambda w: (sum(1 for r in w.placed if r.uid in (uid, NEW)), len(w.placed),
                           -(w.memory_free or 0), w.address),
        )
        if pins:
            gpus = pins
        else:
            gpus = best.gpus_free[: needs.gpus] if needs.gpus else ()
        chosen.append(Placement(best.address, tuple(gpus)))
        state[best.address] = WorkerView(
            address=best.address,
            nthreads=best.nthreads,
            memory_limit=best.memory_limit,
            gpus=best.gpus,
            placed=best.placed + (PlacedReplica(NEW, needs.memory, tuple(gpus)),),
            name=best.name,
            engines=best.engines,
        )
    return chosen
