"""The Anthropic Messages API, translated to and from chat completions.

``POST /v1/messages`` bodies become a :class:`ChatCompletionRequest` (same
engine path, grammar-constrained tools); a chat completion becomes a
``message`` object and a chat chunk stream becomes Anthropic's event sequence
(``message_start``, ``content_block_*``, ``message_delta``, ``message_stop``).
Errors on these routes use Anthropic's shape (:func:`error_body`).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from xnb.errors import InvalidRequest, UnsupportedParameter, XnbError
from xnb.openai.requests import ChatCompletionRequest, parse_request
from xnb.openai.shapes import new_id

__all__ = [
    "MessagesRequest",
    "CountTokensRequest",
    "error_event",
    "MessageStream",
    "to_chat_request",
    "message_from_chat",
    "error_body",
    "sse_event",
]

_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 409: "invalid_request_error", 413: "request_too_large",
    422: "invalid_request_error", 429: "rate_limit_error", 503: "overloaded_error",
}

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error object for an HTTP status."""
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}


#: Accepted and ignored: they change nothing about the answer here.
_IGNORED = {"cache_control", "diagnostics", "inference_geo", "speed", "user_profile_id", "workspace_id",
            "service_tier", "metadata", "container", "context_management", "mcp_servers"}


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int = Field(ge=1)
    messages: list[dict[str, Any]]
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    output_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> "MessagesRequest":
        extra = self.model_extra or {}
        unknown = sorted(set(extra) - _IGNORED)
        if unknown:
            raise InvalidRequest(f"unrecognized request argument(s): {', '.join(unknown)}", param=unknown[0])
        for name in ("container", "context_management", "mcp_servers"):
            if extra.get(name):
                raise UnsupportedParameter(f"{name} is not supported by xnb", param=name)
        if self.thinking and self.thinking.get("type") != "disabled":
            raise UnsupportedParameter("extended thinking is not supported by xnb's models", param="thinking")
        if not self.messages:
            raise InvalidRequest("messages must contain at least one message", param="messages")
        return self


class CountTokensRequest(MessagesRequest):
    max_tokens: int = 1


def _text_blocks(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or a list of text blocks", param="messages")
    out = []
    for block in content:
        if not isinstance(block, dict) or block.get("type") != "text":
            kind = block.get("type") if isinstance(block, dict) else None
            raise UnsupportedParameter(f"{where}: blocks of type {kind!r} are not supported here (text only)",
                                       param="messages")
        out.append(str(block.get("text", "")))
    return "".join(out)


def _chat_messages(req: MessagesRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": _text_blocks(req.system, "system")})
    for i, msg in enumerate(req.messages):
        where = f"messages[{i}]"
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ("user", "assistant"):
            raise InvalidRequest(f"{where}.role must be user or assistant", param="messages")
        content = msg.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise InvalidRequest(f"{where}.content must be a string or a list of blocks", param="messages")
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "tool_use" and role == "assistant":
                if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                    raise InvalidRequest(f"{where}.content[{j}] (tool_use) needs id and name", param="messages")
                calls.append({"id": block["id"], "type": "function", "function": {
                    "name": block["name"], "arguments": json.dumps(block.get("input") or {})}})
            elif kind == "tool_result" and role == "user":
                if not isinstance(block.get("tool_use_id"), str):
                    raise InvalidRequest(f"{where}.content[{j}] (tool_result) needs tool_use_id", param="messages")
                result = _text_blocks(block.get("content") or "", f"{where}.content[{j}].content")
                if block.get("is_error"):
                    result = f"Error: {result}"
                out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": result})
            elif kind in ("thinking", "redacted_thinking") and role == "assistant":
                continue  # a client replaying a thinking model's turn; nothing to show ours
            else:
                raise UnsupportedParameter(f"{where}.content[{j}]: blocks of type {kind!r} are not supported "
                                           f"in {role} messages", param="messages")
        if calls:
            out.append({"role": "assistant", "content": "".join(texts), "tool_calls": calls})
        elif texts or role == "assistant":
            out.append({"role": role, "content": "".join(texts)})
    return out


def _chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise UnsupportedParameter(f"tools[{i}]: only custom (client) tools are supported, not {kind!r}",
                                       param="tools")
        fn = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {"type": "object"}}
        if tool.get("description"):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def _chat_tool_choice(choice: dict[str, Any] | None) -> tuple[Any, bool | None]:
    if not choice:
        return None, None
    parallel = False if choice.get("disable_parallel_tool_use") else None
    kind = choice.get("type")
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", parallel
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}, parallel
    raise InvalidRequest("tool_choice.type must be auto, any, tool or none", param="tool_choice")


