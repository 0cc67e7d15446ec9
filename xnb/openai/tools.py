"""Tool calling and structured output that work even on small models.

Whatever the model, a tool call is written in one format xnb controls —
``{"name": "fn", "arguments": {...}}`` (a JSON array of those for parallel
calls) — and, on engines that can constrain decoding, that format and the
tools' argument schemas are enforced by a grammar:

* ``tool_choice="required"`` or a named function: the whole output must be a
  valid call (valid arguments included);
* ``"auto"``: the output is either plain text that does not start with ``{``/``[``
  or a valid call — a call the model starts is therefore constrained;
* ``"none"``: tools are described but no call is parsed.

The tools are described to the model here, in one place: through the chat
template when it renders ``tools`` itself, plus a short format instruction in
the system prompt (:func:`prepare_messages`).  The client side turns the text
back into OpenAI ``tool_calls`` (:func:`parse_tool_calls`, or
:class:`ToolCallStream` while streaming).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from xnb.errors import InvalidRequest, UnsupportedParameter

__all__ = [
    "validate_tools",
    "resolve_tool_choice",
    "check_schema",
    "call_schema",
    "tools_grammar",
    "prepare_messages",
    "tools_system_prompt",
    "parse_tool_calls",
    "ToolCallStream",
    "auto_choice",
]

_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

#: Most calls one answer may make when parallel calls are allowed.
MAX_PARALLEL_CALLS = 8

#: Keywords a grammar enforces.
_SUPPORTED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "pattern", "minLength",
    "maxLength", "format",
    # annotations: no effect on what is valid
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "strict",
}
#: Constraints the grammar cannot enforce: refused when the schema is strict.
_BEST_EFFORT = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems",
                "minProperties", "maxProperties"}
_FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
_SCHEMA_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


def check_schema(schema: Any, *, strict: bool, param: str, path: str = "#") -> None:
    """Refuse (400, naming them) schema features the grammar cannot enforce."""
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{param}: the JSON schema at {path} must be an object", param=param)
    problems: list[str] = []
    _walk(schema, path, strict, problems)
    if problems:
        raise UnsupportedParameter(
            f"{param}: unsupported JSON schema features: {'; '.join(problems)}. "
            "Remove them (or use non-strict mode for numeric bounds and similar constraints).",
            param=param,
        )


def _walk(schema: dict[str, Any], path: str, strict: bool, problems: list[str]) -> None:
    for key, value in schema.items():
        where = f"{path}/{key}"
        if key in _BEST_EFFORT:
            if strict:
                problems.append(f"'{key}' at {path} (not enforceable by a grammar)")
            continue
        if key not in _SUPPORTED:
            problems.append(f"'{key}' at {path}")
            continue
        if key == "type":
            types = value if isinstance(value, list) else [value]
            bad = [t for t in types if t not in _SCHEMA_TYPES]
            if bad:
                problems.append(f"type {bad} at {path}")
        elif key == "format" and value not in _FORMATS:
            if strict:
                problems.append(f"format '{value}' at {path}")
        elif key == "$ref" and not (isinstance(value, str) and value.startswith("#/")):
            problems.append(f"non-local $ref {value!r} at {path}")
        elif key in ("properties", "$defs", "definitions"):
            if not isinstance(value, dict):
                problems.append(f"'{key}' at {path} must be an object")
                continue
            for name, sub in value.items():
                if isinstance(sub, dict):
                    _walk(sub, f"{where}/{name}", strict, problems)
                else:
                    problems.append(f"schema of {where}/{name} must be an object")
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            for i, sub in enumerate(value if isinstance(value, list) else []):
                if isinstance(sub, dict):
                    _walk(sub, f"{where}/{i}", strict, problems)
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            _walk(value, where, strict, problems)


def validate_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI ``tools`` → normalized ``[{"name", "description", "parameters", "strict"}]``."""
    if not isinstance(tools, list) or not tools:
        raise InvalidRequest("tools must be a non-empty list of function tools", param="tools")
    out, seen = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise InvalidRequest(f"{where} must be {{\"type\": \"function\", \"function\": {{...}}}}", param="tools")
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InvalidRequest(f"{where}.function.name must be 1-64 letters, digits, '_' or '-'", param="tools")
        if name in seen:
            raise InvalidRequest(f"{where}: two tools are named {name!r}", param="tools")
        seen.add(name)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise InvalidRequest(f"{where}.function.parameters must be a JSON schema of type object", param="tools")
        strict = bool(fn.get("strict"))
        check_schema(params, strict=strict, param="tools", path=f"{where}.function.parameters")
        out.append({"name": name, "description": fn.get("description") or "", "parameters": params,
                    "strict": strict})
    return out


