"""The Anthropic Messages API through the official `anthropic` client (unchanged, pointed at
the sidecar with base_url), serving the packaged SmolLM2: plain, streamed, a tool round
trip both ways, count_tokens, and errors in Anthropic's shape."""

from __future__ import annotations

from typing import Iterator

import anthropic
import httpx
import openai
import pytest
from support import INFERENCE_KEY

QUESTION = [{"role": "user", "content": "Name the largest planet of the solar system."}]
#: This SDK has no temperature argument any more (newer models ignore it); it travels in the body.
GREEDY = {"temperature": 0}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def claude(sidecar: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=sidecar, api_key=INFERENCE_KEY, max_retries=0) as client:
        yield client


def test_message_equals_chat(claude: anthropic.Anthropic, oai: openai.OpenAI) -> None:
    msg = claude.messages.create(model="smol", max_tokens=12, extra_body=GREEDY, system="Answer briefly.",
                                 messages=QUESTION)
    chat = oai.chat.completions.create(model="smol", max_tokens=12, temperature=0,
                                       messages=[{"role": "system", "content": "Answer briefly."}, *QUESTION])
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "smol"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == chat.choices[0].message.content
    assert msg.usage.input_tokens == chat.usage.prompt_tokens
    assert msg.usage.output_tokens == chat.usage.completion_tokens
    expected = {"length": "max_tokens", "stop": "end_turn"}[chat.choices[0].finish_reason]
    assert msg.stop_reason == expected


def test_stream_equals_create(claude: anthropic.Anthropic) -> None:
    full = claude.messages.create(model="smol", max_tokens=12, extra_body=GREEDY, messages=QUESTION)
    with claude.messages.stream(model="smol", max_tokens=12, extra_body=GREEDY, messages=QUESTION) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == full.content[0].text == final.content[0].text
    assert final.usage.output_tokens == full.usage.output_tokens
    assert final.stop_reason == full.stop_reason


def test_raw_stream_event_types(sidecar: str) -> None:
    body = {"model": "smol", "max_tokens": 6, "messages": QUESTION, "stream": True}
    with httpx.stream("POST", sidecar + "/v1/messages", json=body, headers={"x-api-key": INFERENCE_KEY},
                      timeout=120) as r:
        assert r.status_code == 200
        names = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_stop_sequences(claude: anthropic.Anthropic) -> None:
    full = claude.messages.create(model="smol", max_tokens=20, extra_body=GREEDY, messages=QUESTION)
    word = full.content[0].text.split()[2]
    cut = claude.messages.create(model="smol", max_tokens=20, extra_body=GREEDY, messages=QUESTION,
                                 stop_sequences=[word])
    assert cut.content[0].text == full.content[0].text[: full.content[0].text.index(word)]


@pytest.mark.parametrize("streamed", [False, True])
def test_tool_round_trip(claude: anthropic.Anthropic, streamed: bool) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    kwargs = dict(model="smol", max_tokens=60, extra_body=GREEDY, tools=[WEATHER_TOOL], tool_choice={"type": "any"})
    if streamed:
        with claude.messages.stream(messages=ask, **kwargs) as stream:
            msg = stream.get_final_message()
    else:
        msg = claude.messages.create(messages=ask, **kwargs)
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert msg.stop_reason == "tool_use" and len(uses) == 1
    assert uses[0].name == "get_weather" and isinstance(uses[0].input["city"], str)
    follow = claude.messages.create(
        model="smol", max_tokens=40, extra_body=GREEDY, tools=[WEATHER_TOOL], tool_choice={"type": "none"},
        messages=[*ask, {"role": "assistant", "content": msg.content},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                                "content": "Sunny, 21 C"}]}],
    )
    assert follow.stop_reason in ("end_turn", "max_tokens") and follow.content[0].type == "text"
    assert follow.content[0].text


def test_count_tokens_matches_usage(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model="smol", messages=QUESTION, system="Answer briefly.",
                                           tools=[WEATHER_TOOL])
    msg = claude.messages.create(model="smol", max_tokens=1, messages=QUESTION, system="Answer briefly.",
                                 tools=[WEATHER_TOOL])
    assert counted.input_tokens == msg.usage.input_tokens > 0


def test_errors_in_anthropic_shape(claude: anthropic.Anthropic, sidecar: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model="smol", max_tokens=0, messages=QUESTION)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="ghost", max_tokens=4, messages=QUESTION)
    with anthropic.Anthropic(base_url=sidecar, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as info:
            bad.messages.create(model="smol", max_tokens=4, messages=QUESTION)
    assert info.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                          "message": "invalid API key"}}
    r = httpx.post(sidecar + "/v1/messages", content=b"{nope", headers={"x-api-key": INFERENCE_KEY})
    assert r.status_code == 400 and r.json()["type"] == "error"
    # the same keys work as a bearer token, and x-api-key works on the OpenAI routes
    r = httpx.post(sidecar + "/v1/messages/count_tokens", json={"model": "smol", "messages": QUESTION},
                   headers={"Authorization": f"Bearer {INFERENCE_KEY}"}, timeout=60)
    assert r.status_code == 200 and r.json()["input_tokens"] > 0
    assert httpx.get(sidecar + "/v1/models", headers={"x-api-key": INFERENCE_KEY}).status_code == 200
