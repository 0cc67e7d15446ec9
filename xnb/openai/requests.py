"""OpenAI request bodies, validated, and their translation to neutral requests.

Used by the API sidecar (request bodies) and by the Python client
(``model.chat(messages, **params)``), so both accept exactly the same
parameters and refuse the same ones with the same 400.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from xnb.engines.base import GenerateRequest, SamplingParams
from xnb.protocol import MAX_TOP_LOGPROBS
from xnb.errors import InvalidRequest, UnsupportedParameter
from xnb.openai.tools import check_schema, resolve_tool_choice, validate_tools

__all__ = [
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "normalize_messages",
    "parse_request",
]

#: Accepted and ignored: they change nothing about the answer.
_IGNORED = {"user", "store", "metadata", "service_tier", "parallel_tool_calls_hint"}


def _text_of(content: Any, role: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise InvalidRequest(f"{role} message content parts must be objects", param="messages")
            kind = part.get("type")
            if kind in ("text", "input_text"):
                parts.append(str(part.get("text", "")))
            elif kind == "refusal":
                parts.append(str(part.get("refusal", "")))
            elif role == "assistant" and kind in ("tool_use", "function_call"):
                continue  # the same calls travel in tool_calls
            else:
                raise UnsupportedParameter(
                    f"message content of type {kind!r} is not supported: xnb's models take text only",
                    param="messages",
                )
        return "".join(parts)
    raise InvalidRequest(f"{role} message content must be a string or a list of parts", param="messages")


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages → plain ``{"role", "content": str, ...}`` dicts templates expect."""
    if not messages:
        raise InvalidRequest("messages must contain at least one message", param="messages")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InvalidRequest(f"messages[{i}] must be an object", param="messages")
        role = msg.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise InvalidRequest(
                f"messages[{i}].role must be system, developer, user, assistant or tool, not {role!r}",
                param="messages",
            )
        norm: dict[str, Any] = {"role": role, "content": _text_of(msg.get("content"), role)}
        if role == "assistant" and msg.get("tool_calls"):
            norm["tool_calls"] = msg["tool_calls"]
        if role == "tool":
            if not msg.get("tool_call_id"):
                raise InvalidRequest(f"messages[{i}] (role tool) needs tool_call_id", param="messages")
            norm["tool_call_id"] = msg["tool_call_id"]
        if msg.get("name"):
            norm["name"] = msg["name"]
        out.append(norm)
    return out


class _OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    # llama.cpp-style extensions, as llama-cpp-python's server accepts them
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0)
    grammar: str | None = None
    ignore_eos: bool = False

    @model_validator(mode="after")
    def _no_unknown(self) -> "_OpenAIBody":
        # XnbErrors pass through pydantic untouched, keeping their param.
        unknown = sorted(set(self.model_extra or {}) - _IGNORED)
        if unknown:
            raise InvalidRequest(f"unrecognized request argument(s): {', '.join(unknown)}", param=unknown[0])
        return self

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def sampling(self, max_tokens: int | None, **extra: Any) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        bias = None
        if self.logit_bias:
            try:
                bias = {int(k): float(v) for k, v in self.logit_bias.items()}
            except ValueError:
                raise InvalidRequest("logit_bias keys must be token ids", param="logit_bias") from None
        return SamplingParams(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
            min_p=self.min_p, seed=self.seed, stop=stop, repeat_penalty=self.repeat_penalty,
            presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
            logit_bias=bias, grammar=self.grammar, ignore_eos=self.ignore_eos, **extra,
        )


class ChatCompletionRequest(_OpenAIBody):
    messages: list[dict[str, Any]]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
        return self

    def to_generate(self) -> GenerateRequest:
        schema = _response_schema(self.response_format)
        tools = validate_tools(self.tools) if self.tools else None
        choice = resolve_tool_choice(self.tool_choice, tools) if tools else "none"
        if tools and choice != "none" and schema is not None:
            raise UnsupportedParameter(
                "response_format json_schema/json_object cannot be combined with tool calls; "
                "use tool_choice none, or describe the answer as a tool",
                param="response_format",
            )
        params = self.sampling(self.max_completion_tokens or self.max_tokens, json_schema=schema,
                               logprobs=bool(self.logprobs), top_logprobs=self.top_logprobs)
        return GenerateRequest(
            kind="chat", messages=normalize_messages(self.messages), tools=tools, tool_choice=choice,
            parallel_tool_calls=self.parallel_tool_calls is not False, n=self.n, params=params,
        )


class CompletionRequest(_OpenAIBody):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _supported(self) -> "CompletionRequest":
        if self.suffix:
            raise ValueError("suffix (fill-in-the-middle) is not supported")
        if self.best_of not in (None, 1):
            raise ValueError("best_of is not supported; use n")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        if self.echo and self.logprobs is not None:
            raise UnsupportedParameter("echo with logprobs (prompt logprobs) is not supported", param="logprobs")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def to_generate(self) -> list[GenerateRequest]:
        """One neutral request per prompt (choice index = prompt index × n + i)."""
        params = self.sampling(self.max_tokens, logprobs=self.logprobs is not None,
                               top_logprobs=self.logprobs or None)
        return [
            GenerateRequest(kind="completion", prompt=p, n=self.n, echo=self.echo, params=params)
            for p in self.prompts
        ]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @property
    def texts(self) -> list[str]:
        texts = [self.input] if isinstance(self.input, str) else list(self.input)
        if not texts:
            raise InvalidRequest("input must not be empty", param="input")
        if any(not t for t in texts):
            raise InvalidRequest("input must not contain empty strings", param="input")
        return texts


def _response_schema(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    if not fmt:
        return None
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise InvalidRequest("response_format.json_schema must be an object with a schema",
                                 param="response_format")
        schema = spec.get("schema") or {}
        if not schema:
            return {}
        check_schema(schema, strict=bool(spec.get("strict")), param="response_format")
        return schema
    raise InvalidRequest(
        f"response_format.type must be text, json_object or json_schema, not {kind!r}",
        param="response_format",
    )


def parse_request(model_cls: type[BaseModel], body: Any) -> Any:
    """Validate a request body; a 400 naming the field instead of pydantic's error
    (:func:`xnb.protocol.validate`: the same message from every front end)."""
    from xnb.protocol import validate

    return validate(model_cls, body)
