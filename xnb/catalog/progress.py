"""Download progress: huggingface_hub's tqdm-style bars turned into rate-limited
progress events (``{"phase": "downloading", "file", "downloaded", "total"}``) that the
actor forwards to the Supervisor (launch progress in the CLI, the API and the panels)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from xnb.protocol import ReplicaStatus

__all__ = ["ProgressCallback"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]

_EMIT_EVERY_S, _EMIT_EVERY_FRACTION = 0.25, 0.01


class _Progress:
    """Turns huggingface_hub's progress bars into rate-limited progress dicts.

    hf_hub_download/snapshot_download build bars with ``tqdm_class(total=, initial=,
    unit=, desc=)``; :attr:`bar_class` is a duck-typed bar bound to this reporter.
    hf_hub_download makes one byte bar per file, snapshot_download two aggregate byte
    bars (received, written; totals grow as files start) and a file-count bar: report
    the largest byte count against the smallest known total.
    """

    def __init__(self, callback: ProgressCallback | None, label: str) -> None:
        self.label, self.received = label, False  # received: any byte arrived in this call
        self._callback, self._lock, self._bars = callback, threading.Lock(), []
        self._last_done, self._last_time = -1, 0.0
        reporter = self

        class _Bar:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.total, self.n = kwargs.get("total"), kwargs.get("initial") or 0
                self.format_dict = {"rate": None}
                self.counts_bytes = kwargs.get("unit") == "B"
                if self.counts_bytes:
                    with reporter._lock:
                        reporter._bars.append(self)

            def update(self, n: float | None = 1) -> None:
                if n and self.counts_bytes:
                    reporter._advance(self, n)
                elif n:
                    self.n += n

            def __enter__(self) -> "_Bar":
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def close(self, *args: Any, **kwargs: Any) -> None:
                pass

            refresh = set_postfix_str = set_description = set_description_str = close

        self.bar_class = _Bar

    def emit(self, event: dict[str, Any]) -> None:
        if self._callback is None:
            return
        try:
            self._callback(event)
        except Exception:  # a broken progress sink must not fail the download; log it whole
            logger.warning("progress callback failed; no more reports for %s", self.label,
                           exc_info=True)
            self._callback = None

    def _advance(self, bar: Any, n: float) -> None:
        with self._lock:
            bar.n += n
            self.received = self.received or n > 0
            done = int(max(b.n for b in self._bars))
            totals = [int(b.total) for b in self._bars if b.total]
            total = max(min(totals), done) if totals else None
            now = time.monotonic()
            if done <= self._last_done:
                return
            if (total is not None and done >= total) or now - self._last_time >= _EMIT_EVERY_S or (
                    total and done - self._last_done >= total * _EMIT_EVERY_FRACTION):
                self._last_done, self._last_time = done, now
                self.emit({"phase": ReplicaStatus.DOWNLOADING.value, "file": self.label, "downloaded": done,
                           "total": total})
