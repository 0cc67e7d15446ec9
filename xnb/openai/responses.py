"""The OpenAI Responses API, translated to and from chat completions.

A ``POST /v1/responses`` body becomes a :class:`ChatCompletionRequest` (the
same engine path, grammar-constrained tools and checks as chat); the chat
completion (or its chunk stream) becomes a ``response`` object (or the typed
``response.*`` event sequence).  The conversation a stored response continues
is kept as chat messages (:func:`conversation_after`), so
``previous_response_id`` simply prepends them.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from xnb.errors import InvalidRequest, UnsupportedParameter
from xnb.openai.requests import ChatCompletionRequest, parse_request
from xnb.openai.shapes import new_id

__all__ = [
    "ResponsesRequest",
    "ResponseStream",
    "to_chat_request",
    "response_from_chat",
    "conversation_after",
    "input_messages",
    "sse_event",
]

#: Accepted and ignored: they change nothing about the answer.
_IGNORED = {"user", "service_tier", "prompt_cache_key", "safety_identifier", "stream_options", "background"}


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    truncation: str | None = None
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> "ResponsesRequest":
        unknown = sorted(set(self.model_extra or {}) - _IGNORED)
        if unknown:
            raise InvalidRequest(f"unrecognized request argument(s): {', '.join(unknown)}", param=unknown[0])
        if self.truncation not in (None, "disabled"):
            raise UnsupportedParameter("truncation must be 'disabled': xnb does not drop context", param="truncation")
        if self.include:
            raise UnsupportedParameter(f"include {self.include!r} is not supported", param="include")
        if self.reasoning and any(v is not None for v in self.reasoning.values()):
            raise UnsupportedParameter("reasoning options are not supported by xnb's models", param="reasoning")
        if isinstance(self.input, list) and not self.input and not self.previous_response_id:
            raise InvalidRequest("input must not be empty", param="input")
        return self


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content must be a string or a list of parts", param="input")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append(str(part.get("text", "")))
        elif kind == "refusal":
            parts.append(str(part.get("refusal", "")))
        else:
            raise UnsupportedParameter(
                f"{where}: content of type {kind!r} is not supported: xnb's models take text only", param="input"
            )
    return "".join(parts)


def input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses ``input`` → chat messages (consecutive function calls share one
    assistant message, as chat templates expect)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object", param="input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequest(f"{where}.role must be user, assistant, system or developer", param="input")
            out.append({"role": role, "content": _content_text(item.get("content"), where)})
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise InvalidRequest(f"{where} (function_call) needs call_id and name", param="input")
            call = {"id": call_id, "type": "function",
                    "function": {"name": name, "arguments": str(item.get("arguments") or "{}")}}
            last = out[-1] if out else None
            if last and last["role"] == "assistant" and last.get("tool_calls") and not last["content"]:
                last["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise InvalidRequest(f"{where} (function_call_output) needs call_id", param="input")
            text = output if isinstance(output, str) else _content_text(output, where)
            out.append({"role": "tool", "tool_call_id": call_id, "content": text})
        else:
            raise UnsupportedParameter(f"{where}: input items of type {kind!r} are not supported", param="input")
    return out


def _chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise UnsupportedParameter(f"tools[{i}]: only function tools are supported, not {kind!r}", param="tools")
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def _chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _chat_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if not fmt:
        return None
    if not isinstance(fmt, dict):
        raise InvalidRequest("text.format must be an object", param="text")
    if fmt.get("type") == "json_schema":
        spec = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": spec}
    return {"type": fmt.get("type")}


def to_chat_request(req: ResponsesRequest, history: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat request that serves ``req`` after the stored ``history``."""
    messages = ([{"role": "system", "content": req.instructions}] if req.instructions else [])
    messages += history + input_messages(req.input)
    body: dict[str, Any] = {
        "model": req.model, "messages": messages, "stream": req.stream,
        "max_completion_tokens": req.max_output_tokens, "temperature": req.temperature, "top_p": req.top_p,
        "tools": _chat_tools(req.tools), "tool_choice": _chat_tool_choice(req.tool_choice),
        "parallel_tool_calls": req.parallel_tool_calls, "response_format": _chat_format(req.text),
    }
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    return parse_request(ChatCompletionRequest, {k: v for k, v in body.items() if v is not None})


def conversation_after(
    req: ResponsesRequest, chat: ChatCompletionRequest, assistant: dict[str, Any]
) -> list[dict[str, Any]]:
    """What a later ``previous_response_id`` continues: this request's messages
    (without its instructions, which do not carry over) and the answer."""
    return [*(chat.messages[1:] if req.instructions else chat.messages), assistant]


def _usage(usage: dict[str, int] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage["total_tokens"],
    }


def _message_item(text: str, status: str = "completed", item_id: str | None = None) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status == "completed" else []
    return {"type": "message", "id": item_id or new_id("msg"), "status": status, "role": "assistant",
            "content": content}


