"""The API sidecar: ``create_app(settings)`` and ``run_sidecar(settings)``.

All state lives on ``app.state``: the settings, an asynchronous Dask client
(direct to workers), the :class:`~xnb.manager.ModelManager` and the
:class:`~xnb.api.metrics.Metrics`.  Nothing is global, so several apps (tests,
several sidecars) can live in one process.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from xnb import __version__
from xnb.api import admin, anthropic, audio, images, openai, rerank, responses
from xnb.api.auth import AuthMiddleware, HostGuardMiddleware, KeyStore
from xnb.api.errors import install_error_handlers
from xnb.api.metrics import Metrics
from xnb.api.openapi import install_openapi
from xnb.api.response_store import ResponseStore
from xnb.runtime.cluster import find_running_cluster, open_dask
from xnb.errors import ClusterUnavailable, XnbError
from xnb.manager import ModelManager
from xnb.settings import XnbSettings

__all__ = ["create_app", "run_sidecar"]

logger = logging.getLogger(__name__)


def create_app(settings: XnbSettings | None = None, *, scheduler_address: str | None = None) -> FastAPI:
    """Build the sidecar app.  It connects to the scheduler when it starts (lifespan)."""
    settings = settings or XnbSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        address = scheduler_address or find_running_cluster(settings)
        if address is None:
            raise ClusterUnavailable(
                "no scheduler to serve: pass --scheduler ADDRESS (XNB_SCHEDULER_ADDRESS) "
                "or start a cluster with `xnb local`"
            )
        dask = await open_dask(address, settings, asynchronous=True)
        # If the scheduler restarts and Dask's client gives up, the manager opens a new one.
        app.state.manager = ModelManager(dask, stream_poll_s=settings.stream_poll_s,
                                         reconnect=lambda: open_dask(address, settings, asynchronous=True))
        logger.info("xnb sidecar serving scheduler %s", address)
        try:
            yield
        finally:
            await app.state.manager.close()
            await app.state.manager.client.close()

    app = FastAPI(
        title="xnb",
        version=__version__,
        description="OpenAI-compatible API and model management for an xnb cluster.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.responses = ResponseStore(settings.home / "responses", settings.responses_max)
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(openai.router)
    app.include_router(responses.router)
    app.include_router(anthropic.router)
    app.include_router(audio.router)
    app.include_router(images.router)
    app.include_router(rerank.router)
    app.include_router(admin.router)

    @app.get("/health", tags=["meta"])
    async def health(request: Request) -> JSONResponse:
        manager: ModelManager = request.app.state.manager
        try:
            info = await asyncio.wait_for(manager.call("xnb_ping"), timeout=5)
        except (XnbError, asyncio.TimeoutError) as exc:
            reason = exc.message if isinstance(exc, XnbError) else "the scheduler did not answer in 5 s"
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ok", "scheduler": manager.address, **info})

    @app.get("/metrics", tags=["meta"])
    async def metrics(request: Request) -> Response:
        m: Metrics = request.app.state.metrics
        try:
            await m.refresh(request.app.state.manager)
        except XnbError as exc:
            logger.warning("metrics: could not read cluster gauges: %s", exc.message)
        return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    keys = KeyStore.from_settings(settings)
    app.add_middleware(AuthMiddleware, keys=keys)
    app.add_middleware(HostGuardMiddleware, bound_host=settings.host, allowed=settings.allowed_hosts)
    return app


def run_sidecar(settings: XnbSettings, *, scheduler_address: str | None = None, log_level: str = "info") -> None:
    """Serve the API with uvicorn until interrupted (``xnb serve``)."""
    import uvicorn

    app = create_app(settings, scheduler_address=scheduler_address)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, timeout_graceful_shutdown=5,
                access_log=log_level == "debug")
