"""GPU discovery through NVML (``nvidia-ml-py``); a machine without GPUs (or
without the library or driver) simply has none."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["detect_gpus"]

logger = logging.getLogger(__name__)


def detect_gpus() -> list[dict[str, Any]]:
    """``[{"index", "name", "memory_total"}]`` for each NVIDIA GPU, or ``[]``."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        logger.debug("no NVIDIA driver: %s", exc)
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append({
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else str(name),
                "memory_total": int(memory.total),
            })
        return gpus
    finally:
        pynvml.nvmlShutdown()