def _call_item(call_id: str, name: str, arguments: str, status: str = "completed",
               item_id: str | None = None) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id or new_id("fc"), "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def _envelope(req: ResponsesRequest, rid: str, created: int, status: str, output: list[dict[str, Any]],
              usage: dict[str, int] | None, finish: str | None = None) -> dict[str, Any]:
    incomplete = {"reason": "max_output_tokens"} if finish == "length" else None
    if incomplete and status == "completed":
        status = "incomplete"
    return {
        "id": rid, "object": "response", "created_at": created, "status": status, "error": None,
        "incomplete_details": incomplete, "instructions": req.instructions, "model": req.model,
        "output": output, "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id, "max_output_tokens": req.max_output_tokens,
        "temperature": req.temperature, "top_p": req.top_p, "tools": req.tools or [],
        "tool_choice": req.tool_choice or "auto", "text": req.text or {"format": {"type": "text"}},
        "truncation": "disabled", "store": req.store, "metadata": req.metadata or {}, "reasoning": None,
        "usage": _usage(usage), "user": None,
    }


def response_from_chat(req: ResponsesRequest, rid: str, chat: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(response object, assistant chat message)`` from a chat completion."""
    choice = chat["choices"][0]
    message = choice["message"]
    output = []
    if message.get("content"):
        output.append(_message_item(message["content"]))
    for call in message.get("tool_calls") or []:
        output.append(_call_item(call["id"], call["function"]["name"], call["function"]["arguments"]))
    assistant = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("tool_calls"):
        assistant["tool_calls"] = message["tool_calls"]
    response = _envelope(req, rid, int(time.time()), "completed", output, chat["usage"], choice["finish_reason"])
    return response, assistant


class ResponseStream:
    """Chat chunks in, Responses stream events out (with ``sequence_number``)."""

    def __init__(self, req: ResponsesRequest, rid: str) -> None:
        self.req = req
        self.rid = rid
        self.created = int(time.time())
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.text_item: dict[str, Any] | None = None
        self.text = ""
        self.calls: dict[int, dict[str, Any]] = {}  # tool call index → item
        self.finish: str | None = None
        self.response: dict[str, Any] | None = None
        self.assistant: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        shell = _envelope(self.req, self.rid, self.created, "in_progress", [], None)
        return [self._event("response.created", response=shell),
                self._event("response.in_progress", response=shell)]

    def _close_text(self) -> list[dict[str, Any]]:
        if self.text_item is None or self.text_item["status"] == "completed":
            return []
        item, index = self.text_item, self.output.index(self.text_item)
        part = {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}
        item.update(status="completed", content=[part])
        return [
            self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                        text=self.text, logprobs=[]),
            self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                        part=part),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.text_item is None:
                    self.text_item = _message_item("", status="in_progress")
                    self.output.append(self.text_item)
                    index = len(self.output) - 1
                    events.append(self._event("response.output_item.added", output_index=index,
                                              item=dict(self.text_item)))
                    events.append(self._event(
                        "response.content_part.added", item_id=self.text_item["id"], output_index=index,
                        content_index=0, part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                    ))
                self.text += delta["content"]
                events.append(self._event("response.output_text.delta", item_id=self.text_item["id"],
                                          output_index=self.output.index(self.text_item), content_index=0,
                                          delta=delta["content"], logprobs=[]))
            for call in delta.get("tool_calls") or []:
                events += self._call_delta(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return events

    def _call_delta(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close_text()
        item = self.calls.get(call["index"])
        if item is None:
            item = _call_item(call["id"], call["function"]["name"], "", status="in_progress")
            self.calls[call["index"]] = item
            self.output.append(item)
            events.append(self._event("response.output_item.added", output_index=len(self.output) - 1,
                                      item=dict(item)))
        fresh = (call.get("function") or {}).get("arguments") or ""
        if fresh:
            item["arguments"] += fresh
            events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                      output_index=self.output.index(item), delta=fresh))
        return events

    def finish_events(self, usage: dict[str, int] | None) -> list[dict[str, Any]]:
        """The closing events; afterwards ``response`` and ``assistant`` are set."""
        events = self._close_text()
        for item in self.calls.values():
            index = self.output.index(item)
            item["status"] = "completed"
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                      output_index=index, name=item["name"], arguments=item["arguments"]))
            events.append(self._event("response.output_item.done", output_index=index, item=item))
        self.response = _envelope(self.req, self.rid, self.created, "completed", self.output, usage, self.finish)
        kind = "response.incomplete" if self.response["status"] == "incomplete" else "response.completed"
        events.append(self._event(kind, response=self.response))
        self.assistant = {"role": "assistant", "content": self.text}
        if self.calls:
            self.assistant["tool_calls"] = [
                {"id": c["call_id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in self.calls.values()
            ]
        return events

    def failed(self, error: dict[str, Any]) -> dict[str, Any]:
        """A ``response.failed`` event for an error mid-stream."""
        response = _envelope(self.req, self.rid, self.created, "failed", self.output, None)
        response["error"] = {"code": error.get("code") or "server_error", "message": error.get("message", "")}
        return self._event("response.failed", response=response)


def sse_event(event: dict[str, Any]) -> bytes:
    """One Responses SSE frame (``event:`` names the type)."""
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()
