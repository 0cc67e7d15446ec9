"""The vLLM engine, really running on vLLM's CPU build, in a worker from .venv-vllm.

The session cluster (a llama.cpp worker from the main env) gets a second worker,
``xnb worker`` run by .venv-vllm's python (``scripts/bootstrap-vllm.sh`` builds it),
so one cluster mixes both.  The packaged SmolLM2 is launched through the catalog
in ``pytorch`` format (the GGUF converted to safetensors on the worker) and served
through the real sidecar to the OpenAI client.  One vLLM start serves the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest
from support import INFERENCE_KEY, SMOL, wait_until

from xnb.client import Client, Model
from xnb.errors import XnbError

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-vllm"
UID = "smol-vllm"
MAX_LEN = 2048
OPTIONS = {"kv_cache_space": 1, "max_model_len": MAX_LEN}
MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]

pytestmark = [
    pytest.mark.skipif(not (VENV / "bin" / "xnb").exists(),
                       reason="no .venv-vllm: run scripts/bootstrap-vllm.sh to test the vLLM engine"),
    # the first test also waits for the conversion and vLLM's start (minutes on a busy 2-core machine)
    pytest.mark.timeout(900),
]


@pytest.fixture(scope="module")
def vllm_worker(cluster, client: Client, xnb_settings, tmp_path_factory) -> Iterator[str]:
    """`xnb worker` from .venv-vllm joined to the session cluster; yields its name."""
    log = tmp_path_factory.mktemp("vllm-worker") / "worker.log"
    env = {**os.environ, "XNB_HOME": str(xnb_settings.home), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT), "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(VENV / "bin" / "xnb"), "worker", cluster.scheduler_address, "--name", "vllm",
             "--nthreads", "1", "--no-nanny"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def joined() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the vLLM worker exited:\n{log.read_text()[-3000:]}")
        return any(w.get("name") == "vllm" for w in client.cluster_info()["workers"])

    wait_until(joined, 60, "the vLLM worker to join")
    yield "vllm"
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def vmodel(client: Client, vllm_worker: str) -> Iterator[Model]:
    model = client.launch(SMOL, uid=UID, engine="vllm", format="pytorch", workers=[vllm_worker],
                          engine_options=OPTIONS, timeout=420)
    yield model
    try:
        client.terminate(UID)
    except XnbError:
        pass


def engine_stats(model: Model) -> dict[str, Any]:
    (info,) = model.info()
    return info["engine"]


def test_launch_through_the_catalog(client: Client, vmodel: Model) -> None:
    (replica,) = vmodel.record["replicas"]
    assert vmodel.status == "ready"
    names = {w["address"]: w["name"] for w in client.cluster_info()["workers"]}
    assert names[replica["worker"]] == "vllm"
    (info,) = vmodel.info()
    assert info["load"]["device"] == "cpu" and info["load"]["enforce_eager"] is True
    assert info["load"]["max_model_len"] == MAX_LEN
    assert "/converted/" in info["load"]["path"]  # the packaged GGUF, converted on the worker


def test_chat_stream_and_usage(vmodel: Model, oai: openai.OpenAI) -> None:
    full = oai.chat.completions.create(model=UID, messages=MESSAGES, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    assert "Paris" in text
    assert full.usage.prompt_tokens > 10 and 0 < full.usage.completion_tokens <= 24
    chunks = list(oai.chat.completions.create(
        model=UID, messages=MESSAGES, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    # stop strings and n > 1 with a seed
    stopped = oai.completions.create(model=UID, prompt="One, two, three, four,", max_tokens=20,
                                     temperature=0, stop=["six"])
    assert stopped.choices[0].finish_reason == "stop" and "six" not in stopped.choices[0].text
    two = oai.chat.completions.create(model=UID, messages=MESSAGES, max_tokens=12, n=2,
                                      temperature=1.0, seed=7)
    again = oai.chat.completions.create(model=UID, messages=MESSAGES, max_tokens=12, n=2,
                                        temperature=1.0, seed=7)
    assert len(two.choices) == 2
    assert [c.message.content for c in two.choices] == [c.message.content for c in again.choices]


def test_structured_output_and_unsupported_params(vmodel: Model, oai: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    r = oai.chat.completions.create(
        model=UID, messages=MESSAGES, max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    assert set(json.loads(r.choices[0].message.content)) == {"city"}
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=UID, messages=MESSAGES, max_tokens=4,
                                    extra_body={"grammar": 'root ::= "a"'})
    assert "grammar" in str(err.value)


# A second vLLM start (vllm.LLM in its own process): ~50 s here, in the default suite because
# issue 13 asks CI to check that xnb's greedy text is vLLM's own.
def test_greedy_text_equals_vllm_itself(vmodel: Model, oai: openai.OpenAI) -> None:
    from transformers import AutoTokenizer

    (info,) = vmodel.info()
    folder = info["load"]["path"]
    rendered = AutoTokenizer.from_pretrained(folder).apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=True)
    prompts = [{"prompt": "The three primary colours are", "chat": False, "max_tokens": 32},
               {"prompt": rendered, "chat": True, "max_tokens": 32}]
    ref = subprocess.run(
        [str(VENV / "bin" / "python"), str(ROOT / "tests" / "helpers_vllm_ref.py"), folder,
         str(MAX_LEN)],
        input=json.dumps(prompts), capture_output=True, text=True, timeout=300,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(ROOT)})
    assert ref.returncode == 0, ref.stderr[-3000:]
    (line,) = [ln for ln in ref.stdout.splitlines() if ln.startswith("XNB_REF ")]
    expected = json.loads(line.removeprefix("XNB_REF "))
    completion = oai.completions.create(model=UID, prompt=prompts[0]["prompt"], max_tokens=32,
                                        temperature=0)
    chat = oai.chat.completions.create(model=UID, messages=MESSAGES, max_tokens=32, temperature=0)
    assert [completion.choices[0].text, chat.choices[0].message.content] == expected


def test_eight_concurrent_streams(vmodel: Model, oai: openai.OpenAI) -> None:
    results: dict[int, tuple[str, str | None]] = {}

    def one(i: int) -> None:
        text, finish = "", None
        for c in oai.chat.completions.create(
                model=UID, messages=[{"role": "user", "content": f"Count to {i + 3}."}],
                max_tokens=32, temperature=0, stream=True):
            if c.choices:
                text += c.choices[0].delta.content or ""
                finish = c.choices[0].finish_reason or finish
        results[i] = (text, finish)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert sorted(results) == list(range(8))
    assert all(text and finish in ("stop", "length") for text, finish in results.values())
    assert engine_stats(vmodel)["running"] == 0


def test_client_disconnect_frees_the_request(vmodel: Model, sidecar: str) -> None:
    before = engine_stats(vmodel)
    body = {"model": UID, "messages": MESSAGES, "max_tokens": 1500, "stream": True,
            "temperature": 1.0, "seed": 1, "ignore_eos": True}
    with httpx.stream("POST", sidecar + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {INFERENCE_KEY}"}, timeout=60) as r:
        got = 0
        for line in r.iter_lines():
            got += bool(line)
            if got >= 3:
                break
    after = wait_until(
        lambda: (s := engine_stats(vmodel))["aborted"] > before["aborted"] and s["running"] == 0
        and s["active"] == 0 and s, 30, "vLLM to drop the aborted request")
    assert after["tokens_generated"] - before["tokens_generated"] < 1500


def test_impossible_option_fails_clearly_and_the_worker_keeps_serving(
        client: Client, vmodel: Model, vllm_worker: str, oai: openai.OpenAI) -> None:
    with pytest.raises(XnbError) as err:
        client.launch(SMOL, uid="smol-vllm-bad", engine="vllm", format="pytorch",
                      workers=[vllm_worker], timeout=300,
                      engine_options={"kv_cache_space": 1, "max_model_len": 100_000})
    message = str(err.value)
    assert "vLLM could not start" in message and "max_model_len" in message
    try:
        client.terminate("smol-vllm-bad")
    except XnbError:
        pass
    r = oai.chat.completions.create(model=UID, messages=MESSAGES, max_tokens=8, temperature=0)
    assert r.choices[0].message.content
