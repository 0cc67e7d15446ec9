"""Default batch sizes: how many sequences a replica runs at once.

A replica should serve a handful of conversations at once without queueing
(8-16 for a small model on a laptop), but a sequence's KV cache costs memory
(``kv_bytes_per_token × context``), so the default is the number of full-context
sequences that fit in a share of the memory the worker has free, between 1 and
:data:`MAX_DEFAULT_SEQS`.  ``-o max_num_seqs=N`` overrides it.
"""

from __future__ import annotations

import logging

__all__ = ["MAX_DEFAULT_SEQS", "default_max_num_seqs", "free_memory"]

logger = logging.getLogger(__name__)

#: Most sequences a default launch runs at once.
MAX_DEFAULT_SEQS = 16
#: Share of the free memory the KV caches of a default launch may take.
KV_SHARE = 0.25


def free_memory(gpu: int | None = None) -> int | None:
    """Bytes free now: on GPU ``gpu`` (an NVML index, as the Supervisor hands them out),
    else the host's available memory; ``None`` when unknown."""
    if gpu is not None:
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(gpu)
            return int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
        except pynvml.NVMLError as exc:  # no NVML here: unknown
            logger.debug("free memory of GPU %d unknown: %s", gpu, exc)
            return None
    import psutil

    return int(psutil.virtual_memory().available)


def default_max_num_seqs(kv_bytes_per_seq: int, free_bytes: int | None, *, share: float = KV_SHARE) -> int:
    """Sequences whose full-context KV cache fits in ``share`` of ``free_bytes``,
    clamped to ``1..MAX_DEFAULT_SEQS`` (the cap when memory is unknown)."""
    if free_bytes is None or kv_bytes_per_seq <= 0:
        return MAX_DEFAULT_SEQS
    fits = int(free_bytes * share // kv_bytes_per_seq)
    return max(1, min(MAX_DEFAULT_SEQS, fits))
