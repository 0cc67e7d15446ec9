"""The boundary between the front ends and the cluster: one typed vocabulary.

Every front end (the sidecar's REST API, the CLI, ``%xnb`` magics, the panel,
:class:`xnb.Client`) and the cluster side (the Supervisor, the model actor)
speak these types:

* :class:`LaunchOptions` — what a launch takes.  The CLI flags of
  ``xnb launch``, the REST body of ``POST /api/models``, the options of
  ``%xnb launch`` and the panel's form are derived from it, and
  ``Supervisor.launch`` takes it; :func:`validate` gives the same error
  from every front end.
* :class:`ModelStatus` / :class:`ReplicaStatus` — the only place status words
  are spelled, with the predicates front ends need (``live``, ``launching``,
  ``serving``).
* :class:`ModelInfo` / :class:`ReplicaInfo` — the records the manager returns
  (plain JSON dicts, typed).
* :class:`PullResult` / :class:`GenerateResult` — what a model actor's
  ``pull`` and ``generate`` return (named, positional on the wire).
* Errors cross Dask one way: as :meth:`XnbError.to_dict` data
  (:func:`error_data`), revived with :func:`raise_error` — in the Supervisor's
  reply envelope (:func:`ok` / :func:`failed` / :func:`unwrap`) and in a
  pull's ``error`` field.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, NamedTuple, TypedDict, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xnb.errors import InvalidRequest, XnbError, error_from_dict

__all__ = [
    "LaunchOptions",
    "OptionSpec",
    "launch_option_specs",
    "parse_pairs",
    "ModelStatus",
    "ServerStatus",
    "ReplicaStatus",
    "ModelInfo",
    "ReplicaInfo",
    "Delta",
    "TokenLogprob",
    "TopLogprob",
    "MAX_TOP_LOGPROBS",
    "Usage",
    "PullResult",
    "GenerateResult",
    "validate",
    "ok",
    "failed",
    "unwrap",
    "error_data",
    "raise_error",
]

M = TypeVar("M", bound=BaseModel)


# -- launch options -------------------------------------------------------------------------------


class LaunchOptions(BaseModel):
    """Everything a launch takes (``xnb launch``, ``POST /api/models``, ``%xnb launch``,
    the panel's form and ``Client.launch`` are all this model)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="catalog name, e.g. smollm2-135m-instruct")
    uid: str | None = Field(default=None, description="name of the running model (default: the catalog name)")
    engine: str | None = Field(default=None, description="engine, e.g. llama-cpp (default: the catalog's choice)")
    format: str | None = Field(default=None, description="weights format: gguf, pytorch (none: test engines)")
    size: str | None = Field(default=None, description="model size, e.g. 135m")
    quantization: str | None = Field(default=None, description="quantization, e.g. q4_k_m")
    replicas: int = Field(default=1, ge=1, le=64, description="number of replicas")
    engine_options: dict[str, Any] | None = Field(default=None, description="engine launch options")
    workers: list[str] | None = Field(default=None, description="only place replicas on these workers")
    gpu_idx: list[int] | None = Field(default=None, description="pin replicas to these GPU indices")
    gpus: int | None = Field(default=None, ge=0, description="GPUs per replica (default: the engine's need)")
    max_queue: int | None = Field(default=None, ge=0, description="requests waiting per replica before 429")
    restart: Literal["never", "on-failure"] = Field(
        default="never", description="relaunch replicas lost with their worker"
    )
    max_restarts: int = Field(default=3, ge=0, le=100, description="relaunch attempts per lost replica")
    keep_alive: float | None = Field(default=None, gt=0, description="unload after this many idle seconds")

    def options(self) -> dict[str, Any]:
        """The options that were set, without ``model`` (keyword arguments for a launch)."""
        return self.model_dump(exclude={"model"}, exclude_none=True)


class OptionSpec(NamedTuple):
    """How a front end spells one :class:`LaunchOptions` field (CLI flag, ``%xnb`` option,
    panel field): all are derived from the model by :func:`launch_option_specs`."""

    name: str  # the field name (the REST body's key, the keyword of Client.launch)
    flags: tuple[str, ...]  # "--kebab-name" first, then short aliases
    type: type  # of one value: str, int or float
    multiple: bool  # a list field: the flag repeats
    mapping: bool  # a dict field: KEY=VALUE pairs (JSON values allowed)
    choices: tuple[str, ...] | None
    default: Any
    help: str


#: Flags that read better than the field name (repeatable ones in the singular), and short aliases.
_FLAG_NAMES = {"workers": "--worker", "engine_options": "--option"}
_SHORT_FLAGS = {"quantization": "-q", "engine_options": "-o"}


def launch_option_specs() -> list[OptionSpec]:
    """Every :class:`LaunchOptions` field except ``model`` (a positional argument everywhere)."""
    specs = []
    for name, field in LaunchOptions.model_fields.items():
        if name == "model":
            continue
        annotation = str(field.annotation)
        multiple = annotation.startswith("list[")
        mapping = annotation.startswith("dict[")
        choices = tuple(get_args(field.annotation)) if get_origin(field.annotation) is Literal else None
        kind: type = int if "int" in annotation and not mapping else float if "float" in annotation else str
        flag = _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        flags = (flag, _SHORT_FLAGS[name]) if name in _SHORT_FLAGS else (flag,)
        specs.append(OptionSpec(name, flags, kind, multiple, mapping, choices, field.default,
                                field.description or name))
    return specs


def parse_pairs(items: list[str] | tuple[str, ...], flag: str = "--option") -> dict[str, Any] | None:
    """``KEY=VALUE`` strings as a dict (values parsed as JSON when they are JSON)."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise InvalidRequest(f"{flag} {item!r} is not KEY=VALUE", param=flag)
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out or None


def validate(model_cls: type[M], data: Any) -> M:
    """Validate ``data``; a 400 :class:`InvalidRequest` naming the field (the same
    error from Python, the CLI and HTTP)."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(f"{loc}: {msg}" if loc else msg, param=loc or None) from None


# -- statuses -----------------------------------------------------------------------------------


class ReplicaStatus(StrEnum):
    """One replica's status.  Launch phases in order, then serving, then end states."""

    RESTARTING = "restarting"  # lost; a relaunch is pending
    LAUNCHING = "launching"
    DOWNLOADING = "downloading"
    LOADING = "loading"
    READY = "ready"
    UNLOADED = "unloaded"  # idle past keep_alive: weights freed, reloads on the next request
    TERMINATING = "terminating"
    ERROR = "error"
    LOST = "lost"
    STOPPED = "stopped"

    @property
    def launching(self) -> bool:
        """Still on its way to ready (a relaunch included)."""
        return self in _REPLICA_LAUNCH_PHASES

    @property
    def serving(self) -> bool:
        """Takes requests now (an unloaded replica reloads for one)."""
        return self in (ReplicaStatus.READY, ReplicaStatus.UNLOADED)

    @property
    def live(self) -> bool:
        """Holds (or is getting) a slot on a worker: not failed, lost or stopped."""
        return self not in (ReplicaStatus.ERROR, ReplicaStatus.LOST, ReplicaStatus.STOPPED)

    @property
    def broken(self) -> bool:
        return self in (ReplicaStatus.ERROR, ReplicaStatus.LOST)


_REPLICA_LAUNCH_PHASES = (
    ReplicaStatus.RESTARTING,
    ReplicaStatus.LAUNCHING,
    ReplicaStatus.DOWNLOADING,
    ReplicaStatus.LOADING,
)


class ModelStatus(StrEnum):
    """A model's status, derived from its replicas' by :meth:`of_replicas`."""

    RESTARTING = "restarting"
    LAUNCHING = "launching"
    DOWNLOADING = "downloading"
    LOADING = "loading"
    READY = "ready"
    DEGRADED = "degraded"  # some replicas serve, others are lost or failed
    UNLOADED = "unloaded"  # every serving replica is idle-unloaded; the next request reloads one
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    STOPPED = "stopped"
    ERROR = "error"
    LOST = "lost"

    @property
    def launching(self) -> bool:
        return self in (ModelStatus.RESTARTING, ModelStatus.LAUNCHING, ModelStatus.DOWNLOADING,
                        ModelStatus.LOADING)

    @property
    def serving(self) -> bool:
        """Answers requests (possibly after reloading an idle replica)."""
        return self in (ModelStatus.READY, ModelStatus.DEGRADED, ModelStatus.UNLOADED)

    @property
    def failed(self) -> bool:
        return self in (ModelStatus.ERROR, ModelStatus.LOST)

    @property
    def live(self) -> bool:
        return self not in (ModelStatus.TERMINATED, ModelStatus.STOPPED, ModelStatus.ERROR,
                            ModelStatus.LOST)

    @classmethod
    def of_replicas(cls, statuses: list[str], *, terminating: bool = False) -> ModelStatus:
        """``terminating`` wins; any replica serving → ready (``degraded`` if others
        are lost or failed; ``unloaded`` if every serving one is unloaded); otherwise
        the least advanced launch phase; otherwise ``lost`` if any was lost, else ``error``."""
        if terminating:
            return cls.TERMINATING
        if not statuses:
            return cls.STOPPED
        replicas = [ReplicaStatus(s) for s in statuses]
        serving = [s for s in replicas if s.serving]
        if serving:
            if any(s.broken for s in replicas):
                return cls.DEGRADED
            if all(s is ReplicaStatus.UNLOADED for s in serving):
                return cls.UNLOADED
            return cls.READY
        phases = [s for s in replicas if s.launching]
        if phases:
            return cls(min(phases, key=_REPLICA_LAUNCH_PHASES.index).value)
        return cls.LOST if ReplicaStatus.LOST in replicas else cls.ERROR

    @classmethod
    def settled(cls, info: ModelInfo) -> bool:
        """Whether a launch (or scale) has finished: the model serves and no replica is
        still launching."""
        return cls(info["status"]).serving and not any(
            ReplicaStatus(r["status"]).launching for r in info["replicas"]
        )


class ServerStatus(StrEnum):
    """The Jupyter server extension's own state (``{base_url}xnb/api/status``)."""

    STARTING = "starting"
    READY = "ready"
    ERROR = "error"
    STOPPING = "stopping"
    STOPPED = "stopped"


# -- records -------------------------------------------------------------------------------------


class ReplicaInfo(TypedDict):
    """One replica, as the manager reports it (JSON)."""

    replica: int
    worker: str
    gpus: list[int]
    status: str  # a ReplicaStatus value
    key: str | None
    progress: dict[str, Any]
    load: dict[str, Any]
    error: str | None
    attempts: int
    since: float


class ModelInfo(TypedDict):
    """One launched model, as the manager reports it (JSON; ``GET /api/models/{uid}``)."""

    uid: str
    model_name: str
    status: str  # a ModelStatus value
    spec: dict[str, Any]
    replicas: list[ReplicaInfo]
    replicas_ready: int
    workers: list[str]
    options: dict[str, Any]
    created: float
    ready_at: float | None
    last_error: str | None
    version: int


# -- requests and results across the actor boundary --------------------------------------------

#: The most alternatives a request may ask for per position (OpenAI's limit).
MAX_TOP_LOGPROBS = 20


class TopLogprob(NamedTuple):
    """One candidate token at a position."""

    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(NamedTuple):
    """A generated token's log-probability under the model (the log-softmax of the
    raw logits row the sampler was given, before temperature, penalties or
    grammar) and the ``top`` most likely candidates there, best first (empty
    unless ``top_logprobs`` was asked for).  On the wire a plain list
    ``[token, logprob, bytes, [[token, logprob, bytes], ...]]``."""

    token: str
    logprob: float
    bytes: list[int]
    top: list[TopLogprob]

    @classmethod
    def of(cls, value: Any) -> TokenLogprob:
        """Rebuild from the wire (lists after msgpack) or return as is."""
        token, logprob, raw, top = value
        return cls(str(token), float(logprob), list(raw), [TopLogprob(str(t), float(lp), list(b)) for t, lp, b in top])


#: One piece of output: ``(choice index, text, finish reason or None, logprobs or None)``;
#: with ``SamplingParams.logprobs`` the last item holds one :class:`TokenLogprob`
#: per generated token whose text this delta carries (tokens whose text an engine
#: holds back — an incomplete UTF-8 character, a possible stop string — ride on the
#: delta that releases it; tokens of a matched stop string are dropped with it).
Delta = tuple[int, str, "str | None", "list[TokenLogprob] | None"]
#: Token counts: ``prompt_tokens``, ``completion_tokens``, ``total_tokens``.
Usage = dict[str, int]


class PullResult(NamedTuple):
    """What ``ModelActor.pull`` returns: output since the last pull."""

    deltas: list[Delta]
    done: bool
    usage: Usage | None
    error: dict[str, Any] | None  # error_data() of the failure, when done with one

    @classmethod
    def of(cls, reply: Any) -> PullResult:
        """Rebuild from the wire (a list after msgpack); raises the carried error."""
        result = cls(*reply)
        if result.error is not None:
            raise_error(result.error)
        return result


class GenerateResult(NamedTuple):
    """What ``ModelActor.generate`` returns: a whole generation."""

    deltas: list[Delta]
    usage: Usage | None
    error: dict[str, Any] | None

    @classmethod
    def of(cls, reply: Any) -> GenerateResult:
        result = cls(*reply)
        if result.error is not None:
            raise_error(result.error)
        return result


# -- errors across Dask ---------------------------------------------------------------------------


def error_data(exc: XnbError) -> dict[str, Any]:
    """An error as data that crosses Dask (msgpack): class name, message, status, param."""
    return exc.to_dict()


def raise_error(data: dict[str, Any]) -> None:
    """Raise the :class:`XnbError` subclass that :func:`error_data` encoded."""
    raise error_from_dict(data)


def ok(result: Any) -> dict[str, Any]:
    """A Supervisor handler's successful reply."""
    return {"ok": True, "result": result}


def failed(exc: XnbError) -> dict[str, Any]:
    """A Supervisor handler's failed reply."""
    return {"ok": False, "error": error_data(exc)}


def unwrap(reply: Any) -> Any:
    """The result of a Supervisor reply, or its error raised; :class:`TypeError` when
    the reply is not an xnb envelope (the scheduler does not run the Supervisor)."""
    if not isinstance(reply, dict) or "ok" not in reply:
        raise TypeError("not an xnb supervisor reply")
    if not reply["ok"]:
        raise_error(reply["error"])
    return reply["result"]
