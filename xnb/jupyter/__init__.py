"""xnb in Jupyter: a server extension, the ``%xnb`` magics and a widget panel.

* :mod:`xnb.jupyter.extension` — the Jupyter Server extension (enabled on
  install by ``jupyter-config/jupyter_server_config.d/xnb.json``): it attaches
  to or starts the cluster, runs the API sidecar as a child process and serves
  its every path at ``{base_url}xnb/<path>`` (``xnb/v1`` OpenAI, ``xnb/api``
  management) with Jupyter's own authentication.
* :mod:`xnb.jupyter.magics` — ``%load_ext xnb`` then ``%xnb help``.
* :mod:`xnb.jupyter.widgets` — :func:`panel` (catalog, launch, models,
  cluster, chat).
* :mod:`xnb.batch` — call resident models from Dask tasks
  (:func:`~xnb.batch.embed_partition`).

Importing this package imports nothing heavy; each part is imported when used.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["_jupyter_server_extension_points", "api_url", "jupyter_api_url", "load_ipython_extension", "panel"]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Where Jupyter Server finds the extension (``jpserver_extensions: {"xnb.jupyter": true}``)."""
    from xnb.jupyter.extension import XnbExtension

    return [{"module": "xnb.jupyter", "app": XnbExtension}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext xnb.jupyter`` (same as ``%load_ext xnb``): register the ``%xnb`` magics."""
    from xnb.jupyter.magics import load_ipython_extension as load

    load(ipython)


def panel(client: Any = None, **kwargs: Any) -> Any:
    """The xnb widget panel (see :class:`xnb.jupyter.widgets.Panel`)."""
    from xnb.jupyter.widgets import panel as make

    return make(client, **kwargs)


def api_url(settings: Any = None) -> str:
    """Base URL of the OpenAI-compatible API (append ``/v1``) for the cluster in use.

    ``XNB_API_URL`` (set for kernels by the Jupyter extension), else the
    ``api_url`` in the runtime file of the cluster running on this machine,
    else ``http://XNB_HOST:XNB_PORT`` (``xnb local``'s default).  Behind
    JupyterHub, use ``<your Jupyter URL>/xnb/v1`` with your Jupyter token instead.
    """
    if os.environ.get("XNB_API_URL"):
        return os.environ["XNB_API_URL"].rstrip("/")
    from xnb.settings import XnbSettings

    settings = settings or XnbSettings()
    try:
        url = json.loads(settings.runtime_file.read_text()).get("api_url")
    except (OSError, ValueError):
        url = None
    return (url or f"http://{settings.host}:{settings.port}").rstrip("/")


def jupyter_api_url(settings: Any = None) -> str | None:
    """The OpenAI API as the Jupyter server proxies it, ``{jupyter_url}xnb/v1`` — the
    address that works from a browser and behind JupyterHub (with the Jupyter token).

    ``XNB_JUPYTER_URL`` (set for kernels by the extension), else ``jupyter_url`` in the
    runtime file; None when no Jupyter server with the xnb extension runs the cluster.
    """
    url = os.environ.get("XNB_JUPYTER_URL")
    if not url:
        from xnb.settings import XnbSettings

        settings = settings or XnbSettings()
        try:
            url = json.loads(settings.runtime_file.read_text()).get("jupyter_url")
        except (OSError, ValueError):
            url = None
    return f"{url.rstrip('/')}/xnb/v1" if url else None
