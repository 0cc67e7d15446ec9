"""A property-based fuzz of the sidecar's whole OpenAPI document (schemathesis, every route,
with an admin key) against a real sidecar process on the session cluster: no server error,
no status the document does not list, error bodies in the documented shape.

Bounded (a few examples per operation) so it takes about a minute; the models it may touch
are cleaned up afterwards."""

from __future__ import annotations

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


def test_fuzz_whole_schema(fuzz_sidecar: str, tmp_path: Path) -> None:
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    cmd = [
        st, "run", fuzz_sidecar + "/openapi.json",
        "--header", f"Authorization: Bearer {ADMIN_KEY}",
        "--checks", "not_a_server_error,status_code_conformance,response_schema_conformance",
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", "6", "--seed", "1", "--workers", "1", "--no-shrink",
        "--request-timeout", "60", "--suppress-health-check", "all",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
