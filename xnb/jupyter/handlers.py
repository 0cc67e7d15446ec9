"""The Jupyter server extension's HTTP handlers.

* ``{base_url}xnb/api/status`` — the extension's own state (starting, ready,
  the scheduler, the sidecar's health), answered here.
* ``{base_url}xnb/<path>`` — every other path is the API sidecar's ``/<path>``,
  proxied (streaming included) with the sidecar's admin key, never the Jupyter
  token: ``{base_url}xnb/v1`` is an OpenAI ``base_url`` and
  ``{base_url}xnb/api/models`` is the sidecar's ``/api/models`` — one management
  implementation (:mod:`xnb.api.admin`), one URL scheme.

Every method is ``@web.authenticated`` (and ``@authorized`` on resource
``xnb``); Jupyter applies XSRF checks to cookie-authenticated POST/DELETE.
Errors are OpenAI error objects with the status their :class:`XnbError`
class carries.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.httputil import responses
from tornado.iostream import StreamClosedError

from xnb.errors import ClusterUnavailable, XnbError
from xnb.protocol import ServerStatus

__all__ = ["STATE_KEY", "XnbState", "default_handlers"]

logger = logging.getLogger(__name__)

STATE_KEY = "xnb_state"
AUTH_RESOURCE = "xnb"

_HTTP_ERRORS = {
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
}

#: Response headers of the sidecar passed on to the caller.
_PASS_HEADERS = ("retry-after", "cache-control", "x-request-id", "location")
#: Request headers passed on to the sidecar (never Jupyter's Authorization or cookies).
_FORWARD_HEADERS = ("content-type", "accept", "openai-organization", "openai-project", "x-request-id")


@dataclass
class XnbState:
    """What the handlers see: startup status, the cluster, the sidecar."""

    status: ServerStatus = ServerStatus.STARTING
    error: str | None = None
    scheduler_address: str | None = None
    embedded: bool = False
    sidecar: Any = None  # xnb.jupyter.sidecar.SidecarProcess
    sidecar_key: str | None = None
    _http: httpx.AsyncClient | None = field(default=None, repr=False)

    def require_ready(self) -> None:
        """Raise (503, saying why) unless the extension is ready."""
        if self.status is ServerStatus.READY:
            return
        if self.status is ServerStatus.ERROR:
            raise ClusterUnavailable(
                f"the xnb extension could not reach a cluster: {self.error}. Fix the cause "
                "(see the Jupyter server log) and restart the server"
            )
        raise ClusterUnavailable(f"the xnb cluster is {self.status}; retry in a few seconds")

    def http(self) -> httpx.AsyncClient:
        """One HTTP client for the proxy, created on the server's loop."""
        if self._http is None:
            # No read timeout (a generation may pause); no cap on connections (the sidecar
            # applies its own queue limits and answers 429).
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0),
                                           limits=httpx.Limits(max_connections=None, max_keepalive_connections=32))
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def describe(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "error": self.error,
            "scheduler_address": self.scheduler_address,
            "embedded": self.embedded,
            "sidecar": self.sidecar.describe() if self.sidecar is not None else None,
            "openai_base_path": "xnb/v1",
        }


Handler = Callable[..., Awaitable[None]]


def _openai_errors(method: Handler) -> Handler:
    """Render XnbErrors as OpenAI error objects with their own status."""

    @functools.wraps(method)
    async def wrapper(self: XnbHandler, *args: Any, **kwargs: Any) -> None:
        try:
            await method(self, *args, **kwargs)
        except XnbError as exc:
            self.write_xnb_error(exc)

    return wrapper


def _endpoint(method: Handler) -> Handler:
    """``@web.authenticated`` + ``@authorized`` + OpenAI-shaped errors."""
    return web.authenticated(authorized(_openai_errors(method)))


class XnbHandler(APIHandler):
    """Base: access to the state, JSON out, OpenAI-shaped errors."""

    auth_resource = AUTH_RESOURCE

    @property
    def state(self) -> XnbState:
        return self.settings[STATE_KEY]

    def write_xnb_error(self, exc: XnbError) -> None:
        if exc.status >= 500:
            logger.warning("%s %s -> %s: %s", self.request.method, self.request.path, exc.status, exc.message)
        self.clear()  # drop anything buffered before the error
        self.set_status(exc.status)
        if exc.retry_after is not None:
            self.set_header("Retry-After", str(exc.retry_after))
        self.finish(json.dumps(exc.openai_body()))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado/Jupyter errors (403 unauthenticated, 405, an unexpected 500) as OpenAI error objects too."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = responses.get(status_code, "error")
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            message = "internal server error; the Jupyter server log has the details"
        kind, code = _HTTP_ERRORS.get(status_code, ("server_error", "http_error"))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}))

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data, default=str))


