"""The Responses API through the official `openai` client (unchanged), against the sidecar
serving the packaged SmolLM2: plain, streamed, a function tool round trip, JSON output,
and stored responses continuing a conversation after the sidecar restarts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest
from support import INFERENCE_KEY, free_port, wait_until

from xnb.api.response_store import ResponseStore

QUESTION = "Name the largest planet of the solar system."
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_plain_response_equals_chat(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model="smol", input=QUESTION, max_output_tokens=12, temperature=0,
                             instructions="Answer briefly.")
    chat = oai.chat.completions.create(
        model="smol", max_tokens=12, temperature=0,
        messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}],
    )
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "smol"
    assert r.output_text == chat.choices[0].message.content
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.usage.output_tokens == chat.usage.completion_tokens
    assert r.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    assert r.instructions == "Answer briefly."


def test_streamed_response_event_sequence(oai: openai.OpenAI) -> None:
    full = oai.responses.create(model="smol", input=QUESTION, max_output_tokens=12, temperature=0)
    events = list(oai.responses.create(model="smol", input=QUESTION, max_output_tokens=12, temperature=0,
                                       stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert types[-4:-1] == ["response.output_text.done", "response.content_part.done",
                            "response.output_item.done"]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == full.output_text == events[-4].text
    final = events[-1].response
    assert final.output_text == text and final.usage.output_tokens == full.usage.output_tokens


def test_function_tool_round_trip(oai: openai.OpenAI) -> None:
    first = oai.responses.create(model="smol", input="What is the weather in Paris?", tools=[WEATHER_TOOL],
                                 tool_choice="required", temperature=0, max_output_tokens=60)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    # the conversation continues from the stored response: only the tool output is sent
    second = oai.responses.create(
        model="smol", previous_response_id=first.id, tools=[WEATHER_TOOL], tool_choice="none", temperature=0,
        max_output_tokens=40, input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C"}],
    )
    assert second.output_text and second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    # the same conversation sent in full, without the store, gives the same answer
    replay = oai.responses.create(
        model="smol", tools=[WEATHER_TOOL], tool_choice="none", temperature=0, max_output_tokens=40, store=False,
        input=[{"role": "user", "content": "What is the weather in Paris?"},
               {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
                "arguments": calls[0].arguments},
               {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C"}],
    )
    assert replay.output_text == second.output_text
    assert replay.usage.input_tokens == second.usage.input_tokens


def test_streamed_function_call(oai: openai.OpenAI) -> None:
    events = list(oai.responses.create(model="smol", input="Weather in Rome?", tools=[WEATHER_TOOL],
                                       tool_choice={"type": "function", "name": "get_weather"},
                                       temperature=0, max_output_tokens=60, stream=True))
    types = [e.type for e in events]
    assert "response.function_call_arguments.delta" in types
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert done.arguments == deltas and json.loads(deltas)["city"]
    item = next(e.item for e in events if e.type == "response.output_item.done")
    assert item.type == "function_call" and item.name == "get_weather" and item.arguments == deltas
    assert types[-1] == "response.completed"


def test_json_schema_output(oai: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"planet": {"type": "string"}}, "required": ["planet"],
              "additionalProperties": False}
    r = oai.responses.create(model="smol", input=QUESTION, temperature=0, max_output_tokens=40,
                             text={"format": {"type": "json_schema", "name": "answer", "schema": schema,
                                              "strict": True}})
    assert isinstance(json.loads(r.output_text)["planet"], str)


def test_store_false_is_not_kept_and_errors(oai: openai.OpenAI, http: httpx.Client) -> None:
    r = oai.responses.create(model="smol", input="Hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="smol", input="Hi", previous_response_id="resp_doesnotexist")
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="smol", input=[{"type": "web_search_call"}])
    bad = http.post("/v1/responses", json={"model": "smol", "input": "x", "max_output_tokens": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_output_tokens"
    assert http.get("/v1/responses/not-an-id").status_code == 404


def test_response_store_is_bounded(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path, max_items=3)
    for i in range(3):
        store.put(f"resp_{i}", {"response": {"id": i}, "conversation": []})
    store.get("resp_0")  # used: the least recently used is now resp_1
    store.put("resp_3", {"response": {"id": 3}, "conversation": []})
    assert sorted(p.stem for p in tmp_path.glob("resp_*.json")) == ["resp_0", "resp_2", "resp_3"]
    assert not list(tmp_path.glob(".tmp-*"))
    # a new store on the same folder (a restarted sidecar) sees the same responses
    again = ResponseStore(tmp_path, max_items=3)
    assert again.get("resp_3")["response"] == {"id": 3}


@pytest.fixture()
def own_sidecar(cluster: Any, smol: Any, tmp_path: Path) -> Iterator[Any]:
    """A sidecar process of this test's own (the session one must not restart), with its
    own XNB_HOME; ``restart()`` stops it and starts another on the same port and home."""
    port = free_port()
    env = {**os.environ, "XNB_API_KEYS": INFERENCE_KEY, "XNB_HOME": str(tmp_path)}
    url = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def start() -> None:
        proc = subprocess.Popen([sys.executable, "-m", "xnb.cli", "serve", "--scheduler",
                                 cluster.scheduler_address, "--port", str(port)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)

        def healthy() -> bool:
            assert proc.poll() is None, "the sidecar exited"
            try:
                return httpx.get(url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, "the sidecar's /health")

    def stop() -> None:
        proc = procs[-1]
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    class Handle:
        client = openai.OpenAI(base_url=url + "/v1", api_key=INFERENCE_KEY, max_retries=0)

        @staticmethod
        def restart() -> None:
            stop()
            start()

    start()
    yield Handle
    stop()


def test_previous_response_id_survives_a_restart(own_sidecar: Any) -> None:
    oai = own_sidecar.client
    first = oai.responses.create(model="smol", input="My name is Ada. Say hi.", max_output_tokens=8,
                                 temperature=0)
    own_sidecar.restart()
    assert oai.responses.retrieve(first.id).output_text == first.output_text
    second = oai.responses.create(model="smol", input="What is my name?", previous_response_id=first.id,
                                  max_output_tokens=8, temperature=0)
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    streamed = list(oai.responses.create(model="smol", input="What is my name?", previous_response_id=first.id,
                                         max_output_tokens=8, temperature=0, stream=True))
    assert streamed[-1].response.output_text == second.output_text
    assert oai.responses.retrieve(streamed[-1].response.id).output_text == second.output_text
    oai.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(first.id)
