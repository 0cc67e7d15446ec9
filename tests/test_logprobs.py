"""Token logprobs on the llama.cpp engine are the model's own: the same numbers come out of
llama.cpp's high-level ``Llama`` evaluating the same tokens in this process with
``logits_all`` (its raw logits, log-softmaxed here), and the API shapes carry them."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest
from helpers_llama import chat, make_engine, run_one, smol_path

from xnb.engines.logprobs import as_token_logprob

#: Two evaluations of the same tokens by different llama.cpp call shapes (xnb's
#: 32-row prompt chunks vs Llama's one call) round differently in the last bits.
TOLERANCE = 1e-3


def log_softmax(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float64)
    return row - (row.max() + np.log(np.exp(row - row.max()).sum()))


@pytest.fixture(scope="module")
def engine():
    eng = make_engine(max_num_seqs=2, n_ctx=512)
    yield eng
    eng.unload()


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_llama_logprobs_are_the_models_own(engine, temperature: float) -> None:
    request = chat("Name three colours of the rainbow.", max_tokens=10, temperature=temperature, seed=7,
                   logprobs=True, top_logprobs=5)
    run = run_one(engine, request)
    tokens = [as_token_logprob(t) for _, _, _, lps in run.items if lps for t in lps]
    assert len(tokens) == run.usage["completion_tokens"] == 10
    assert "".join(bytes(t.bytes).decode("utf-8", "replace") for t in tokens) == run.text

    prompt = engine.tokenize_prompt(engine.prompt_text(request))
    ref = llama_cpp.Llama(model_path=str(smol_path()), n_ctx=512, n_threads=1, logits_all=True,
                          flash_attn=True, verbose=False)
    try:
        ref.eval(prompt)
        for pos, served in enumerate(tokens):
            expected = log_softmax(np.array(ref.scores[ref.n_tokens - 1]))
            best = np.argsort(-expected)[:5]
            # the served top-5: same tokens, same order, same values
            assert [t.bytes for t in served.top] == [list(ref.detokenize([int(i)], special=False)) for i in best]
            np.testing.assert_allclose([t.logprob for t in served.top], expected[best], atol=TOLERANCE)
            # the sampled token: find its id by its bytes among the plausible ones
            candidates = [int(i) for i in np.argsort(-expected)[:200]
                          if list(ref.detokenize([int(i)], special=False)) == served.bytes]
            assert candidates, f"position {pos}: served token {served.token!r} is not among the model's top 200"
            assert abs(served.logprob - expected[candidates[0]]) <= TOLERANCE
            if temperature == 0.0:
                assert candidates[0] == int(best[0])  # greedy takes the model's most likely token
            ref.eval([candidates[0]])
    finally:
        ref.close()


def test_no_logprobs_unless_asked(engine) -> None:
    run = run_one(engine, chat("Hi", max_tokens=4, temperature=0))
    assert all(lps is None for *_, lps in run.items)
    run = run_one(engine, chat("Hi", max_tokens=4, temperature=0, logprobs=True))
    tokens = [as_token_logprob(t) for *_, lps in run.items if lps for t in lps]
    assert len(tokens) == 4 and all(t.top == [] and t.logprob <= 0 for t in tokens)


# -- through the API (the session sidecar, the openai SDK) -------------------------------------

CHAT = [{"role": "user", "content": "Write one sentence about the sea."}]


def test_chat_logprobs_streamed_and_not(oai) -> None:
    full = oai.chat.completions.create(model="smol", messages=CHAT, max_tokens=10, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = full.choices[0].logprobs.content
    assert len(content) == full.usage.completion_tokens == 10
    assert b"".join(bytes(t.bytes) for t in content).decode() == full.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        assert t.token == t.top_logprobs[0].token and t.logprob == t.top_logprobs[0].logprob  # greedy
    chunks = list(oai.chat.completions.create(model="smol", messages=CHAT, max_tokens=10, temperature=0,
                                              logprobs=True, top_logprobs=3, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    np.testing.assert_allclose([t.logprob for t in streamed], [t.logprob for t in content], atol=1e-4)
    plain = oai.chat.completions.create(model="smol", messages=CHAT, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_streamed_and_not(oai) -> None:
    full = oai.completions.create(model="smol", prompt="The sea is", max_tokens=6, temperature=0, logprobs=2)
    lp = full.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == full.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    assert all(len(top) <= 2 and max(top.values()) == lp.token_logprobs[i] for i, top in enumerate(lp.top_logprobs))
    chunks = list(oai.completions.create(model="smol", prompt="The sea is", max_tokens=6, temperature=0,
                                         logprobs=2, stream=True))
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    offsets = [o for c in chunks if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert tokens == lp.tokens and offsets == lp.text_offset