def _response_format(req: MessagesRequest) -> dict[str, Any] | None:
    fmt = (req.output_config or {}).get("format") or req.output_format
    if not fmt:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise InvalidRequest("output_config.format must be {\"type\": \"json_schema\", \"schema\": {...}}",
                             param="output_config")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def to_chat_request(req: MessagesRequest) -> ChatCompletionRequest:
    choice, parallel = _chat_tool_choice(req.tool_choice)
    body: dict[str, Any] = {
        "model": req.model, "messages": _chat_messages(req), "max_completion_tokens": req.max_tokens,
        "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k, "stop": req.stop_sequences,
        "tools": _chat_tools(req.tools), "tool_choice": choice if req.tools else None,
        "parallel_tool_calls": parallel, "stream": req.stream, "response_format": _response_format(req),
    }
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    return parse_request(ChatCompletionRequest, {k: v for k, v in body.items() if v is not None})


def _usage(usage: dict[str, int] | None) -> dict[str, int]:
    usage = usage or {"prompt_tokens": 0, "completion_tokens": 0}
    return {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def message_from_chat(req: MessagesRequest, chat: dict[str, Any]) -> dict[str, Any]:
    choice = chat["choices"][0]
    message = choice["message"]
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        content.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                        "input": _arguments(call["function"]["arguments"])})
    return {
        "id": new_id("msg").replace("-", "_"), "type": "message", "role": "assistant", "model": req.model,
        "content": content, "stop_reason": _STOP_REASONS.get(choice["finish_reason"], "end_turn"),
        "stop_sequence": None, "usage": _usage(chat["usage"]),
    }


class MessageStream:
    """Chat chunks in, Anthropic stream events out."""

    def __init__(self, req: MessagesRequest) -> None:
        self.req = req
        self.id = new_id("msg").replace("-", "_")
        self.block = -1  # index of the open content block, -1 when none
        self.kind: str | None = None  # "text" or "tool_use"
        self.calls: dict[int, int] = {}  # chat tool call index → block index
        self.finish: str | None = None

    def start(self) -> list[dict[str, Any]]:
        message = {"id": self.id, "type": "message", "role": "assistant", "model": self.req.model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": _usage(None)}
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def _open(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        self.block += 1
        self.kind = block["type"]
        return [*events, {"type": "content_block_start", "index": self.block, "content_block": block}]

    def _close(self) -> list[dict[str, Any]]:
        if self.kind is None:
            return []
        self.kind = None
        return [{"type": "content_block_stop", "index": self.block}]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.kind != "text":
                    events += self._open({"type": "text", "text": ""})
                events.append({"type": "content_block_delta", "index": self.block,
                               "delta": {"type": "text_delta", "text": delta["content"]}})
            for call in delta.get("tool_calls") or []:
                if call["index"] not in self.calls:
                    events += self._open({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                                          "input": {}})
                    self.calls[call["index"]] = self.block
                fresh = (call.get("function") or {}).get("arguments")
                if fresh:
                    events.append({"type": "content_block_delta", "index": self.calls[call["index"]],
                                   "delta": {"type": "input_json_delta", "partial_json": fresh}})
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return events

    def finish_events(self, usage: dict[str, int] | None) -> list[dict[str, Any]]:
        full = _usage(usage)
        return [
            *self._close(),
            {"type": "message_delta",
             "delta": {"stop_reason": _STOP_REASONS.get(self.finish or "stop", "end_turn"), "stop_sequence": None},
             "usage": {"input_tokens": full["input_tokens"], "output_tokens": full["output_tokens"]}},
            {"type": "message_stop"},
        ]


def sse_event(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def error_event(exc: XnbError) -> bytes:
    """An error mid-stream, as Anthropic sends it."""
    return sse_event(error_body(exc.status, exc.message))
