"""The xnb widget panel: catalog, launch, running models, cluster and chat in one place.

    import xnb.jupyter
    xnb.jupyter.panel()          # or %xnb panel

Widget messages are not processed while a cell runs, so nothing here blocks
the kernel: launches (with their progress), chat streams and the periodic
refresh run in background threads that update the widgets directly.  One
panel per kernel refreshes itself (every ``refresh_s``); an older panel stops
refreshing when a newer one is created (its Refresh button still works).
"""

from __future__ import annotations

import html
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from xnb.errors import XnbError
from xnb.jupyter.offline import offline_labels
from xnb.jupyter.media_view import TryBox
from xnb.jupyter.views import CatalogView, ChatBox, ClusterView, LaunchForm, ModelsView

__all__ = ["PANEL_MIME", "PLACEHOLDER", "Panel", "panel"]

logger = logging.getLogger(__name__)

#: What a notebook shows where the live panel cannot be (widgets end with their kernel).
PLACEHOLDER = ("xnb panel — this output belongs to an earlier kernel session; run this cell again "
               "(or %xnb panel) to show it")
#: The panel's own output type: the xnb JupyterLab extension renders it (the widget while it is
#: live, PLACEHOLDER once its kernel is gone); without the extension JupyterLab skips the unknown
#: type and renders the widget-view as usual.
PANEL_MIME = "application/vnd.xnb.panel+json"
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"

_live_panels: weakref.WeakSet[Panel] = weakref.WeakSet()


class Panel(w.VBox):
    """Everything xnb in one widget.  ``client`` defaults to :func:`xnb.connect`."""

    def __init__(self, client: Any = None, *, refresh_s: float = 2.0, auto_refresh: bool = True) -> None:
        if client is None:
            import xnb

            client = xnb.connect()
        self.client = client
        self.refresh_s = refresh_s
        self.status = w.HTML(layout=w.Layout(flex="1"))  # what happened last (errors stay)
        self.status.add_class("xnb-status")
        self.updated = w.HTML()  # the background refresh writes here, never over a message
        self.updated.add_class("xnb-updated")
        refresh = w.Button(description="Refresh", icon="refresh", layout=w.Layout(width="110px"))
        refresh.add_class("xnb-refresh")
        refresh.on_click(lambda _: self.background(self.refresh))
        header = w.HBox([w.HTML(f"<b>xnb</b> &nbsp;<code>{html.escape(client.scheduler_address)}</code>"),
                         self.status, self.updated, refresh])
        self.models = ModelsView(self)
        self.launch_form = LaunchForm(self)
        self.catalog = CatalogView(self)
        self.cluster = ClusterView(self)
        self.chat = ChatBox(self)
        self.try_box = TryBox(self)
        self.tabs = w.Tab(children=[self.models, self.launch_form, self.catalog, self.cluster, self.chat,
                                    self.try_box])
        self.tabs.titles = ("Models", "Launch", "Catalog", "Cluster", "Chat", "Try")
        super().__init__([header, self.tabs])
        self.add_class("xnb-panel")
        self._stop = threading.Event()
        self._refreshing = threading.Lock()  # the refresh thread and button/launch threads take turns
        self._thread: threading.Thread | None = None
        self.refresh(catalog=True)
        if auto_refresh:
            for other in list(_live_panels):
                other.stop_refreshing()
            _live_panels.add(self)
            self._thread = threading.Thread(target=self._refresh_loop, name="xnb-panel-refresh", daemon=True)
            self._thread.start()

    # -- background work -------------------------------------------------------------------------

    def background(self, fn: Callable[..., Any], *args: Any) -> threading.Thread:
        """Run ``fn`` in a thread; an XnbError shows in the status line instead of vanishing."""

        def run() -> None:
            try:
                fn(*args)
            except XnbError as exc:
                self.set_status(exc.render("notebook"), error=True)
            except Exception as exc:  # a widget callback must never die silently: show and log it
                logger.exception("xnb panel: %s failed", getattr(fn, "__name__", fn))
                self.set_status(f"{type(exc).__name__}: {exc}", error=True)

        thread = threading.Thread(target=run, name="xnb-panel-work", daemon=True)
        thread.start()
        return thread

    def set_status(self, text: str, *, error: bool = False) -> None:
        color = "#b00020" if error else "#555"
        self.status.value = f"<span style='color:{color}'>{html.escape(text)}</span>"

    def refresh(self, *, catalog: bool = False) -> None:
        """Re-read models and cluster (and the catalog when asked); safe from any thread."""
        with self._refreshing:
            records = self.client.list()
            self.models.update(records)
            self.chat.update_models(records)
            self.try_box.update_models(records)
            self.cluster.update(self.client.cluster_info())
            if catalog:
                rows = self.client.catalog()
                offline = offline_labels(self.client, rows)
                self.catalog.set_rows(rows, offline)
                self.launch_form.set_catalog(rows, offline)
        self.updated.value = (f"<span style='color:#777'>{len(records)} model(s) · "
                              f"updated {time.strftime('%H:%M:%S')}</span>")

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.refresh()
            except XnbError as exc:
                self.set_status(exc.render("notebook"), error=True)
            except Exception as exc:  # noqa: BLE001 - keep refreshing after a transient failure; show it
                logger.warning("xnb panel refresh failed: %s", exc)
                self.set_status(f"refresh failed: {type(exc).__name__}: {exc}", error=True)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The widget, with a stand-in for wherever it cannot be shown: ``text/plain`` for
        nbconvert and GitHub, and :data:`PANEL_MIME` (the widget-view plus the hint) for the xnb
        JupyterLab extension, which shows the hint instead of ipywidgets' error after a restart."""
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict) and WIDGET_VIEW_MIME in bundle:
            bundle["text/plain"] = PLACEHOLDER
            bundle[PANEL_MIME] = {**bundle[WIDGET_VIEW_MIME], "hint": PLACEHOLDER}
        return bundle

    def stop_refreshing(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.stop_refreshing()
        for view in (self.models, self.launch_form, self.catalog, self.cluster, self.chat, self.try_box):
            view.close()
        super().close()


def panel(client: Any = None, **kwargs: Any) -> Panel:
    """The xnb panel (see :class:`Panel`)."""
    return Panel(client, **kwargs)
