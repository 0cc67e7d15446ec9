"""Pulling many streams from one model replica with one call per step.

A client process (the sidecar, a notebook's manager) may have many streams open
on one replica: at concurrency 8, eight chats.  Pulling each on its own costs
a round trip per stream per engine step, on both sides, and on a small machine
that CPU comes out of the engine's share.  So each manager has one
:class:`ReplicaPuller` per replica it streams from: the streams are started
with the puller's id (``ModelActor.start(..., sid=..., puller=...)``) and one
``ModelActor.pull_all`` call at a time returns the output of all of them; the
puller hands each stream's part to that stream's queue.

A puller runs while it has streams and stops when the last one ends; a
replica that becomes unreachable fails every stream waiting on it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from xnb.errors import XnbError
from xnb.protocol import PullResult
from xnb.runtime.rpc import ActorRef

__all__ = ["Pullers", "ReplicaPuller"]

logger = logging.getLogger(__name__)


class ReplicaPuller:
    """The streams one client process pulls from one replica, pulled together."""

    def __init__(self, actor: ActorRef, poll_s: float) -> None:
        self.actor = actor
        self.poll_s = poll_s
        self.id = uuid.uuid4().hex  # the replica groups our streams by it
        self._queues: dict[str, asyncio.Queue[PullResult | BaseException]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return not self._queues

    def open(self) -> tuple[str, asyncio.Queue[PullResult | BaseException]]:
        """A new stream id and the queue its results arrive on.  Open it *before*
        starting the stream on the replica: a pull may return its first output
        before the start call's reply arrives."""
        sid = uuid.uuid4().hex
        queue: asyncio.Queue[PullResult | BaseException] = asyncio.Queue()
        self._queues[sid] = queue
        return sid, queue

    def started(self) -> None:
        """A stream was started on the replica: make sure the pull loop runs."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"xnb-pull-{self.actor.key}")

    @staticmethod
    async def next(queue: asyncio.Queue[PullResult | BaseException]) -> PullResult:
        """A stream's next result, or the error that ended the pulls."""
        item = await queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self, sid: str) -> None:
        """Stop delivering to ``sid`` (it ended, failed to start, or its reader left)."""
        self._queues.pop(sid, None)

    async def _run(self) -> None:
        while self._queues:
            try:
                results = await self.actor.call("pull_all", self.id, self.poll_s)
            except Exception as exc:  # noqa: BLE001 - handed on as is, to every reader
                # The replica is gone or failed (ReplicaLost, ModelNotFound, ...): every
                # waiting stream raises that same error; none is left hanging.
                if not isinstance(exc, XnbError):
                    logger.exception("pulling from %s failed", self.actor.key)
                for queue in self._queues.values():
                    queue.put_nowait(exc)
                self._queues.clear()
                return
            for sid, raw in results.items():
                queue = self._queues.get(sid)
                if queue is None:
                    continue  # its reader left; the manager aborts it
                result = PullResult(*raw)
                if result.done:
                    del self._queues[sid]
                queue.put_nowait(result)

    def cancel(self) -> None:
        """Stop pulling (the manager is closing)."""
        if self._task is not None:
            self._task.cancel()


class Pullers:
    """A manager's pullers, one per replica it streams from."""

    def __init__(self) -> None:
        self._by_replica: dict[tuple[str, str], ReplicaPuller] = {}

    def get(self, actor: ActorRef, poll_s: float) -> ReplicaPuller:
        """The puller for ``actor``'s replica (forgetting idle ones of other replicas)."""
        ident = (actor.address, actor.key)
        puller = self._by_replica.get(ident)
        if puller is None:
            for other, old in list(self._by_replica.items()):
                if old.idle:
                    del self._by_replica[other]
            puller = self._by_replica[ident] = ReplicaPuller(actor, poll_s)
        return puller

    def cancel_all(self) -> None:
        for puller in self._by_replica.values():
            puller.cancel()
        self._by_replica.clear()
