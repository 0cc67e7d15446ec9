"""The load generator (xnb.bench, `xnb bench`): the metric math on synthetic
timestamps, SSE parsing and error detection against scripted streams, and one
real run against an `xnb local` subprocess serving SmolLM2 (no timing thresholds)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import psutil
import pytest

from support import free_port, wait_until
from xnb import bench
from xnb.bench import BenchConfig, Prompt, RequestResult

SMOL = "smollm2-135m-instruct"


# -- percentiles, ITL, TPOT, summaries ------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101])
@pytest.mark.parametrize("p", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(n: int, p: float) -> None:
    rng = random.Random(n * 1000 + int(p))
    values = [rng.uniform(0, 100) for _ in range(n)]
    assert bench.percentile(values, p) == pytest.approx(float(np.percentile(values, p)))


def test_percentile_edges() -> None:
    assert math.isnan(bench.percentile([], 50))
    assert bench.percentile([7.0], 99) == 7.0
    assert bench.percentile([3, 1, 2], 50) == 2  # unsorted input
    assert bench.percentile([0, 10], 99) == pytest.approx(9.9)
    with pytest.raises(ValueError):
        bench.percentile([1, 2], 101)
    assert bench.distribution([]) == {"mean": None, "median": None, "p99": None}
    d = bench.distribution([0.001, 0.002, 0.003])
    assert d["mean"] == pytest.approx(2.0) and d["median"] == pytest.approx(2.0)
    assert d["p99"] == pytest.approx(2.98)


def result(start: float, chunk_times: list[float], end: float, *, usage: int | None = None,
           error: str | None = None) -> RequestResult:
    return RequestResult(start=start, end=end, chunk_times=list(chunk_times), content_chunks=len(chunk_times),
                         usage_completion_tokens=usage, finish_reason="stop", error=error)


def test_request_timings_on_synthetic_timestamps() -> None:
    r = result(10.0, [10.5, 10.6, 10.8, 11.1], 11.2)
    assert r.ttft == pytest.approx(0.5)
    assert r.latency == pytest.approx(1.2)
    assert r.itl() == pytest.approx([0.1, 0.2, 0.3])
    assert bench.inter_token_latencies([1.0]) == []
    assert bench.inter_token_latencies([]) == []
    # TPOT: (latency − ttft) / (tokens − 1), tokens from usage when there is one
    assert r.tpot(prefer_usage=False) == pytest.approx(0.7 / 3)
    r.usage_completion_tokens = 8
    assert r.output_tokens() == 8 and r.output_tokens(prefer_usage=False) == 4
    assert r.tpot() == pytest.approx(0.7 / 7)
    single = result(0.0, [0.2], 0.3)
    assert single.tpot() is None and single.itl() == []
    nothing = result(0.0, [], 0.3)
    assert nothing.ttft is None and nothing.tpot() is None


def test_summarize_synthetic_run() -> None:
    ok1 = result(0.0, [0.1, 0.2, 0.3], 0.4, usage=3)
    ok2 = result(0.0, [0.3, 0.5], 0.6, usage=2)
    ok2.prompt_tokens = 10
    ok1.prompt_tokens = 20
    bad = result(0.0, [], 0.05, error="HTTP 503: not ready")
    s = bench.summarize([ok1, ok2, bad], 2.0, concurrency=2)
    assert s["concurrency"] == 2
    assert (s["num_requests"], s["completed"], s["errors"]) == (3, 2, 1)
    assert s["error_kinds"] == {"HTTP 503: not ready": 1}
    assert s["total_output_tokens"] == 5 and s["output_tokens_from"] == "usage"
    assert s["total_input_tokens"] == 30
    assert s["request_throughput"] == pytest.approx(1.0)
    assert s["output_throughput"] == pytest.approx(2.5)
    assert s["total_token_throughput"] == pytest.approx(17.5)
    assert s["ttft_ms"]["mean"] == pytest.approx(200.0)
    assert s["ttft_ms"]["median"] == pytest.approx(200.0)
    assert s["ttft_ms"]["p99"] == pytest.approx(100 + 200 * 0.99)
    # TPOT: ok1 (0.4-0.1)/2 = 0.15, ok2 (0.6-0.3)/1 = 0.3
    assert s["tpot_ms"]["mean"] == pytest.approx(225.0)
    # ITL pools every gap of every successful request: 0.1, 0.1, 0.2
    assert s["itl_ms"]["mean"] == pytest.approx(400 / 3)
    assert s["itl_ms"]["median"] == pytest.approx(100.0)
    assert s["e2el_ms"]["median"] == pytest.approx(500.0)
    # counting chunks instead of usage
    s2 = bench.summarize([ok1, ok2], 1.0, prefer_usage=False)
    assert s2["total_output_tokens"] == 5 and s2["output_tokens_from"] == "content chunks"
    empty = bench.summarize([], 1.0)
    assert empty["completed"] == 0 and empty["ttft_ms"]["median"] is None


def test_datasets(tmp_path: Path) -> None:
    bundled = bench.load_prompts()
    assert len(bundled) >= 16 and all(p.messages[0]["role"] == "user" for p in bundled)
    picked = bench.sample_prompts(bundled, 40, seed=1)
    assert len(picked) == 40 and picked == bench.sample_prompts(bundled, 40, seed=1)
    assert set(map(id, picked[: len(bundled)])) == set(map(id, bundled))  # every prompt once before repeating
    rnd = bench.random_prompts(3, 50, 7, seed=2)
    assert len(rnd) == 3 and all(p.max_tokens == 7 and len(p.text.split()) == 50 for p in rnd)
    f = tmp_path / "p.json"
    f.write_text(json.dumps(["hi", {"prompt": "yo", "max_tokens": 3}, {"messages": [{"role": "user", "content": "x"}]}]))
    mixed = bench.load_prompts(f)
    assert [p.max_tokens for p in mixed] == [None, 3, None]
    f.write_text(json.dumps({"prompts": [1]}))
    with pytest.raises(bench.BenchError):
        bench.load_prompts(f)
    with pytest.raises(bench.BenchError):
        bench.load_prompts(tmp_path / "missing.json")
    assert BenchConfig(base_url="http://h:1/v1/").chat_url == "http://h:1/v1/chat/completions"
    body = BenchConfig(model="m", max_tokens=9, ignore_eos=True).payload(Prompt([{"role": "user", "content": "q"}]))
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 9 and body["ignore_eos"] and body["temperature"] == 0.0


def test_poisson_arrivals() -> None:
    assert bench.arrival_gaps(4, math.inf, 0) == [0.0] * 4
    gaps = bench.arrival_gaps(4000, 20.0, 0)
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 20, rel=0.1)
    with pytest.raises(bench.BenchError):
        bench.arrival_gaps(3, 0.0, 0)


# -- SSE parsing and error detection against scripted streams --------------------------------------


def _chunk(content: str | None = None, finish: str | None = None, usage: dict[str, int] | None = None) -> str:
    choices = [] if usage else [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]
    body: dict[str, Any] = {"object": "chat.completion.chunk", "choices": choices}
    if usage:
        body["usage"] = usage
    return "data: " + json.dumps(body) + "\n\n"


GOOD = (": ping\n\n" + _chunk("Hel") + _chunk("lo") + _chunk(finish="stop")
        + _chunk(usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}) + "data: [DONE]\n\n")
SCRIPTS: dict[str, tuple[int, str]] = {
    "good": (200, GOOD),
    "crlf": (200, GOOD.replace("\n", "\r\n")),
    "no_usage": (200, _chunk("a") + _chunk("b") + _chunk(finish="length") + "data: [DONE]\n\n"),
    "no_done": (200, _chunk("a") + _chunk(finish="stop")),
    "empty": (200, _chunk(finish="stop") + "data: [DONE]\n\n"),
    "cut_short": (200, _chunk("a") + "data: [DONE]\n\n"),  # what an interrupted llama-cpp-python stream looks like
    "error_event": (200, _chunk("a") + 'data: {"error": {"message": "boom", "code": 500}}\n\n'),
    "http_429": (429, json.dumps({"error": {"message": "queue full", "type": "rate_limit"}})),
}


def scripted_transport(seen: list[dict[str, Any]]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        status, text = SCRIPTS[body["model"]]
        return httpx.Response(status, content=text.encode(), headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


def run_script(name: str) -> tuple[RequestResult, dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    async def go() -> RequestResult:
        async with httpx.AsyncClient(transport=scripted_transport(seen)) as client:
            return await bench.stream_chat(client, BenchConfig(model=name, api_key="k"), Prompt([{"role": "user", "content": "q"}]))

    return asyncio.run(go()), seen[0]


def test_sse_parsing_of_a_good_stream() -> None:
    for name in ("good", "crlf"):
        r, sent = run_script(name)
        assert r.ok, r.error
        assert r.content_chunks == 2 and r.usage_completion_tokens == 3 and r.prompt_tokens == 5
        assert r.finish_reason == "stop" and r.generated_chars == 5
        assert r.start <= r.chunk_times[0] <= r.chunk_times[1] <= r.end
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    r, _ = run_script("no_usage")
    assert r.ok and r.usage_completion_tokens is None and r.output_tokens() == 2


@pytest.mark.parametrize("name, message", [
    ("no_done", "without data: [DONE]"),
    ("empty", "empty stream"),
    ("cut_short", "ended early"),
    ("error_event", "error event: boom"),
    ("http_429", "HTTP 429: queue full"),
])
def test_sse_errors_are_detected(name: str, message: str) -> None:
    r, _ = run_script(name)
    assert not r.ok and message in (r.error or "")


def test_reports(tmp_path: Path) -> None:
    runs = []
    for c in (1, 4):
        rs = [result(0.0, [0.1 * c, 0.15 * c], 0.2 * c, usage=2) for _ in range(3)]
        runs.append({"summary": bench.summarize(rs, 1.0, concurrency=c, request_rate="inf"), "requests": []})
    report = {"tool": "test", "config": {"model": "m", "base_url": "u", "max_tokens": 2, "temperature": 0},
              "num_prompts": 3, "runs": runs}
    paths = bench.write_reports(report, tmp_path, stem="r")
    assert json.loads(paths["json"].read_text())["runs"][1]["summary"]["concurrency"] == 4
    md = paths["md"].read_text()
    assert md.count("\n| 1 | inf | 3 | 0 |") == 1 and "| 4 | inf | 3 | 0 |" in md
    pytest.importorskip("matplotlib")
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


# -- a real run against `xnb local` ------------------------------------------------------------------


@pytest.fixture(scope="module")
def xnb_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """`xnb local --launch smollm2-135m-instruct` on a free port, its own XNB_HOME, in its
    own process group (as in a terminal)."""
    home = tmp_path_factory.mktemp("bench-home")
    port = free_port()
    env = {**os.environ, "XNB_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("XNB_SCHEDULER_ADDRESS", None)
    log = (home / "local.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xnb.cli", "local", "--launch", SMOL, "--port", str(port),
         "--n-workers", "1", "--threads-per-worker", "2"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"xnb local exited: {(home / 'local.log').read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"xnb local not healthy in 120 s: {(home / 'local.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, home, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_load_generator_against_xnb_local(xnb_local: tuple[str, Path, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    url, _, _ = xnb_local
    prompts = bench.sample_prompts(bench.load_prompts(), 4, seed=0)
    config = BenchConfig(base_url=url, max_tokens=16)  # model discovered through /v1/models
    out = asyncio.run(bench.run_benchmark(config, prompts, concurrency=2))
    assert config.model == SMOL
    s = out["summary"]
    assert s["errors"] == 0, s["error_kinds"]
    assert s["completed"] == s["num_requests"] == 4 and s["concurrency"] == 2
    assert s["total_output_tokens"] > 0 and s["output_tokens_from"] == "usage"
    assert s["total_input_tokens"] > 0
    assert s["request_throughput"] > 0 and s["output_throughput"] > 0 and s["duration_s"] > 0
    for row in out["requests"]:
        assert row["ok"] and row["output_tokens"] > 0 and row["finish_reason"] in ("stop", "length")
        assert 0 < row["ttft_ms"] <= row["e2el_ms"]
        assert row["output_tokens"] <= 16 + 1  # xnb's usage may count the end-of-generation token
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        d = s[metric]
        assert d["median"] is not None and 0 <= d["median"] <= d["p99"]
    assert s["ttft_ms"]["median"] <= s["e2el_ms"]["median"]
    paths = bench.write_reports({"tool": "test", "config": {"model": SMOL}, "num_prompts": 4, "runs": [out]}, tmp_path)
    assert json.loads(paths["json"].read_text())["runs"][0]["summary"]["completed"] == 4
    assert "| 2 | inf | 4 | 0 |" in paths["md"].read_text()


def test_cli_finds_the_local_cluster_and_writes_reports(xnb_local: tuple[str, Path, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    _, home, _ = xnb_local
    env = {**os.environ, "XNB_HOME": str(home)}  # the base URL comes from the runtime file
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "xnb.cli", "bench", "-c", "1,2", "-n", "4", "--max-tokens", "6", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "bench.json").read_text())
    assert [r["summary"]["concurrency"] for r in report["runs"]] == [1, 2]
    assert all(r["summary"]["errors"] == 0 and r["summary"]["completed"] == 4 for r in report["runs"])
    assert report["config"]["model"] == SMOL
    assert (out / "bench.md").exists() and "| 2 | inf | 4 | 0 |" in proc.stdout
    if (out / "bench.png").exists():
        assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_ctrl_c_stops_xnb_local_cleanly(xnb_local: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    """Ctrl-C signals the terminal's whole process group: the API, then the cluster and
    its workers stop in order, with no traceback, and the runtime file goes.  (Last in
    this module: it stops the shared `xnb local`.)"""
    _, home, proc = xnb_local
    runtime = home / "runtime" / "cluster.json"
    assert runtime.exists()
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the embedded cluster's worker processes"
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    log = (home / "local.log").read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log, log[-3000:]
    assert not runtime.exists()

    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    wait_until(lambda: not any(alive(c) for c in children), timeout=30, what="the worker processes to exit")