class StatusHandler(XnbHandler):
    """Startup status, scheduler, and the sidecar (with a quick ``/health`` probe)."""

    @_endpoint
    async def get(self) -> None:
        status = self.state.describe()
        sidecar = self.state.sidecar
        if sidecar is not None:
            try:
                r = await self.state.http().get(f"{sidecar.url}/health", timeout=2.0)
                status["sidecar"]["healthy"] = r.status_code == 200
            except httpx.HTTPError:
                status["sidecar"]["healthy"] = False
        self.reply(status)


class SidecarProxyHandler(XnbHandler):
    """``{base_url}xnb/PATH`` → the sidecar's ``/PATH``, chunks flushed as they arrive."""

    @_endpoint
    async def get(self, path: str) -> None:
        await self._proxy(path)

    @_endpoint
    async def post(self, path: str) -> None:
        await self._proxy(path)

    @_endpoint
    async def delete(self, path: str) -> None:
        await self._proxy(path)

    @_endpoint
    async def put(self, path: str) -> None:
        await self._proxy(path)

    @_endpoint
    async def patch(self, path: str) -> None:
        await self._proxy(path)

    async def _proxy(self, path: str) -> None:
        sidecar = self.state.sidecar
        if sidecar is None:
            if self.state.status is ServerStatus.READY:
                raise ClusterUnavailable(
                    "this Jupyter server runs no xnb API sidecar (c.XnbExtension.start_sidecar = False); "
                    "use the sidecar you run yourself, or enable it"
                )
            self.state.require_ready()  # says why: starting / failed
        query = [(k, v) for k, vs in self.request.query_arguments.items() if k != "token"
                 for v in (x.decode("utf-8", "replace") for x in vs)]
        headers = {k: self.request.headers[k] for k in _FORWARD_HEADERS if k in self.request.headers}
        if self.state.sidecar_key:
            headers["Authorization"] = f"Bearer {self.state.sidecar_key}"
        headers["X-Forwarded-Prefix"] = self.base_url.rstrip("/") + "/xnb"  # status URLs point back here
        request = self.state.http().build_request(
            self.request.method, f"{sidecar.url}/{path}", params=query, headers=headers,
            content=self.request.body or None,
        )
        try:
            response = await self.state.http().send(request, stream=True)
        except httpx.TransportError as exc:
            raise ClusterUnavailable(
                f"the xnb API sidecar at {sidecar.url} is not answering ({type(exc).__name__}); it is "
                "restarted automatically, retry in a few seconds"
            ) from None
        try:
            await self._relay(response)
        finally:
            await response.aclose()  # on a client disconnect this aborts the generation upstream

    async def _relay(self, response: httpx.Response) -> None:
        self.set_status(response.status_code)
        for name in _PASS_HEADERS:
            if name in response.headers:
                self.set_header(name, response.headers[name])
        content_type = response.headers.get("content-type", "application/json")
        streaming = content_type.startswith("text/event-stream")
        if streaming:
            self.set_header("Content-Type", content_type)
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")  # no buffering in nginx-style proxies
        try:
            async for chunk in response.aiter_raw():
                self.write(chunk)
                if streaming:
                    await self.flush()
            self.finish(set_content_type=content_type)
        except StreamClosedError:
            logger.info("client went away during %s; closing the upstream stream", self.request.path)
        except httpx.TransportError as exc:
            # The sidecar died mid-response: end the stream with an OpenAI error event if we can.
            logger.warning("the xnb sidecar broke off %s: %s", self.request.path, exc)
            if streaming:
                error = ClusterUnavailable("the xnb API sidecar stopped during the stream; retry")
                self.write(b"data: " + json.dumps(error.openai_body()).encode() + b"\n\n")
                self.finish(set_content_type=content_type)
            else:
                raise ClusterUnavailable("the xnb API sidecar stopped while answering; retry") from None


def default_handlers() -> list[tuple[str, type, dict[str, Any]]]:
    """URL patterns (relative to ``base_url``) and their handlers."""
    return [
        (r"/xnb/api/status", StatusHandler, {}),
        (r"/xnb/(.*)", SidecarProxyHandler, {}),
    ]
