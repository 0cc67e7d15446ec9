"""One exception tree for all of xnb.

Every error a user can meet is an :class:`XnbError` subclass that carries its
HTTP status and its OpenAI error ``type``/``code``.  One handler in the API
sidecar renders them; the supervisor and model actors ship them across Dask as
plain dicts (:meth:`XnbError.to_dict` / :func:`error_from_dict`) so a client in
another process gets the same class back.  Status codes are chosen by class,
never by matching message text.

An error may carry a :class:`NextStep`: what the user can do about it, as an
xnb command and its arguments.  Each front end renders it in the syntax the
user can type where they are — ``xnb list`` in a terminal (the default, also
used in HTTP error bodies), ``%xnb list`` in a notebook
(:meth:`XnbError.render`).  In IPython an XnbError shows as that one line,
without a traceback (``_render_traceback_``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

Frontend = Literal["cli", "notebook"]

__all__ = [
    "NextStep",
    "XnbError",
    "InvalidRequest",
    "UnsupportedParameter",
    "AuthenticationFailed",
    "PermissionDenied",
    "NotFound",
    "ModelNotFound",
    "CatalogEntryNotFound",
    "RequestTooLarge",
    "Conflict",
    "DuplicateModel",
    "PlacementFailed",
    "QueueFull",
    "ModelNotReady",
    "ReplicaLost",
    "ClusterUnavailable",
    "LaunchFailed",
    "EngineError",
    "error_from_dict",
]


@dataclass(frozen=True)
class NextStep:
    """What to do next: an xnb command (``list``, ``events``…), its arguments and
    what it does, e.g. ``NextStep("events", ("m1",), "shows what happened")``."""

    command: str
    args: tuple[str, ...] = ()
    why: str = ""

    def command_line(self, frontend: Frontend = "cli") -> str:
        """``xnb events m1`` (terminal) or ``%xnb events m1`` (notebook)."""
        return " ".join(["%xnb" if frontend == "notebook" else "xnb", self.command, *self.args])

    def render(self, frontend: Frontend = "cli") -> str:
        line = self.command_line(frontend)
        if frontend == "cli":
            line = f"`{line}`"
        return f"{line} {self.why}".strip()

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "args": list(self.args), "why": self.why}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> NextStep | None:
        if not data:
            return None
        return cls(data["command"], tuple(data.get("args") or ()), data.get("why", ""))


class XnbError(Exception):
    """Base of every xnb error: a message for a human plus what HTTP needs.

    ``reason`` is the message alone; ``message`` (and ``str()``) add the next
    step in terminal syntax; :meth:`render` renders it for a front end.
    """

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, next_step: NextStep | None = None,
                 **extra: Any) -> None:
        self.reason = message
        self.next_step = next_step
        self.param = param
        self.extra = extra
        self.message = self.render("cli")
        super().__init__(self.message)

    def render(self, frontend: Frontend = "cli") -> str:
        """The message with its next step in the syntax of ``frontend``."""
        if self.next_step is None:
            return self.reason
        return f"{self.reason.rstrip('. ')}; {self.next_step.render(frontend)}"

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a traceback: the error is the user's, not a bug."""
        return [f"{type(self).__name__}: {self.render('notebook')}"]

    @property
    def retry_after(self) -> int | None:
        """Seconds a client should wait before retrying (the ``Retry-After`` header), if any."""
        value = self.extra.get("retry_after")
        return None if value is None else int(value)

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-friendly form, used to carry the error across Dask."""
        return {
            "kind": type(self).__name__,
            "message": self.reason,
            "param": self.param,
            "next_step": self.next_step.to_dict() if self.next_step else None,
            "extra": self.extra,
        }

    def openai_body(self) -> dict[str, Any]:
        """The OpenAI error object ``{"error": {message, type, param, code}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.to_dict(),))


class InvalidRequest(XnbError):
    """The request is malformed or asks for something impossible (400)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class UnsupportedParameter(InvalidRequest):
    """A parameter this model's engine cannot honour (400, names the parameter)."""

    code = "unsupported_parameter"


class AuthenticationFailed(XnbError):
    """Missing or wrong API key (401)."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(XnbError):
    """A valid key without the scope a route needs (403)."""

    status = 403
    type = "permission_error"
    code = "insufficient_scope"


class NotFound(XnbError):
    """Something named in the request does not exist (404)."""

    status = 404
    type = "not_found_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class CatalogEntryNotFound(NotFound):
    code = "catalog_entry_not_found"


class RequestTooLarge(XnbError):
    """The request body is larger than the server accepts."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Conflict(XnbError):
    """The request conflicts with the current state (409)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class DuplicateModel(Conflict):
    code = "model_exists"


class PlacementFailed(Conflict):
    """No worker has room for the replica(s) (409: the cluster's resources conflict)."""

    code = "insufficient_resources"


class QueueFull(XnbError):
    """The model's request queue is at its bound (429, with Retry-After)."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"

    @property
    def retry_after(self) -> int:
        return int(self.extra.get("retry_after", 1))


class ModelNotReady(XnbError):
    """The model exists but cannot serve right now (503)."""

    status = 503
    type = "service_unavailable_error"
    code = "model_not_ready"


class ReplicaLost(ModelNotReady):
    """The replica serving a request went away (its worker died)."""

    code = "replica_lost"


class ClusterUnavailable(XnbError):
    """The Dask scheduler cannot be reached (503)."""

    status = 503
    type = "service_unavailable_error"
    code = "cluster_unavailable"

    @property
    def retry_after(self) -> int:
        return int(self.extra.get("retry_after", 2))


class LaunchFailed(XnbError):
    """A model could not be loaded; its record keeps the reason (500)."""

    status = 500
    type = "server_error"
    code = "launch_failed"


class EngineError(XnbError):
    """The engine failed while serving a request (500); the model stays up."""

    status = 500
    type = "server_error"
    code = "engine_error"


def _all_subclasses(cls: type) -> list[type]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def error_from_dict(data: dict[str, Any]) -> XnbError:
    """Rebuild an :class:`XnbError` from :meth:`XnbError.to_dict` output."""
    classes = {c.__name__: c for c in _all_subclasses(XnbError)}
    cls = classes.get(data.get("kind", ""), XnbError)
    return cls(data.get("message", ""), param=data.get("param"), next_step=NextStep.from_dict(data.get("next_step")),
               **(data.get("extra") or {}))


def _rebuild(data: dict[str, Any]) -> XnbError:
    return error_from_dict(data)
