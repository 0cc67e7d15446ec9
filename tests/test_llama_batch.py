"""The llama.cpp engine in-process (no cluster): continuous batching on the real SmolLM2 GGUF.

Greedy requests must give the same text alone and in a batch, an abort or a sequence
that runs out of context must not disturb the others, KV cells (read from llama.cpp)
must be returned, prefixes reused, seeds honoured and JSON schemas enforced.
"""

from __future__ import annotations

import json

import llama_cpp
import pytest
from helpers_llama import SMOL, chat, make_engine, run_one, run_together, smol_path, submit

from xnb.catalog import Catalog
from xnb.engines import get_engine
from xnb.engines.base import GenerateRequest, ReplicaResources, SamplingParams, Sink
from xnb.errors import InvalidRequest, LaunchFailed

GRID = 2  # reuse leaves the last 2 prompt tokens to evaluate

TOPICS = ["a cat", "the sea", "a robot", "winter", "coffee", "a city at night", "mountains", "a library"]
MAX_TOKENS = 48


def poem(topic: str, **params):
    return chat(f"Write a short poem about {topic}.", **{"max_tokens": MAX_TOKENS, "temperature": 0, **params})


# A long, fixed system prompt (a few hundred tokens) for the prefix-reuse tests.
SYSTEM = "You are the librarian of a small town. Follow these house rules when you answer.\n" + "\n".join(
    f"Rule {i}: books about {subject} are kept on shelf {i}, and may be borrowed for {i + 6} days."
    for i, subject in enumerate(
        ["birds", "boats", "castles", "deserts", "engines", "forests", "gardens", "harbours",
         "islands", "jungles", "kites", "lighthouses", "mountains", "novels", "oceans", "planets"],
        start=1,
    )
)


@pytest.fixture(scope="module")
def engine():
    """Eight slots of 1024 tokens, prefix cache on (the defaults otherwise)."""
    eng = make_engine(max_num_seqs=8, n_ctx=1024)
    yield eng
    eng.unload()


@pytest.fixture(scope="module")
def solo(engine):
    """Each topic's greedy answer, run one at a time."""
    return {t: run_one(engine, poem(t)) for t in TOPICS}


@pytest.fixture(scope="module")
def small_engine():
    """Two slots of only 256 tokens each."""
    eng = make_engine(max_num_seqs=2, n_ctx=256)
    yield eng
    eng.unload()


@pytest.fixture(scope="module")
def nocache_engine():
    eng = make_engine(max_num_seqs=8, n_ctx=512, prefix_cache=False)
    yield eng
    eng.unload()


def _kv_positions(eng) -> list[int]:
    """Highest KV position held by each slot's sequence, asked of llama.cpp directly (-1: empty)."""
    return [llama_cpp.llama_memory_seq_pos_max(eng.scheduler.mem, i) for i in range(len(eng.scheduler.slots))]


def test_concurrent_greedy_equals_sequential(engine, solo):
    runs = run_together(engine, [poem(t) for t in TOPICS])
    for topic, run in zip(TOPICS, runs):
        alone = solo[topic]
        assert run.text == alone.text, topic
        assert run.finish == alone.finish == "length"
        assert run.usage == alone.usage
        assert run.usage["completion_tokens"] == MAX_TOKENS
    stats = engine.stats()
    assert stats["max_batch_seqs"] == 8
    assert stats["running"] == 0 and stats["kv_cells_active"] == 0


def test_the_packaged_q4_1_is_batch_invariant_too():
    """The default launch serves Q8_0 (the tests above); ``-q Q4_1`` serves the packaged file,
    whose matrix products take another path in llama.cpp (row by row)."""
    eng = make_engine(quantization="Q4_1", max_num_seqs=4, n_ctx=512)
    try:
        topics = TOPICS[:4]
        alone = {t: run_one(eng, poem(t, max_tokens=24)) for t in topics}
        runs = run_together(eng, [poem(t, max_tokens=24) for t in topics])
        assert [r.text for r in runs] == [alone[t].text for t in topics]
        assert eng.stats()["max_batch_seqs"] == 4
    finally:
        eng.unload()


def test_abort_mid_stream_leaves_the_others_identical(engine, solo):
    before = engine.stats()["sequences_aborted"]
    others = TOPICS[:3]
    runs = [submit(engine, poem(t)) for t in others[:2]]
    victim = submit(engine, poem("the history of the world", max_tokens=900, ignore_eos=True))
    runs.append(submit(engine, poem(others[2])))
    victim.wait_output()
    victim.sink.cancelled.set()
    engine.abort(victim.sink)
    victim.wait()
    for run in runs:
        run.wait()
    assert victim.finish == "abort"
    assert victim.text  # it was aborted mid-stream, after some text
    assert 0 < victim.usage["completion_tokens"] < 900
    for topic, run in zip(others, runs):
        assert run.text == solo[topic].text, topic
        assert run.finish == "length"
    stats = engine.stats()
    assert stats["sequences_aborted"] == before + 1
    assert stats["running"] == 0 and stats["kv_cells_active"] == 0


