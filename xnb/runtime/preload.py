"""Install xnb's Supervisor in a plain ``dask scheduler``:

    dask scheduler --preload xnb.runtime.preload

(``xnb scheduler`` does the same.)  The scheduler's environment must have xnb.
"""

from __future__ import annotations

from typing import Any

__all__ = ["dask_setup"]


def dask_setup(scheduler: Any) -> None:
    from xnb.runtime.supervisor import Supervisor

    scheduler.add_plugin(Supervisor())