def resolve_tool_choice(choice: Any, tools: list[dict[str, Any]]) -> str:
    """``"none" | "auto" | "required"`` or the name of the function that must be called."""
    if choice is None:
        return "auto"
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if name not in {t["name"] for t in tools}:
            raise InvalidRequest(f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
        return name
    raise InvalidRequest("tool_choice must be none, auto, required or {\"type\": \"function\", ...}",
                         param="tool_choice")


_GENERIC = {"get", "set", "do", "run", "call", "make", "tool", "function", "the", "and", "for", "with",
            "from", "into", "this", "that", "what", "which", "your", "input", "value", "data"}
_WORD_RE = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    return set(_WORD_RE.findall(re.sub(r"([a-z])([A-Z])", r"\1 \2", text).lower()))


def auto_choice(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
    """``tool_choice="auto"`` decided by relevance, for models too small to decide it well.

    After a tool result the model answers freely (``"auto"``).  Otherwise, if the
    latest user message names a tool, or shares a distinctive word with a tool's
    name (``weather`` for ``get_weather``), that tool is called (several: any of
    them, ``"required"``); else the model decides (``"auto"``).  Chosen per model
    in the catalog (``tool_auto: "relevance"``); the default is the model's choice.
    """
    if not messages or messages[-1]["role"] in ("tool", "assistant"):
        return "auto"
    user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    text = user.lower()
    said = _words(user)
    hits = []
    for tool in tools:
        name = tool["name"]
        parts = {w for w in _words(name.replace("_", " ").replace("-", " ")) if len(w) >= 3} - _GENERIC
        if name.lower() in text or (parts and parts & said):
            hits.append(name)
    if len(hits) == 1:
        return hits[0]
    return "required" if hits else "auto"


def _one_call(tool: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool["name"]}, "arguments": tool["parameters"]},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def call_schema(tools: list[dict[str, Any]], choice: str, parallel: bool) -> dict[str, Any]:
    """The JSON schema a tool-calling output must match."""
    if choice not in ("auto", "required", "none"):
        return _one_call(next(t for t in tools if t["name"] == choice))
    one = {"anyOf": [_one_call(t) for t in tools]} if len(tools) > 1 else _one_call(tools[0])
    if not parallel:
        return one
    # One call, or a short list of them: small models otherwise repeat a call until max_tokens.
    most = min(MAX_PARALLEL_CALLS, max(2, 2 * len(tools)))
    return {"anyOf": [one, {"type": "array", "items": one, "minItems": 2, "maxItems": most}]}


def tools_grammar(tools: list[dict[str, Any]], choice: str, parallel: bool) -> str | None:
    """GBNF for the output (None for ``"none"``): a call, or — with ``"auto"`` — text or a call."""
    if choice == "none":
        return None
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    grammar = json_schema_to_gbnf(json.dumps(call_schema(tools, choice, parallel)))
    if choice != "auto":
        return grammar
    grammar = re.sub(r"^root ::=", "call ::=", grammar, flags=re.M)
    return grammar + '\nroot ::= call | text\ntext ::= [^{\\[ \\t\\n] [^\\x00]*\n'


def tools_system_prompt(tools: list[dict[str, Any]] | None, choice: str, parallel: bool) -> str:
    """What the model is told about the tools and the call format (one place for all models)."""
    lines = []
    if tools is not None:
        lines.append("You can call these functions:")
        for t in tools:
            desc = f": {t['description']}" if t["description"] else ""
            lines.append(f"- {t['name']}{desc}. Arguments (JSON schema): "
                         f"{json.dumps(t['parameters'], separators=(',', ':'))}")
    example = '{"name": "<function name>", "arguments": {<arguments>}}'
    several = ""  # the grammar allows a list of calls; saying so confuses small models
    if choice == "required":
        lines.append(f"Answer only with a function call, as JSON: {example}{several}")
    elif choice not in ("auto", "none"):
        lines.append(f'Answer only with a call of {choice}, as JSON: {{"name": "{choice}", "arguments": {{...}}}}')
    else:
        lines.append(f"To call a function, answer only with JSON: {example}{several}. "
                     "Otherwise answer in plain text.")
    lines.append("Function results come back in messages that start with 'Result of'.")
    return "\n".join(lines)


def _args_obj(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments or "{}")
        except ValueError:
            return arguments
    return arguments


def _call_text(calls: list[dict[str, Any]]) -> str:
    items = [{"name": c["function"]["name"], "arguments": _args_obj(c["function"].get("arguments"))}
             for c in calls]
    return json.dumps(items[0] if len(items) == 1 else items, ensure_ascii=False)


def prepare_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]], choice: str, parallel: bool,
    *, template_knows_tools: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Messages (and the ``tools`` to give the template) for a tool-using request.

    Templates that render ``tools`` get them in OpenAI form and keep tool
    messages; for the others, tools are described in the system prompt and the
    tool history is written as text (calls in xnb's JSON format, results as
    user turns).  Either way the system prompt states the call format.
    """
    names = {}
    out: list[dict[str, Any]] = []
    for msg in messages:
        if msg["role"] == "assistant" and msg.get("tool_calls"):
            for c in msg["tool_calls"]:
                names[c.get("id")] = c.get("function", {}).get("name", "")
            if template_knows_tools:
                calls = [{**c, "function": {**c["function"], "arguments": _args_obj(c["function"].get("arguments"))}}
                         for c in msg["tool_calls"]]
                out.append({**msg, "tool_calls": calls})
            else:
                out.append({"role": "assistant", "content": _call_text(msg["tool_calls"])})
        elif msg["role"] == "tool" and not template_knows_tools:
            name = names.get(msg.get("tool_call_id"), "") or msg.get("name", "the function")
            out.append({"role": "user", "content": f"Result of {name}: {msg['content']}"})
        else:
            out.append(msg)
    instruction = tools_system_prompt(None if template_knows_tools else tools, choice, parallel)
    if out and out[0]["role"] == "system":
        out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{instruction}"}
    else:
        out.insert(0, {"role": "system", "content": instruction})
    template_tools = [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters")}}
                      for t in tools] if template_knows_tools else None
    return out, template_tools


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_tool_calls(text: str) -> list[dict[str, Any]] | None:
    """OpenAI ``tool_calls`` from a (complete) output, or None if it is not a call."""
    stripped = text.strip()
    if not stripped or stripped[0] not in "{[":
        return None
    try:
        data = json.loads(stripped, strict=False)
    except ValueError:
        return None
    items = data if isinstance(data, list) else [data]
    calls, seen = [], set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        key = json.dumps(item, sort_keys=True)
        if key in seen:  # a small model repeating itself, not a second call
            continue
        seen.add(key)
        calls.append({
            "id": _new_call_id(),
            "type": "function",
            "function": {"name": item["name"],
                         "arguments": json.dumps(item.get("arguments", {}), ensure_ascii=False)},
        })
    return calls or None


# -- streaming -------------------------------------------------------------------------------


def _read_string(buf: str, i: int) -> tuple[str, int] | None:
    """The JSON string starting at ``buf[i] == '"'``: (value, index after), or None if incomplete."""
    j, esc = i + 1, False
    while j < len(buf):
        c = buf[j]
        if esc:
            esc = False
        elif c == "\\":
            esc = True
        elif c == '"':
            try:
                return json.loads(buf[i:j + 1], strict=False), j + 1
            except ValueError:
                return buf[i + 1:j], j + 1
        j += 1
    return None


def _value_end(buf: str, i: int) -> int | None:
    """Index after the JSON value starting at ``i``, or None if it is not complete yet."""
    depth, in_str, esc = 0, False, False
    for j in range(i, len(buf)):
        c = buf[j]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
                if depth == 0:
                    return j + 1
        elif c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return j + 1
        elif depth == 0 and c in ",} \n\t" and j > i:
            return j
    return None


@dataclass
class _Progress:
    name: str | None = None
    args: str = ""


def _scan_calls(buf: str) -> list[_Progress]:
    """What the (possibly incomplete) call text holds so far: names and argument text."""
    calls: list[_Progress] = []
    i, n = 0, len(buf)

    def skip(i: int, chars: str = " \t\n\r") -> int:
        while i < n and buf[i] in chars:
            i += 1
        return i

    i = skip(i)
    if i < n and buf[i] == "[":
        i += 1
    while True:
        i = skip(i, " \t\n\r,")
        if i >= n or buf[i] != "{":
            return calls
        call = _Progress()
        calls.append(call)
        i += 1
        while True:
            i = skip(i, " \t\n\r,")
            if i >= n or buf[i] == "}":
                i += 1
                break
            key = _read_string(buf, i) if buf[i] == '"' else None
            if key is None:
                return calls
            i = skip(key[1])
            if i >= n or buf[i] != ":":
                return calls
            i = skip(i + 1)
            if i >= n:
                return calls
            end = _value_end(buf, i)
            if key[0] == "name" and buf[i] == '"':
                value = _read_string(buf, i)
                if value is None:
                    return calls
                call.name = value[0]
            elif key[0] == "arguments":
                call.args = buf[i:end] if end is not None else buf[i:]
            if end is None:
                return calls
            i = end


@dataclass
class ToolCallStream:
    """Turns streamed output text into OpenAI deltas: ``content`` or ``tool_calls`` pieces.

    Until the first non-blank character it cannot tell; ``{`` or ``[`` means a
    call (the grammar guarantees the rest), anything else is text.
    """

    mode: str | None = None  # None (undecided), "text", "calls"
    buffer: str = ""
    ids: list[str] = field(default_factory=list)
    sent_args: list[int] = field(default_factory=list)

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Deltas (``{"content": ...}`` or ``{"tool_calls": [...]}``) for this piece of text."""
        if self.mode == "text":
            return [{"content": text}] if text else []
        self.buffer += text
        if self.mode is None:
            stripped = self.buffer.lstrip()
            if not stripped:
                return []
            if stripped[0] not in "{[":
                self.mode = "text"
                out, self.buffer = self.buffer, ""
                return [{"content": out}]
            self.mode = "calls"
        deltas = []
        for index, call in enumerate(_scan_calls(self.buffer)):
            if call.name is None:
                break
            if index >= len(self.ids):
                self.ids.append(_new_call_id())
                self.sent_args.append(0)
                deltas.append({"tool_calls": [{"index": index, "id": self.ids[index], "type": "function",
                                               "function": {"name": call.name, "arguments": ""}}]})
            fresh = call.args[self.sent_args[index]:]
            if fresh:
                self.sent_args[index] = len(call.args)
                deltas.append({"tool_calls": [{"index": index, "function": {"arguments": fresh}}]})
        return deltas

    @property
    def called(self) -> bool:
        return self.mode == "calls" and bool(self.ids)
