"""Batch inference from Dask tasks against resident models.

A model launched with xnb lives on a worker as an actor; Dask tasks (a Bag,
a DataFrame's partitions, delayed functions) can call it with one request per
partition instead of one per item::

    import dask.bag as db
    from xnb.batch import embed_bag

    texts = db.from_sequence(sentences, npartitions=8)
    vectors = np.stack(embed_bag(texts, "all-minilm-l6-v2").compute())

Inside a task the worker's own Dask client (:func:`distributed.get_client`)
is reused, with one :class:`~xnb.manager.ModelManager` per worker process
(so the model's routes stay cached between partitions).  ``scheduler_address``
is needed only when the model lives on another cluster than the tasks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["chat_partition", "embed_bag", "embed_partition"]

_lock = threading.Lock()
_managers: dict[tuple[str, str | None], Any] = {}


def _manager(scheduler_address: str | None) -> tuple[Any, Any]:
    """``(sync_runner, manager)`` for this process: the worker's client, or one for another cluster."""
    if scheduler_address is None:
        from distributed import get_client

        client = get_client()  # inside a task: the worker's client; elsewhere: the default client
    else:
        client = None
    key = (client.id if client is not None else "", scheduler_address)
    with _lock:
        entry = _managers.get(key)
        if entry is None:
            if client is None:
                import xnb

                xclient = xnb.connect(scheduler_address, start=False)
                entry = (xclient.dask, xclient.manager)
            else:
                from xnb.manager import ModelManager

                entry = (client, ModelManager(client))
            _managers[key] = entry
    return entry


def embed_partition(texts: Iterable[str], uid: str, scheduler_address: str | None = None,
                    *, normalize: bool = True) -> np.ndarray:
    """Embed one partition's texts with model ``uid`` in one request: a ``(n, dim)`` float32 array.

    Meant to run inside a Dask task (``bag.map_partitions(embed_partition, uid)``).
    An empty partition gives an array of shape ``(0, 0)``.
    """
    items = [str(t) for t in texts]
    if not items:
        return np.zeros((0, 0), dtype=np.float32)
    client, manager = _manager(scheduler_address)
    vectors, _tokens = client.sync(manager.embed, uid, items, normalize=normalize)
    return np.asarray(vectors, dtype=np.float32)


def embed_bag(bag: Any, uid: str, scheduler_address: str | None = None, *, normalize: bool = True) -> Any:
    """A Dask Bag of embedding vectors (one row per text, in order), one model call per partition."""
    return bag.map_partitions(embed_partition, uid, scheduler_address, normalize=normalize)


def chat_partition(prompts: Iterable[str], uid: str, scheduler_address: str | None = None,
                   **params: Any) -> list[str]:
    """Answer each prompt of a partition (single-turn chat); the requests run concurrently,
    so a model with continuous batching serves them together."""
    import asyncio

    from xnb.openai.requests import ChatCompletionRequest, parse_request

    items = [str(p) for p in prompts]
    if not items:
        return []
    client, manager = _manager(scheduler_address)

    async def run() -> list[str]:
        bodies = [parse_request(ChatCompletionRequest, {"model": uid, "messages": [{"role": "user", "content": p}],
                                                         **params}) for p in items]
        results = await asyncio.gather(*(manager.chat_completion(b) for b in bodies))
        return [r["choices"][0]["message"]["content"] for r in results]

    return client.sync(run)
