"""Stored responses (``store: true``), kept on disk so they outlive the sidecar.

One JSON file per response under ``$XNB_HOME/responses/``: the response object
and the conversation (chat messages) a ``previous_response_id`` continues.
Writes are atomic (a temporary file in the same folder, then ``os.replace``),
so a crash never leaves half a response.  The store is bounded by count:
past ``max_items`` the least recently used responses are evicted (a read
refreshes a file's modification time, which is the use clock), so an active
conversation survives while abandoned ones go first.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from xnb.errors import NotFound

__all__ = ["ResponseStore", "DEFAULT_MAX_ITEMS"]

logger = logging.getLogger(__name__)

#: How many responses are kept by default (XNB_RESPONSES_MAX).
DEFAULT_MAX_ITEMS = 10_000

_ID_RE = re.compile(r"^resp_[A-Za-z0-9_-]{1,64}$")


class ResponseStore:
    """A bounded, file-backed store of responses; safe to use from threads."""

    def __init__(self, root: Path, max_items: int = DEFAULT_MAX_ITEMS) -> None:
        self.root = Path(root)
        self.max_items = max(1, max_items)
        self._lock = threading.Lock()
        self._used: dict[str, float] | None = None  # id → last use, loaded lazily

    def _path(self, rid: str) -> Path:
        if not _ID_RE.match(rid):
            raise NotFound(f"no stored response {rid!r}", param="response_id")
        return self.root / f"{rid}.json"

    def _index(self) -> dict[str, float]:
        if self._used is None:
            self.root.mkdir(parents=True, exist_ok=True)
            used = {}
            for path in self.root.glob("resp_*.json"):
                try:
                    used[path.stem] = path.stat().st_mtime
                except FileNotFoundError:
                    continue
            self._used = used
        return self._used

    def put(self, rid: str, record: dict[str, Any]) -> None:
        """Store (or replace) a response record atomically; evict past the bound."""
        path = self._path(rid)
        data = json.dumps(record, separators=(",", ":")).encode()
        with self._lock:
            used = self._index()
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            used[rid] = time.time()
            self._evict(used)

    def _evict(self, used: dict[str, float]) -> None:
        excess = len(used) - self.max_items
        if excess <= 0:
            return
        for rid in sorted(used, key=used.__getitem__)[:excess]:
            (self.root / f"{rid}.json").unlink(missing_ok=True)
            del used[rid]
            logger.info("response store full (%d): evicted %s", self.max_items, rid)

    def get(self, rid: str) -> dict[str, Any]:
        """The stored record; 404 if it was never stored, deleted or evicted."""
        path = self._path(rid)
        with self._lock:
            try:
                record = json.loads(path.read_bytes())
            except FileNotFoundError:
                raise NotFound(
                    f"no stored response {rid!r} (never stored with store=true, deleted, or evicted)",
                    param="response_id",
                ) from None
            except ValueError:  # not written by this store (writes are atomic)
                raise NotFound(f"stored response {rid!r} is unreadable", param="response_id") from None
            now = time.time()
            os.utime(path, (now, now))
            self._index()[rid] = now
        return record

    def delete(self, rid: str) -> None:
        path = self._path(rid)
        with self._lock:
            try:
                path.unlink()
            except FileNotFoundError:
                raise NotFound(f"no stored response {rid!r}", param="response_id") from None
            self._index().pop(rid, None)
