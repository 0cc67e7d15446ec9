"""The boundary's contract, on the echo test engine (no model files, milliseconds):
LaunchOptions is every front end's launch, errors are the same from Python, the CLI and
HTTP, the OpenAI shapes and error shapes of the sidecar, status words live in the enums,
an idle-unloaded model lists as unloaded and answers its next request."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import xnb
from xnb.api.admin import LaunchBody
from xnb.cli import cli
from xnb.engines.echo import ECHO_FAMILY, pieces
from xnb.errors import InvalidRequest
from xnb.jupyter.magics import launch_parser
from xnb.protocol import LaunchOptions, ModelStatus, ReplicaStatus, ServerStatus, launch_option_specs

from support import wait_until

ECHO = ECHO_FAMILY["name"]
STATUS_WORDS = {s.value for enum in (ModelStatus, ReplicaStatus, ServerStatus) for s in enum} - {"error"}


# -- LaunchOptions everywhere ------------------------------------------------------------------


def test_every_launch_option_is_a_cli_flag_a_rest_field_and_a_magic_option():
    cli_params = {p.name for p in cli.commands["launch"].params}
    magic_dests = {a.dest for a in launch_parser()._actions}
    assert LaunchBody is LaunchOptions
    for name in LaunchOptions.model_fields:
        if name == "model":  # positional everywhere
            assert "name" in cli_params and "name" in magic_dests
            continue
        assert name in cli_params, f"xnb launch lacks --{name}"
        assert name in magic_dests, f"%xnb launch lacks --{name}"
    assert {s.name for s in launch_option_specs()} == set(LaunchOptions.model_fields) - {"model"}


BAD_OPTIONS = [
    ({"replicas": 0}, ["--replicas", "0"]),
    ({"max_queue": -1}, ["--max-queue", "-1"]),
    ({"max_restarts": 101}, ["--max-restarts", "101"]),
    ({"keep_alive": 0}, ["--keep-alive", "0"]),
]


@pytest.mark.parametrize(("options", "flags"), BAD_OPTIONS)
def test_launch_validation_is_the_same_from_python_cli_and_http(client, admin, cluster, xnb_settings,
                                                                   options, flags):
    with pytest.raises(InvalidRequest) as caught:
        client.launch(ECHO, uid="never", **options)
    message = caught.value.message
    r = admin.post("/api/models", json={"model": ECHO, "uid": "never", **options})
    assert r.status_code == 400 and r.json()["error"]["message"] == message
    proc = subprocess.run(
        [sys.executable, "-m", "xnb.cli", "launch", ECHO, "--uid", "never", *flags,
         "--scheduler", cluster.scheduler_address],
        env={**os.environ, "XNB_HOME": str(xnb_settings.home)}, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


# -- the echo engine through the sidecar -----------------------------------------------------------


def test_echo_chat_stream_and_usage(echo, oai: openai.OpenAI):
    text = "the quick brown fox jumps over the lazy dog"
    messages = [{"role": "user", "content": text}]
    r = oai.chat.completions.create(model="echo", messages=messages)
    assert r.choices[0].message.content == text and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == len(pieces(text)) == r.usage.completion_tokens
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       oai.chat.completions.create(model="echo", messages=messages, stream=True) if c.choices)
    assert streamed == text
    short = oai.chat.completions.create(model="echo", messages=messages, max_tokens=3)
    assert short.choices[0].message.content == "the quick brown" and short.choices[0].finish_reason == "length"
    stopped = oai.chat.completions.create(model="echo", messages=messages, stop=["fox"])
    assert stopped.choices[0].message.content == "the quick brown " and stopped.choices[0].finish_reason == "stop"
    two = oai.completions.create(model="echo", prompt="a b c", n=2, seed=1)
    assert sorted(c.text.strip() for c in two.choices) == ["b c a", "c a b"]


def test_concurrent_streams_on_a_replica_share_one_pull_per_step(client, oai: openai.OpenAI):
    """The sidecar pulls all its streams on a replica in one call (ReplicaPuller): four
    concurrent streams each get their own text, in far fewer pulls than one per stream."""
    from concurrent.futures import ThreadPoolExecutor

    from xnb.engines.echo import ECHO_FAMILY

    model = client.launch(ECHO_FAMILY["name"], uid="echo-slow", engine_options={"delay_ms": 40}, timeout=60)
    try:
        texts = [" ".join(f"{w}{i}" for w in "one two three four five six seven eight nine ten".split())
                 for i in range(4)]

        def chat(text: str) -> str:
            chunks = oai.chat.completions.create(model="echo-slow", messages=[{"role": "user", "content": text}],
                                                 stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(chat, texts)) == texts
        (info,) = model.info()
        assert info["counters"]["requests"] == 4
        # Ten 40 ms tokens per stream: about one pull per token for all four streams
        # together, where one pull loop per stream would take four times as many.
        assert info["counters"]["pulls"] <= 25, info["counters"]
    finally:
        client.terminate("echo-slow")


def test_echo_error_shapes(echo, http: httpx.Client):
    def error(body: dict[str, Any]) -> dict[str, Any]:
        r = http.post("/v1/chat/completions", json={"model": "echo", **body})
        assert r.status_code == 400, r.text
        return r.json()["error"]

    assert error({"messages": [{"role": "user", "content": "  "}]})["param"] == "messages"
    too_long = error({"messages": [{"role": "user", "content": "w " * 300}]})
    assert "context holds 256 tokens" in too_long["message"]
    assert error({"messages": [{"role": "user", "content": "hi"}], "top_k": 3})["param"] == "top_k"
    r = http.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404


# -- idle unload ---------------------------------------------------------------------------------------


def test_idle_unloaded_model_lists_as_unloaded_and_answers(client, admin, echo):
    model = client.launch(ECHO, uid="sleepy-echo", keep_alive=0.3, timeout=60)
    try:
        wait_until(lambda: client.get("sleepy-echo").record["status"] == ModelStatus.UNLOADED, 30,
                   "the idle unload")
        listed = admin.get("/api/models/sleepy-echo").json()
        assert listed["status"] == "unloaded" and listed["replicas"][0]["status"] == "unloaded"
        on_workers = [m for w in client.cluster_info()["workers"] for m in w["models"] if m["uid"] == "sleepy-echo"]
        assert [m["status"] for m in on_workers] == ["unloaded"]
        assert model.chat("still here", max_tokens=5)["choices"][0]["message"]["content"] == "still here"
        # the actor reports it as a Dask event; the Supervisor records it a moment later
        wait_until(lambda: any(e["kind"] == "reloaded" for e in model.events()), 30, "the reloaded event")
    finally:
        client.terminate("sleepy-echo")


# -- layout ------------------------------------------------------------------------------------------------


def test_no_module_over_500_lines():
    root = Path(xnb.__file__).parent
    long = [f"{p.relative_to(root)}: {n}" for p in root.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500]
    assert not long, long


# -- status words live in the enums --------------------------------------------------------------------


def test_status_words_appear_only_in_the_enums():
    root = Path(xnb.__file__).parent
    found = []
    for path in root.rglob("*.py"):
        if path.name == "protocol.py" and path.parent == root:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in STATUS_WORDS
                    and id(node) not in docstrings):
                found.append(f"{path.relative_to(root)}:{node.lineno}: {node.value!r}")
    assert not found, "status words outside xnb/protocol.py (use the enums):\n" + "\n".join(found)


# -- Jupyter against a TLS cluster ---------------------------------------------------------------------


def test_launch_through_jupyter_against_a_tls_cluster(tmp_path: Path):
    """The extension and its sidecar open their Dask clients the one way (TLS from XNB_TLS_*):
    launch through {jupyter}/xnb/api, chat through {jupyter}/xnb/v1."""
    from test_jupyter import JupyterServer

    from xnb.runtime.cluster import start_local_cluster, temporary_security
    from xnb.settings import XnbSettings

    certs = tmp_path / "certs"
    temporary_security(certs)
    tls = {"tls_ca_file": certs / "ca.pem", "tls_cert": certs / "cert.pem", "tls_key": certs / "key.pem"}
    settings = XnbSettings(home=tmp_path / "cluster-home", **tls)
    cluster = start_local_cluster(settings, n_workers=1, threads_per_worker=1)
    server = None
    try:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        env = {f"XNB_{k.upper()}": str(v) for k, v in tls.items()}
        server = JupyterServer(tmp_path / "jupyter", xnb_config={"scheduler_address": address}, env=env).start()
        with server.client() as http:
            assert http.post("/xnb/api/catalog", json={"family": ECHO_FAMILY, "overwrite": True}).status_code == 201
            r = http.post("/xnb/api/models", json={"model": ECHO, "uid": "tls-echo"})
            assert r.status_code == 202, r.text
            assert r.json()["status_url"].endswith("/xnb/api/models/tls-echo")
            wait_until(lambda: http.get("/xnb/api/models/tls-echo").json()["status"] == "ready", 60, "tls-echo")
            reply = http.post("/xnb/v1/chat/completions",
                              json={"model": "tls-echo", "messages": [{"role": "user", "content": "over TLS"}]})
            assert reply.json()["choices"][0]["message"]["content"] == "over TLS"
            assert http.delete("/xnb/api/models/tls-echo").status_code == 200
    finally:
        if server is not None:
            server.stop()
        cluster.close()
