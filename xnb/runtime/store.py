"""The Supervisor's durable desired state: what users asked for, kept across scheduler restarts.

A :class:`StateStore` is one JSON file (``state.json`` under the state
directory, ``$XNB_STATE_DIR`` or ``$XNB_HOME/state``) holding every launched
model: its launch options (``model``, ``uid``, engine, format, replicas, restart
policy, ...), when it was created and the names of the workers its replicas ran
on.  It is written atomically (a temporary file, ``fsync``, ``rename``, then an
``fsync`` of the directory), so a scheduler killed at any moment leaves either
the old or the new file, never half of one.

What is *not* here: replica placement (recomputed), load progress and events
(a restored model starts a fresh event list with a ``restore`` event), and the
custom catalog entries, which already live in ``$XNB_HOME/catalog`` as files.
A terminated model is removed from the store, so it stays terminated.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from xnb.errors import XnbError
from xnb.protocol import LaunchOptions, ReplicaStatus, validate
from xnb.runtime.placement import place
from xnb.runtime.registry import ReplicaRecord

__all__ = ["StateStore", "SavedModel", "STATE_FILE", "STATE_VERSION", "restore_models", "RESTORE_GRACE_S"]

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
STATE_VERSION = 1

#: One saved model: ``{"launch": {...launch options...}, "created": float, "workers": [names]}``.
SavedModel = dict[str, Any]


class StateStore:
    """Launched models and their launch options, in one atomically written JSON file."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory).expanduser()
        self.path = self.directory / STATE_FILE
        self._models: dict[str, SavedModel] = self._read()

    def _read(self) -> dict[str, SavedModel]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Never silently start over: keep the unreadable file for a human to look at.
            broken = self.path.with_name(f"{STATE_FILE}.unreadable-{int(time.time())}")
            logger.error("cannot read the xnb state %s (%s); moved it to %s and starting empty",
                         self.path, exc, broken)
            try:
                os.replace(self.path, broken)
            except OSError:
                pass
            return {}
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            logger.error("ignoring the xnb state %s: unknown format version %r", self.path,
                         data.get("version") if isinstance(data, dict) else None)
            return {}
        models = data.get("models") or {}
        return {uid: m for uid, m in models.items() if isinstance(m, dict) and isinstance(m.get("launch"), dict)}

    def _write(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"version": STATE_VERSION, "saved": time.time(), "models": self._models},
                          indent=1, sort_keys=True)
        tmp = self.path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself is durable
        finally:
            os.close(dir_fd)

    # -- what the Supervisor calls ----------------------------------------------------------------

    def models(self) -> dict[str, SavedModel]:
        """Every saved model by uid (a copy)."""
        return {uid: json.loads(json.dumps(m)) for uid, m in self._models.items()}

    def launched(self, uid: str, launch: dict[str, Any], *, created: float, workers: list[str]) -> None:
        """Remember a launch (``launch``: the launch options, ``uid`` included)."""
        self._models[uid] = {"launch": {**launch, "uid": uid}, "created": created, "workers": sorted(set(workers))}
        self._write()

    def scaled(self, uid: str, replicas: int, *, workers: list[str]) -> None:
        saved = self._models.get(uid)
        if saved is None:
            return
        saved["launch"]["replicas"] = replicas
        saved["workers"] = sorted(set(workers))
        self._write()

    def terminated(self, uid: str) -> None:
        if self._models.pop(uid, None) is not None:
            self._write()

    def apply(self, change: str, record: Any, workers: dict[str, Any]) -> None:
        """Record a change to a model (``launch``, ``scale``, ``terminate``);
        ``workers``: the scheduler's worker states by address (for their names)."""
        names = [str(ws.name) for r in record.replicas if (ws := workers.get(r.worker)) is not None]
        if change == "launch":
            self.launched(record.uid, record.launch, created=record.created, workers=names)
        elif change == "scale":
            self.scaled(record.uid, sum(1 for r in record.replicas if r.status.live), workers=names)
        elif change == "terminate":
            self.terminated(record.uid)
        else:
            raise ValueError(f"unknown change {change!r}")


# -- restoring after a scheduler restart ---------------------------------------------------------

#: How long a restored model waits for the workers its replicas ran on before it is
#: placed on whatever workers have joined (it waits for a worker that fits regardless).
RESTORE_GRACE_S = 60.0


def restore_models(supervisor: Any, saved: dict[str, SavedModel]) -> None:
    """Put the saved models back in the registry at once (replicas ``restarting``:
    listed, answering 503 until ready) and relaunch them as workers join, placed
    in the order they were first launched."""
    pending = []
    for uid, model in sorted(saved.items(), key=lambda item: item[1].get("created", 0)):
        try:
            record, needs = supervisor._new_record(validate(LaunchOptions, model["launch"]))
        except XnbError as exc:  # e.g. its custom catalog entry was removed meanwhile
            logger.error("cannot restore model %s: %s", uid, exc.message)
            continue
        record.created = float(model.get("created") or record.created)
        n = int(model["launch"].get("replicas", 1))
        record.replicas = [ReplicaRecord(index=i, worker="", memory=needs.memory, status=ReplicaStatus.RESTARTING)
                           for i in range(n)]
        supervisor.models[record.uid] = record
        supervisor._emit(record, "restore", f"restoring {n} replica(s) after a scheduler restart; "
                         "waiting for workers")
        pending.append((record, needs, set(model.get("workers") or [])))
    if pending:
        supervisor._spawn(_relaunch(supervisor, pending))


async def _relaunch(supervisor: Any, pending: list[tuple[Any, Any, set[str]]]) -> None:
    """Place each restored model once the workers it ran on are back (or after
    :data:`RESTORE_GRACE_S`, on the workers there are), then launch its replicas."""
    deadline = time.monotonic() + RESTORE_GRACE_S
    waiting_said: set[str] = set()
    while pending:
        names = {str(ws.name) for ws in supervisor.scheduler.workers.values()}
        for item in list(pending):
            record, needs, previous = item
            if record.terminating or supervisor.models.get(record.uid) is not record:
                pending.remove(item)
                continue
            if not names or not (previous <= names or time.monotonic() >= deadline):
                continue
            launch = record.launch
            try:
                placements = place(supervisor._workers(), needs, len(record.replicas),
                                   pin_workers=launch.get("workers"), pin_gpus=launch.get("gpu_idx"),
                                   uid=record.uid)
            except XnbError as exc:
                if record.uid not in waiting_said:
                    supervisor._emit(record, "restart-wait", f"waiting for a worker ({exc.message})")
                    waiting_said.add(record.uid)
                continue
            pending.remove(item)
            for replica, placement in zip(record.replicas, placements):
                replica.worker, replica.gpus, replica.status = placement.worker, placement.gpus, ReplicaStatus.LAUNCHING
            supervisor._emit(record, "launch", f"launching {len(record.replicas)} replica(s) of "
                             f"{record.spec.model_name} on {record.spec.engine} (restored)")
            for replica in record.replicas:
                supervisor._spawn(supervisor._start_replica(record, replica))
        if pending:
            try:
                await asyncio.wait_for(supervisor._worker_joined.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
