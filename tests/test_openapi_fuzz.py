"""A property-based fuzz of the sidecar's whole OpenAPI document (schemathesis, every route,
with an admin key) against a real sidecar process on the session cluster: no server error,
no status the document does not list, error bodies in the documented shape.

Bounded (a few examples per operation) so it takes about a minute; the models it may touch
are cleaned up afterwards.  A second, slow run pins ``model`` to the served SmolLM2 (at most
3 new tokens) so random parameters reach the engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from support import ADMIN_KEY, INFERENCE_KEY, free_port, wait_until

from xnb.api.app import create_app
from xnb.api.openapi import route_statuses

pytest.importorskip("schemathesis", reason="the test extra installs schemathesis")


def test_document_lists_error_statuses() -> None:
    doc = create_app().openapi()
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert {"400", "401", "404", "413", "429", "503"} <= set(chat["responses"])
    assert "422" not in chat["responses"]
    assert chat["responses"]["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "messages" in doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    messages = doc["paths"]["/v1/messages"]["post"]["responses"]["400"]["content"]["application/json"]["schema"]
    assert messages == {"$ref": "#/components/schemas/AnthropicError"}
    assert "403" in doc["paths"]["/api/models"]["post"]["responses"]
    assert "403" not in doc["paths"]["/v1/responses"]["post"]["responses"]
    assert route_statuses("/health", "get") == [400, 503]


@pytest.fixture()
def fuzz_sidecar(cluster: Any, smol: Any, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "XNB_API_KEYS": INFERENCE_KEY, "XNB_ADMIN_API_KEYS": ADMIN_KEY,
           "XNB_HOME": str(tmp_path / "home")}
    log = open(tmp_path / "sidecar.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "xnb.cli", "serve", "--scheduler", cluster.scheduler_address,
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (tmp_path / "sidecar.log").read_text()
        try:
            return httpx.get(url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 60, "the sidecar's /health")
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
    models = {m["uid"] for m in admin.get("/api/models").json()["data"]}
    catalog = {m["name"] for m in admin.get("/api/catalog").json()["data"]}
    try:
        yield url
    finally:
        for m in admin.get("/api/models").json()["data"]:
            if m["uid"] not in models:
                admin.delete(f"/api/models/{m['uid']}")
        for m in admin.get("/api/catalog").json()["data"]:
            if m["name"] not in catalog:
                admin.delete(f"/api/catalog/{m['name']}")
        admin.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _schemathesis(location: str, tmp_path: Path, *extra: str) -> None:
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    cmd = [
        st, "run", location, *extra,
        "--header", f"Authorization: Bearer {ADMIN_KEY}",
        "--checks", "not_a_server_error,status_code_conformance,response_schema_conformance",
        "--seed", "1", "--workers", "1", "--no-shrink",
        "--request-timeout", "60", "--suppress-health-check", "all", "--warnings", "off",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]


def test_fuzz_whole_schema(fuzz_sidecar: str, tmp_path: Path) -> None:
    """Every operation, as documented (random model names and uids mostly meet 404s)."""
    _schemathesis(fuzz_sidecar + "/openapi.json", tmp_path, "--max-examples", "6",
                  "--phases", "examples,coverage,fuzzing")


#: Request models whose ``model`` the engine fuzz pins to the served SmolLM2.
_GENERATING = {
    "ChatCompletionRequest": "max_completion_tokens", "CompletionRequest": "max_tokens",
    "ResponsesRequest": "max_output_tokens", "MessagesRequest": "max_tokens", "CountTokensRequest": "max_tokens",
}


@pytest.mark.slow  # ~1-3 min: every case generates
def test_fuzz_generation_routes_on_the_model(fuzz_sidecar: str, tmp_path: Path) -> None:
    """The generating routes with ``model`` pinned to the served SmolLM2 and at most 3 new
    tokens, so random parameters (sampling, stops, tools, formats, streams) reach the
    engine; the document is otherwise the served one."""
    doc = httpx.get(fuzz_sidecar + "/openapi.json", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    schemas = doc["components"]["schemas"]
    for name, limit in _GENERATING.items():
        props = schemas[name]["properties"]
        props["model"] = {"type": "string", "enum": ["smol"]}
        props[limit] = {"type": "integer", "minimum": 1, "maximum": 3}
        props.pop("max_tokens" if limit == "max_completion_tokens" else "", None)
        schemas[name]["required"] = sorted({*schemas[name].get("required", []), limit})
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(doc))
    _schemathesis(str(path), tmp_path, "--url", fuzz_sidecar, "--max-examples", "12", "--phases", "fuzzing",
                  "--mode", "positive",
                  "--include-path-regex", "^/v1/(chat/completions|completions|responses|messages.*)$",
                  "--include-method", "POST")


def test_values_that_cannot_cross_the_wire_are_400(admin: httpx.Client) -> None:
    """What the fuzz found first: integers beyond 64 bits (msgpack to the scheduler or the
    actor overflowed into a 500) and lone surrogates in text."""
    r = admin.get("/api/models/smol", params={"version": 2**70, "wait": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "version"
    r = admin.get("/api/models/smol/events", params={"since": "inf"})
    assert r.status_code == 400
    r = admin.post("/api/catalog", json={"family": {"name": "x", "context_length": 2**70}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "family.context_length"
    r = admin.post("/v1/chat/completions", json={"model": "smol", "max_tokens": 2**64,
                                                 "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = admin.post("/v1/chat/completions", content=b'{"model": "smol", "messages": [{"role": "user", '
                                                    b'"content": "\\ud800"}]}',
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"]
    r = admin.post("/v1/messages", content=b"[" * 100_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["type"] == "error"
    r = admin.post("/v1/chat/completions", json={"model": "smol", "logit_bias": {"999999": 1}, "max_tokens": 1,
                                                 "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"
