"""Tool calling and structured output: xnb/openai/tools.py units, then every mode through the
real sidecar with the packaged SmolLM2 and the official `openai` client."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from xnb.engines.base import GenerateRequest
from xnb.engines.transformers import TransformersEngine
from xnb.errors import InvalidRequest, UnsupportedParameter
from xnb.openai.tools import (
    ToolCallStream,
    auto_choice,
    call_schema,
    check_schema,
    parse_tool_calls,
    prepare_messages,
    resolve_tool_choice,
    tools_system_prompt,
    validate_tools,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


# -- units ------------------------------------------------------------------------------------


def test_validate_tools_and_choice() -> None:
    tools = validate_tools([WEATHER, ADD])
    assert [t["name"] for t in tools] == ["get_weather", "add"]
    assert resolve_tool_choice(None, tools) == "auto"
    assert resolve_tool_choice({"type": "function", "function": {"name": "add"}}, tools) == "add"
    with pytest.raises(InvalidRequest, match="not among the tools"):
        resolve_tool_choice({"type": "function", "function": {"name": "nope"}}, tools)
    for bad in ([], [{"type": "function"}], [{"type": "code_interpreter"}],
                [{"type": "function", "function": {"name": "has space"}}],
                [WEATHER, WEATHER],
                [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]):
        with pytest.raises(InvalidRequest) as info:
            validate_tools(bad)
        assert info.value.param == "tools" and info.value.status == 400


def test_schema_features_refused_by_name() -> None:
    check_schema({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}},
                 strict=False, param="response_format")
    with pytest.raises(UnsupportedParameter, match="minimum"):
        check_schema({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}},
                     strict=True, param="response_format")
    with pytest.raises(UnsupportedParameter) as info:
        check_schema({"type": "object", "patternProperties": {}, "not": {}}, strict=False, param="tools")
    assert "patternProperties" in info.value.message and "'not'" in info.value.message
    with pytest.raises(UnsupportedParameter, match="non-local"):
        check_schema({"$ref": "https://example.com/x.json"}, strict=False, param="tools")


def test_call_schema_shapes() -> None:
    tools = validate_tools([WEATHER, ADD])
    named = call_schema(tools, "add", parallel=True)
    assert named["properties"]["name"] == {"const": "add"}
    single = call_schema(tools, "required", parallel=False)
    assert [alt["properties"]["name"]["const"] for alt in single["anyOf"]] == ["get_weather", "add"]
    many = call_schema(tools, "required", parallel=True)
    assert many["anyOf"][1]["type"] == "array" and many["anyOf"][1]["maxItems"] >= 2


def test_parse_tool_calls() -> None:
    (call,) = parse_tool_calls('{"name": "add", "arguments": {"a": 1, "b": 2}}')
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "add" and json.loads(call["function"]["arguments"]) == {"a": 1, "b": 2}
    two = parse_tool_calls('[{"name": "add", "arguments": {"a": 1, "b": 2}}, '
                           '{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "x", "arguments": {}}]')
    assert [c["function"]["name"] for c in two] == ["add", "x"]  # the repeat is dropped
    assert parse_tool_calls("Sure, it is sunny.") is None
    assert parse_tool_calls('{"name": "add", "argu') is None


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_stream_deltas_rebuild_the_calls(size: int) -> None:
    text = '[{"name": "get_weather", "arguments": {"city": "Par\\"is", "unit": "c"}}, {"name": "add", "arguments": {"a": 1, "b": 22}}]'
    stream = ToolCallStream()
    deltas = []
    for i in range(0, len(text), size):
        deltas += stream.feed(text[i:i + size])
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        (tc,) = d["tool_calls"]
        slot = calls.setdefault(tc["index"], {"name": "", "arguments": ""})
        if "id" in tc:
            assert tc["id"].startswith("call_") and tc["type"] == "function"
            slot["name"] = tc["function"]["name"]
        slot["arguments"] += tc["function"].get("arguments", "")
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "add"]
    assert json.loads(calls[0]["arguments"]) == {"city": 'Par"is', "unit": "c"}
    assert json.loads(calls[1]["arguments"]) == {"a": 1, "b": 22}
    assert stream.called


def test_stream_plain_text_stays_content() -> None:
    stream = ToolCallStream()
    out = stream.feed("  ") + stream.feed("Hello") + stream.feed(" {world}")
    assert "".join(d["content"] for d in out) == "  Hello {world}" and not stream.called


def test_prepare_messages_for_both_kinds_of_template() -> None:
    tools = validate_tools([WEATHER])
    history = [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C"},
    ]
    plain, template_tools = prepare_messages(history, tools, "auto", True, template_knows_tools=False)
    assert template_tools is None
    assert plain[0]["role"] == "system" and "Be nice." in plain[0]["content"]
    assert "get_weather" in plain[0]["content"] and '"city"' in plain[0]["content"]
    assert json.loads(plain[2]["content"]) == {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}
    assert plain[3] == {"role": "user", "content": "Result of get_weather: 22 C"}
    native, template_tools = prepare_messages(history, tools, "required", True, template_knows_tools=True)
    assert template_tools[0]["function"]["name"] == "get_weather"
    assert native[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris", "unit": "c"}
    assert native[3]["role"] == "tool"
    assert "only with a function call" in tools_system_prompt(tools, "required", False)


def test_auto_choice_by_relevance() -> None:
    tools = validate_tools([WEATHER, ADD])
    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    assert auto_choice(user("What's the weather in Rome?"), tools) == "get_weather"
    assert auto_choice(user("please use add here"), tools) == "add"
    assert auto_choice(user("weather, then add 2 and 3"), tools) == "required"
    assert auto_choice(user("Tell me a joke."), tools) == "auto"
    assert auto_choice(user("Get me something"), tools) == "auto"  # generic words don't count
    after_result = user("Weather in Rome?") + [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "function": {"name": "get_weather"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "sunny"}]
    assert auto_choice(after_result, tools) == "auto"  # answer with the result, don't call again


def test_auto_calls_a_relevant_tool_with_the_small_model(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model="smol", messages=ASK, tools=[WEATHER, ADD], max_tokens=80,
                                    temperature=0)
    call = _call(r)
    assert call["name"] == "get_weather" and r.choices[0].finish_reason == "tool_calls"


def test_engine_that_cannot_constrain_refuses_tools() -> None:
    request = GenerateRequest(kind="chat", messages=ASK, tools=validate_tools([WEATHER]), tool_choice="required")
    assert not TransformersEngine.can_constrain
    with pytest.raises(UnsupportedParameter, match="tools"):
        TransformersEngine.check_params(request)


# -- through the API ---------------------------------------------------------------------------


def _call(r: Any) -> dict[str, Any]:
    (call,) = r.choices[0].message.tool_calls
    return {"name": call.function.name, "arguments": json.loads(call.function.arguments), "id": call.id}


def test_required_and_named_tool_calls(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model="smol", messages=ASK, tools=[WEATHER, ADD], tool_choice="required",
                                    max_tokens=80, temperature=0)
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    call = _call(r)
    assert call["name"] in ("get_weather", "add") and call["id"].startswith("call_")
    if call["name"] == "get_weather":
        assert set(call["arguments"]) == {"city", "unit"} and call["arguments"]["unit"] in ("c", "f")
    named = oai.chat.completions.create(model="smol", messages=ASK, tools=[WEATHER, ADD],
                                        tool_choice={"type": "function", "function": {"name": "add"}},
                                        max_tokens=60, temperature=0)
    call = _call(named)
    assert call["name"] == "add" and all(isinstance(call["arguments"][k], int) for k in ("a", "b"))


def test_auto_and_none(oai: openai.OpenAI) -> None:
    for choice in ("auto", "none"):
        r = oai.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Say hello."}],
                                        tools=[WEATHER], tool_choice=choice, max_tokens=30, temperature=0)
        message = r.choices[0].message
        if message.tool_calls:  # auto may call; the call is then valid
            assert choice == "auto" and r.choices[0].finish_reason == "tool_calls"
            assert set(json.loads(message.tool_calls[0].function.arguments)) == {"city", "unit"}
        else:
            assert message.content and r.choices[0].finish_reason in ("stop", "length")


def test_streamed_tool_call_deltas(oai: openai.OpenAI) -> None:
    kwargs = dict(model="smol", messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=80,
                  temperature=0)
    full = oai.chat.completions.create(**kwargs)
    chunks = list(oai.chat.completions.create(stream=True, **kwargs))
    first_calls = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    head = first_calls[0].choices[0].delta.tool_calls[0]
    assert head.index == 0 and head.id.startswith("call_") and head.function.name == "get_weather"
    fragments = [c.choices[0].delta.tool_calls[0].function.arguments or "" for c in first_calls]
    assert len([f for f in fragments if f]) > 1  # arguments arrive in pieces
    assert json.loads("".join(fragments)) == json.loads(full.choices[0].message.tool_calls[0].function.arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_tool_history_string_and_parts(oai: openai.OpenAI) -> None:
    call = {"id": "call_abc", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}}
    for content in ("22 degrees and sunny", [{"type": "text", "text": "22 degrees and sunny"}]):
        history = ASK + [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_abc", "content": content},
        ]
        r = oai.chat.completions.create(model="smol", messages=history, tools=[WEATHER], max_tokens=30,
                                        temperature=0, tool_choice="none")
        assert r.choices[0].message.content


def test_structured_output(oai: openai.OpenAI) -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["city", "population"],
              "properties": {"city": {"type": "string"}, "population": {"type": "integer"},
                             "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}
    for stream in (False, True):
        kwargs = dict(model="smol", messages=[{"role": "user", "content": "Describe Paris."}], max_tokens=80,
                      temperature=0,
                      response_format={"type": "json_schema",
                                       "json_schema": {"name": "city", "schema": schema, "strict": True}})
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in oai.chat.completions.create(stream=True, **kwargs)
                           if c.choices)
        else:
            text = oai.chat.completions.create(**kwargs).choices[0].message.content
        data = json.loads(text)
        assert {"city", "population"} <= set(data) and isinstance(data["population"], int)


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "string", "not": {}}}}}}]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "ghost"}}}, "tool_choice"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
            "type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}}}}, "response_format"),
        ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
         "response_format"),
    ],
)
def test_malformed_tools_and_schemas_are_400(http: httpx.Client, extra: dict[str, Any], param: str) -> None:
    r = http.post("/v1/chat/completions", json={"model": "smol", "messages": ASK, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
