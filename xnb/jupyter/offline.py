"""Which catalog models can start without a model hub: shipped in a Python package, or
already downloaded into a worker's cache.  The catalog view, the launch form and
``%xnb catalog`` show it."""

from __future__ import annotations

import logging
from typing import Any

from xnb.errors import XnbError

__all__ = ["offline_labels"]

logger = logging.getLogger(__name__)


def offline_labels(client: Any, rows: list[dict[str, Any]]) -> dict[str, str]:
    """``{name: "packaged" | "cached" | ""}`` for catalog rows (``client.catalog()``)."""
    try:
        cached = client._sync(client.manager.cached)
    except (XnbError, OSError) as exc:  # a worker that cannot answer: show no cache marks
        logger.warning("could not read the workers' model caches: %s", exc)
        cached = {}
    names = {entry["model_name"] for entries in cached.values() for entry in entries}
    return {r["name"]: "packaged" if "package" in r.get("sources", []) else "cached" if r["name"] in names else ""
            for r in rows}