def test_context_overflow_ends_with_length_beside_a_normal_request(small_engine):
    eng = small_engine
    assert eng.n_ctx == 256
    short = poem("a cat", max_tokens=24)
    alone = run_one(eng, short)
    long_req = chat("Tell me everything you know about the history of bread, in great detail.",
                    max_tokens=500, temperature=0, ignore_eos=True)
    long_run, short_run = run_together(eng, [long_req, short])
    assert long_run.finish == "length"
    assert long_run.usage["total_tokens"] == eng.max_len == 256
    assert long_run.usage["completion_tokens"] < 500
    assert short_run.text == alone.text
    assert short_run.finish == alone.finish
    assert short_run.usage == alone.usage
    stats = eng.stats()
    assert stats["running"] == 0 and stats["kv_cells_active"] == 0


def test_prompt_longer_than_the_context_is_refused(small_engine):
    eng = small_engine
    before = eng.stats()
    long_text = " ".join(f"word{i}" for i in range(400))
    sink = Sink()
    with pytest.raises(InvalidRequest) as info:
        eng.submit(chat(long_text, max_tokens=4), sink)
    assert info.value.param == "messages"
    assert "256" in info.value.message
    assert not sink.done and not sink.has_output()
    with pytest.raises(InvalidRequest) as info:
        eng.submit(GenerateRequest(kind="completion", prompt=long_text, params=SamplingParams(max_tokens=4)), Sink())
    assert info.value.param == "prompt"
    after = eng.stats()
    assert after["prompt_tokens"] == before["prompt_tokens"]  # nothing was admitted
    assert after["running"] == after["waiting"] == 0
    # The engine still serves.
    assert run_one(eng, poem("a cat", max_tokens=8)).finish == "length"


def test_kv_cells_are_returned_and_cached_only_with_prefix_cache(nocache_engine, engine, solo):
    eng = nocache_engine
    assert eng.stats()["max_batch_seqs"] < 8
    runs = run_together(eng, [poem(t) for t in TOPICS])
    stats = eng.stats()
    assert stats["max_batch_seqs"] == 8
    assert stats["kv_cells_active"] == 0
    assert stats["kv_cells_cached"] == 0
    # No cache of finished sequences, but requests arriving together share their chat
    # prefix (system prompt, "Write a short poem about") by copying it between slots.
    assert stats["prompt_tokens_reused"] >= 7 * 16
    assert _kv_positions(eng) == [-1] * 8
    # The cache setting does not change greedy output.
    for topic, run in zip(TOPICS, runs):
        assert run.text == solo[topic].text, topic
    # An aborted sequence returns its cells too.
    victim = submit(eng, poem("anything", max_tokens=500, ignore_eos=True))
    victim.wait_output()
    eng.abort(victim.sink)
    victim.wait()
    assert victim.finish == "abort"
    stats = eng.stats()
    assert stats["kv_cells_active"] == stats["kv_cells_cached"] == 0
    assert _kv_positions(eng) == [-1] * 8
    # With the prefix cache, idle slots keep the finished sequences' cells.
    stats = engine.stats()
    assert stats["kv_cells_active"] == 0 and stats["kv_cells_cached"] > 0
    assert max(_kv_positions(engine)) >= 0


