"""API keys with two scopes, and the DNS-rebinding guard: two small ASGI middlewares.

Auth is enforced by middleware for *every* path, so no route (FastAPI's docs
included) can be added unprotected by mistake; only ``/health`` is open.
Management paths (``/api/...``) need an admin key; everything else needs
an inference key (admin keys work there too).  Keys are compared in
constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any, Awaitable, Callable

from xnb.errors import AuthenticationFailed, InvalidRequest, PermissionDenied, XnbError
from xnb.settings import XnbSettings

__all__ = ["KeyStore", "AuthMiddleware", "HostGuardMiddleware", "required_scope", "OPEN_PATHS"]

OPEN_PATHS = frozenset({"/health"})
ADMIN_PREFIX = "/api"

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def required_scope(path: str) -> str | None:
    """The scope a path needs: ``None`` (open), ``"admin"`` or ``"inference"``."""
    if path in OPEN_PATHS:
        return None
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        return "admin"
    return "inference"


class KeyStore:
    """Inference and admin keys from settings (env, flags) and the key file."""

    def __init__(self, inference: list[str], admin: list[str]) -> None:
        self._admin = [k.encode() for k in admin if k]
        self._inference = [k.encode() for k in inference if k] + self._admin

    @classmethod
    def from_settings(cls, settings: XnbSettings) -> "KeyStore":
        file_inference, file_admin = settings.load_key_file()
        return cls([*settings.api_keys, *file_inference], [*settings.admin_api_keys, *file_admin])

    @property
    def enabled(self) -> bool:
        return bool(self._inference)

    @staticmethod
    def _match(candidate: bytes, keys: list[bytes]) -> bool:
        found = False
        for key in keys:  # no early exit: the time does not depend on which key matched
            found |= hmac.compare_digest(candidate, key)
        return found

    def check(self, authorization: str | None, scope: str, api_key: str | None = None) -> None:
        """Raise 401/403 unless the ``Authorization: Bearer`` header (or, as
        Anthropic's clients send it, ``x-api-key``) grants ``scope``."""
        if not self.enabled:
            return
        if authorization and authorization.lower().startswith("bearer "):
            token = authorization[7:].strip().encode()
        elif api_key:
            token = api_key.strip().encode()
        else:
            raise AuthenticationFailed(
                "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>' (keys come from "
                "XNB_API_KEYS, XNB_ADMIN_API_KEYS or XNB_API_KEYS_FILE)"
            )
        if scope == "admin":
            if self._match(token, self._admin):
                return
            if self._match(token, self._inference):
                raise PermissionDenied("this API key may use models but not manage them; use an admin key")
        elif self._match(token, self._inference):
            return
        raise AuthenticationFailed("invalid API key")


async def _send_error(
    send: Any, exc: XnbError, headers: list[tuple[bytes, bytes]] | None = None, path: str = ""
) -> None:
    import json

    from xnb.api.errors import error_body

    body = json.dumps(error_body(path, exc)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyStore) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.keys.enabled:
            needed = required_scope(scope["path"])
            if needed is not None and scope.get("method") != "OPTIONS":
                headers = dict(scope.get("headers") or [])
                auth = headers.get(b"authorization", b"").decode("latin-1") or None
                api_key = headers.get(b"x-api-key", b"").decode("latin-1") or None
                try:
                    self.keys.check(auth, needed, api_key)
                except XnbError as exc:
                    await _send_error(send, exc, [(b"www-authenticate", b"Bearer")], scope["path"])
                    return
        await self.app(scope, receive, send)


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:9997
        return value[: value.index("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostGuardMiddleware:
    """When bound to loopback, refuse requests whose Host is not a loopback name
    or an allowed one (a web page on another origin resolving to 127.0.0.1)."""

    def __init__(self, app: ASGIApp, bound_host: str, allowed: list[str]) -> None:
        self.app = app
        self.active = _is_loopback(bound_host)
        self.allowed = {"localhost", "127.0.0.1", "[::1]", _host_name(bound_host)} | {
            _host_name(a) for a in allowed
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.active and scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            host = _host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.allowed:
                await _send_error(
                    send,
                    InvalidRequest(
                        f"Host {host!r} is not allowed for a server bound to loopback; "
                        "add it with --allowed-hosts / XNB_ALLOWED_HOSTS if it is yours"
                    ),
                )
                return
        await self.app(scope, receive, send)
