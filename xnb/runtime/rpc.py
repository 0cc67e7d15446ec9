"""ActorRef: how a client process calls one model actor on its worker.

It makes the same ``actor_execute`` RPC that ``distributed.Actor`` makes, but
holds no future on the actor's key (see docs/architecture.md), so a client that
used a model never keeps it alive after the Supervisor terminates it.  This
module is what client processes (the manager, the sidecar) import: it does not
pull in the actor or any engine.
"""

from __future__ import annotations

from typing import Any

from distributed.protocol import to_serialize

from xnb.errors import ModelNotFound, ReplicaLost, XnbError

__all__ = ["ActorRef"]


def _wire(value: Any) -> Any:
    """Plain data travels as msgpack (cheap); anything else is pickled."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, dict)) and _plain(value):
        return value
    return to_serialize(value)


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


class ActorRef:
    """Calls one model actor on its worker (what ``distributed.Actor`` does internally).

    Unlike ``distributed.Actor``, it holds no future on the actor's key, so a
    client that used a model never keeps it alive after the Supervisor
    terminates it.  ``rpc`` is a Dask connection pool (``client.rpc``, or the
    manager's own pool with a short connect timeout).
    """

    def __init__(self, rpc: Any, address: str, key: str) -> None:
        self.rpc = rpc
        self.address = address
        self.key = key

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            reply = await self.rpc(self.address).actor_execute(
                actor=self.key,
                function=method,
                args=[_wire(a) for a in args],
                kwargs={k: _wire(v) for k, v in kwargs.items()},
            )
        except OSError as exc:
            raise ReplicaLost(f"the worker serving this model ({self.address}) is unreachable: {exc}") from None
        except KeyError:
            raise ModelNotFound("this model replica no longer exists (terminated?)", param="model") from None
        if reply["status"] == "OK":
            return reply["result"]
        exc = reply["exception"]
        if isinstance(exc, XnbError):
            raise exc
        raise XnbError(f"model actor call {method} failed: {type(exc).__name__}")