def test_prefix_reuse_of_a_shared_system_prompt(engine):
    n_system = len(engine.vocab.tokenize(SYSTEM, add_special=False, parse_special=False))
    assert n_system > 200
    messages = lambda q: [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
    first = run_one(engine, chat(messages("Where are the books about kites?"), max_tokens=8, temperature=0))
    assert first.usage["prompt_tokens"] > n_system
    before = engine.stats()["prompt_tokens_reused"]
    second = run_one(engine, chat(messages("How long may I borrow a novel?"), max_tokens=8, temperature=0))
    reused = engine.stats()["prompt_tokens_reused"] - before
    # The last two prompt tokens are always evaluated again (a one-row chunk would take
    # another attention kernel and change the numbers), so up to GRID - 1 more are recomputed.
    assert reused >= n_system - (GRID - 1)
    assert reused < second.usage["prompt_tokens"]  # the new question itself was evaluated


def test_continued_conversation_reuses_the_first_turn(engine):
    turn1 = [{"role": "user", "content": "Name three colours of the rainbow."}]
    first = run_one(engine, chat(turn1, max_tokens=24, temperature=0))
    turn2 = turn1 + [{"role": "assistant", "content": first.text},
                     {"role": "user", "content": "Which of them is the warmest?"}]
    before = engine.stats()["prompt_tokens_reused"]
    second = run_one(engine, chat(turn2, max_tokens=8, temperature=0))
    reused = engine.stats()["prompt_tokens_reused"] - before
    assert reused >= first.usage["prompt_tokens"] - (GRID - 1)
    assert reused < second.usage["prompt_tokens"]


def test_seeds(engine):
    sampled = lambda seed: poem("a cat", temperature=0.8, seed=seed, max_tokens=24)
    a = run_one(engine, sampled(1))
    b = run_one(engine, sampled(1))
    assert a.text == b.text
    # The same seed in one batch, beside each other, gives the same text again.
    together = run_together(engine, [sampled(1), sampled(1), sampled(2), sampled(3)])
    assert together[0].text == together[1].text == a.text
    assert len({a.text, together[2].text, together[3].text}) >= 2
    assert together[2].text == run_one(engine, sampled(2)).text


def test_json_schema_constrains_the_output(engine):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    run = run_one(engine, chat("Describe a person as JSON with a name and an age.",
                               max_tokens=100, temperature=0, json_schema=schema))
    assert run.finish == "stop"
    data = json.loads(run.text)
    assert set(data) >= {"name", "age"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int)
    # {} means: any JSON object.
    run = run_one(engine, chat("Describe a city as JSON.", max_tokens=100, temperature=0, json_schema={}))
    assert run.finish == "stop"
    assert isinstance(json.loads(run.text), dict)


# -- greedy invariance with long prompts -----------------------------------------------------------
#
# The scheduler's docstring promises that a greedy request gives the same text alone and in a
# batch.  llama.cpp's numerics depend on how a sequence's tokens are split into ubatches, so
# the promise needs each sequence's prompt evaluated in the same chunks whatever else runs.
# The scheduler evaluates prompts on a fixed chunk grid, each chunk in its own call.



def _long(question: str, max_tokens: int):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return chat(messages, max_tokens=max_tokens, temperature=0)


LONG_A = ("Where are the books about kites?", 64)
LONG_B = ("How long may I borrow a novel?", 32)


@pytest.fixture(scope="module")
def long_alone(nocache_engine):
    """The two long-prompt requests, each alone on an engine without prefix cache."""
    return [run_one(nocache_engine, _long(*LONG_A)), run_one(nocache_engine, _long(*LONG_B))]


def test_long_prompts_together_give_the_same_text_as_alone(nocache_engine, long_alone):
    assert run_one(nocache_engine, _long(*LONG_B)).text == long_alone[1].text  # alone is repeatable
    together = run_together(nocache_engine, [_long(*LONG_A), _long(*LONG_B)])
    assert [r.text for r in together] == [r.text for r in long_alone]


def test_concurrent_arrivals_evaluate_a_shared_system_prompt_once(nocache_engine, long_alone):
    # Three requests with the same long system prompt arrive together: the later two wait
    # for the first to evaluate it and copy its cells, and still give their texts alone.
    n_system = len(nocache_engine.vocab.tokenize(SYSTEM, add_special=False, parse_special=False))
    before = nocache_engine.stats()["prompt_tokens_reused"]
    together = run_together(nocache_engine, [_long(*LONG_A), _long(*LONG_B), _long(*LONG_B)])
    reused = nocache_engine.stats()["prompt_tokens_reused"] - before
    assert reused >= 2 * (n_system - 32), (reused, n_system)
    assert [r.text for r in together] == [r.text for r in long_alone] + [long_alone[1].text]


def test_prefix_cache_does_not_change_greedy_output(long_alone):
    # Same options as nocache_engine, prefix cache on.
    eng = make_engine(max_num_seqs=8, n_ctx=512)
    try:
        first = run_one(eng, _long(*LONG_B))
        assert first.text == long_alone[1].text  # nothing cached yet: a full prefill
        again = run_one(eng, _long(*LONG_B))  # the whole prompt is cached
        after_a = [run_one(eng, _long(*LONG_A)), run_one(eng, _long(*LONG_B))]  # system prompt cached
        assert again.usage["prompt_tokens"] == first.usage["prompt_tokens"]
        assert eng.stats()["prompt_tokens_reused"] > 0
        assert [again.text, after_a[0].text, after_a[1].text] == [
            long_alone[1].text, long_alone[0].text, long_alone[1].text]
    finally:
        eng.unload()


@pytest.mark.skipif(llama_cpp.llama_supports_gpu_offload(), reason="this llama-cpp-python build can use GPUs")
def test_a_gpu_replica_on_a_cpu_only_build_fails_instead_of_running_on_the_cpu():
    spec = Catalog().resolve(SMOL, engine="llama-cpp")
    cls = get_engine("llama-cpp")
    engine = cls(spec, smol_path(), cls.Options(), ReplicaResources(threads=1, gpus=[0]))
    with pytest.raises(LaunchFailed, match=r"without GPU support.*-DGGML_CUDA=on.*gpus=0"):
        engine.load()
