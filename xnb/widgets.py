"""``xnb.widgets``: the ipywidgets control panel (see :mod:`xnb.jupyter.widgets`).

    from xnb.widgets import panel
    panel()
"""

from __future__ import annotations

from xnb.jupyter.widgets import Panel, panel

__all__ = ["Panel", "panel"]
