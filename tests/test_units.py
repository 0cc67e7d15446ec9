"""Fast unit tests of xnb's pure parts: placement, model status, stop strings and
UTF-8 decoding, the error tree, OpenAI request validation and OpenAI response shapes.

Nothing here starts a cluster or loads a model.
"""

from __future__ import annotations

import base64
import codecs
import pickle

import numpy as np
import pytest

# The catalog first: importing xnb.engines before xnb.catalog runs into their import cycle.
import xnb.catalog  # noqa: F401
from xnb import errors as E
from xnb.engines.text import StopChecker, Utf8Decoder
from xnb.openai.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse_request,
)
from xnb.openai.shapes import (
    ChunkBuilder,
    chat_completion,
    collect_choices,
    completion,
    embedding_list,
)
from xnb.runtime.placement import (
    MB,
    Needs,
    PlacedReplica,
    Placement,
    WorkerView,
    estimate_memory,
    place,
)
from xnb.protocol import ModelStatus

GB = 1024 * MB


# -- placement -------------------------------------------------------------------------------


def _w(addr: str, *, mem: int = 0, gpus: tuple[int, ...] = (), placed: tuple = (), name: str = "",
       nthreads: int = 2) -> WorkerView:
    return WorkerView(address=addr, nthreads=nthreads, memory_limit=mem, gpus=gpus, placed=placed, name=name)


def _count(placements: list[Placement]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in placements:
        out[p.worker] = out.get(p.worker, 0) + 1
    return out


def test_place_spreads_replicas_across_workers():
    workers = [_w("tcp://a:1", mem=8 * GB), _w("tcp://b:1", mem=8 * GB), _w("tcp://c:1", mem=8 * GB)]
    placements = place(workers, Needs(memory=1 * GB), 3)
    assert sorted(p.worker for p in placements) == ["tcp://a:1", "tcp://b:1", "tcp://c:1"]
    assert all(p.gpus == () for p in placements)


def test_place_spreads_a_models_replicas_whatever_else_runs_there():
    # Worker a already hosts another model; b is empty but has less free memory. The two
    # replicas of the new model still go one to each (it failed after a scheduler restart,
    # when the other model was restored first: both replicas went to a).
    other = (PlacedReplica("solo", 1 * GB),)
    workers = [_w("tcp://a:1", mem=16 * GB, placed=other), _w("tcp://b:1", mem=4 * GB)]
    placements = place(workers, Needs(memory=1 * GB), 2, uid="pair")
    assert _count(placements) == {"tcp://a:1": 1, "tcp://b:1": 1}
    # Scaling up counts the model's replicas already running: the third goes where it has fewest.
    mine = (PlacedReplica("pair", 1 * GB),)
    workers = [_w("tcp://a:1", mem=16 * GB, placed=other + mine), _w("tcp://b:1", mem=16 * GB, placed=mine),
               _w("tcp://c:1", mem=16 * GB, placed=other + other)]
    assert _count(place(workers, Needs(memory=1 * GB), 1, uid="pair")) == {"tcp://c:1": 1}


def test_place_only_on_workers_that_announced_the_engine():
    from dataclasses import replace

    llama = replace(_w("tcp://a:1", mem=8 * GB), engines=("llama-cpp", "echo"))
    vllm = replace(_w("tcp://b:1", mem=8 * GB), engines=("vllm",))
    silent = _w("tcp://c:1", mem=8 * GB)  # announced nothing: may run anything
    placements = place([llama, vllm, silent], Needs(memory=1 * GB, engine="vllm"), 2)
    assert sorted(p.worker for p in placements) == ["tcp://b:1", "tcp://c:1"]
    with pytest.raises(E.PlacementFailed, match="cannot run the vllm engine"):
        place([llama], Needs(memory=1 * GB, engine="vllm"), 1)


def test_place_prefers_the_worker_hosting_fewer_replicas():
    busy = _w("tcp://a:1", mem=8 * GB, placed=(PlacedReplica("m1", 1 * GB), PlacedReplica("m2", 1 * GB)))
    idle = _w("tcp://b:1", mem=8 * GB)
    assert [p.worker for p in place([busy, idle], Needs(memory=1 * GB), 1)] == ["tcp://b:1"]
    # Several replicas of one model spread first (one worker lost must not take them all);
    # the idle worker takes the odd one.
    assert _count(place([busy, idle], Needs(memory=1 * GB), 2)) == {"tcp://a:1": 1, "tcp://b:1": 1}
    assert _count(place([busy, idle], Needs(memory=1 * GB), 3)) == {"tcp://a:1": 1, "tcp://b:1": 2}


def test_place_ties_break_on_free_memory_then_address():
    small = _w("tcp://a:1", mem=4 * GB)
    large = _w("tcp://b:1", mem=16 * GB)
    assert place([small, large], Needs(memory=1 * GB), 1)[0].worker == "tcp://b:1"
    same = [_w("tcp://z:1", mem=4 * GB), _w("tcp://m:1", mem=4 * GB)]
    assert place(same, Needs(memory=1 * GB), 1)[0].worker == "tcp://m:1"


def test_place_more_replicas_than_workers_round_robins():
    workers = [_w("tcp://a:1", mem=64 * GB), _w("tcp://b:1", mem=64 * GB)]
    placements = place(workers, Needs(memory=1 * GB), 5)
    assert len(placements) == 5
    assert sorted(_count(placements).values()) == [2, 3]


def test_place_respects_memory_limits_and_explains_per_worker():
    # a has room for exactly one 1 GB replica; b for two; c none.
    workers = [
        _w("tcp://a:1", mem=int(1.5 * GB)),
        _w("tcp://b:1", mem=int(2.5 * GB)),
        _w("tcp://c:1", mem=4 * GB, placed=(PlacedReplica("big", int(3.5 * GB)),)),
    ]
    placements = place(workers, Needs(memory=1 * GB), 3)
    assert _count(placements) == {"tcp://a:1": 1, "tcp://b:1": 2}
    with pytest.raises(E.PlacementFailed) as info:
        place(workers, Needs(memory=1 * GB), 4)
    msg = info.value.message
    assert "(3 of 4 placed)" in msg
    for addr in ("tcp://a:1", "tcp://b:1", "tcp://c:1"):
        assert addr in msg  # a reason for every worker
    assert "needs ~1024 MB" in msg
    assert info.value.status == 409


def test_place_unknown_memory_limit_is_unlimited():
    placements = place([_w("tcp://a:1", mem=0)], Needs(memory=500 * GB), 3)
    assert _count(placements) == {"tcp://a:1": 3}


def test_place_gpus_free_and_busy():
    gpu = _w("tcp://g:1", gpus=(0, 1), placed=(PlacedReplica("m", 0, (0,)),))
    cpu = _w("tcp://c:1")
    (p,) = place([gpu, cpu], Needs(gpus=1), 1)
    assert p == Placement("tcp://g:1", (1,))
    # The next replica needing a GPU has none left.
    with pytest.raises(E.PlacementFailed) as info:
        place([gpu, cpu], Needs(gpus=1), 2)
    msg = info.value.message
    assert "tcp://c:1: has no GPU" in msg
    assert "tcp://g:1: needs 1 free GPU(s), has 0" in msg
    assert "(1 of 2 placed)" in msg
    # Two GPUs at once on a worker with two free.
    (p,) = place([_w("tcp://g:1", gpus=(0, 1))], Needs(gpus=2), 1)
    assert p.gpus == (0, 1)


def test_place_pins_to_a_worker_by_address_or_name():
    workers = [_w("tcp://a:1", name="0"), _w("tcp://b:1", name="1")]
    assert {p.worker for p in place(workers, Needs(), 3, pin_workers=["tcp://b:1"])} == {"tcp://b:1"}
    assert {p.worker for p in place(workers, Needs(), 2, pin_workers=["0"])} == {"tcp://a:1"}
    with pytest.raises(E.PlacementFailed, match=r"unknown worker\(s\) tcp://nope:1"):
        place(workers, Needs(), 1, pin_workers=["tcp://nope:1"])


def test_place_pins_gpus():
    w = _w("tcp://g:1", gpus=(0, 1, 2), placed=(PlacedReplica("m", 0, (0,)),))
    assert place([w], Needs(gpus=1), 1, pin_gpus=[2])[0].gpus == (2,)
    with pytest.raises(E.PlacementFailed, match="already uses GPU 0"):
        place([w], Needs(gpus=1), 1, pin_gpus=[0])
    with pytest.raises(E.PlacementFailed, match="does not have GPU 7"):
        place([w], Needs(gpus=1), 1, pin_gpus=[7])
    with pytest.raises(E.PlacementFailed, match=r"asked for 2 GPU\(s\) but pinned 1"):
        place([w], Needs(gpus=2), 1, pin_gpus=[1])
    # Pinned GPU 1 on two workers: one replica each (the pinned GPU is busy after the first).
    two = [_w("tcp://a:1", gpus=(0, 1)), _w("tcp://b:1", gpus=(0, 1))]
    placements = place(two, Needs(gpus=1), 2, pin_gpus=[1])
    assert sorted((p.worker, p.gpus) for p in placements) == [("tcp://a:1", (1,)), ("tcp://b:1", (1,))]
    with pytest.raises(E.PlacementFailed, match="already uses GPU 1"):
        place(two, Needs(gpus=1), 3, pin_gpus=[1])


def test_place_impossible_requests():
    with pytest.raises(E.PlacementFailed, match="no workers"):
        place([], Needs(), 1)
    with pytest.raises(E.PlacementFailed, match="at least 1"):
        place([_w("tcp://a:1")], Needs(), 0)
    workers = [_w("tcp://a:1", mem=1 * GB), _w("tcp://b:1", mem=2 * GB, gpus=(0,))]
    with pytest.raises(E.PlacementFailed) as info:
        place(workers, Needs(memory=4 * GB), 1)
    msg = info.value.message
    assert "tcp://a:1: needs ~4096 MB, has 1024 MB free of 1024 MB" in msg
    assert "tcp://b:1: needs ~4096 MB, has 2048 MB free of 2048 MB" in msg
    assert "placed)" not in msg  # nothing was placed


def test_estimate_memory_grows_with_weights_and_context():
    base = estimate_memory(100)
    assert base > 100 * MB
    assert estimate_memory(200) > base
    assert estimate_memory(100, context_tokens=8192) > base
    assert estimate_memory(None) == 64 * MB


# -- model status ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statuses, expected",
    [
        ([], "stopped"),
        (["ready"], "ready"),
        (["ready", "ready"], "ready"),
        (["ready", "loading"], "ready"),
        (["ready", "stopped"], "ready"),
        (["ready", "lost"], "degraded"),
        (["ready", "error"], "degraded"),
        (["ready", "lost", "error", "ready"], "degraded"),
        (["launching"], "launching"),
        (["loading", "launching"], "launching"),
        (["loading", "downloading"], "downloading"),
        (["loading", "loading"], "loading"),
        (["loading", "error"], "loading"),
        (["downloading", "lost"], "downloading"),
        (["lost"], "lost"),
        (["lost", "error"], "lost"),
        (["error"], "error"),
        (["error", "error"], "error"),
        (["unloaded"], "unloaded"),
        (["unloaded", "unloaded"], "unloaded"),
        (["unloaded", "ready"], "ready"),
        (["unloaded", "lost"], "degraded"),
        (["unloaded", "loading"], "unloaded"),
    ],
)
def test_model_status(statuses, expected):
    assert ModelStatus.of_replicas(statuses) == expected


@pytest.mark.parametrize("statuses", [[], ["ready"], ["lost"], ["error"], ["loading", "ready"]])
def test_model_status_terminating_wins(statuses):
    assert ModelStatus.of_replicas(statuses, terminating=True) == "terminating"


# -- StopChecker and Utf8Decoder ---------------------------------------------------------------


def _run_stops(stops: list[str], deltas: list[str]) -> tuple[str, bool, list[str]]:
    checker = StopChecker(stops)
    out, emitted = [], []
    for d in deltas:
        safe, stopped = checker.feed(d)
        emitted.append(safe)
        out.append(safe)
        if stopped:
            return "".join(out), True, emitted
    out.append(checker.flush())
    return "".join(out), False, emitted


def test_stop_string_split_across_deltas():
    text, stopped, emitted = _run_stops(["</s>"], ["Hello wor", "ld<", "/s", ">and more"])
    assert (text, stopped) == ("Hello world", True)
    assert emitted == ["Hello wor", "ld", "", ""]  # "<" and "</s" were held back


def test_stop_prefix_held_back_then_released():
    # "ST" may start "STOP": held.  "STA" cannot: released whole.
    checker = StopChecker(["STOP"])
    assert checker.feed("a ST") == ("a ", False)
    assert checker.feed("AY") == ("STAY", False)
    assert checker.flush() == ""
    checker = StopChecker(["STOP"])
    assert checker.feed("end ST") == ("end ", False)
    assert checker.flush() == "ST"  # the end of the generation releases held text


def test_stop_no_stops_passes_through():
    checker = StopChecker([])
    assert checker.feed("anything </s>") == ("anything </s>", False)
    assert StopChecker([""]).feed("x") == ("x", False)


def test_stop_multiple_stops_earliest_wins():
    assert _run_stops(["world", "lo"], ["hello world"])[:2] == ("hel", True)
    assert _run_stops(["\n\n", "END"], ["one END two\n\n"])[:2] == ("one ", True)
    # The earlier stop completes in a later delta than a later-starting one would.
    assert _run_stops(["abcd", "xy"], ["..ab", "cd xy"])[:2] == ("..", True)


def test_stop_overlapping_prefix_restarts():
    assert _run_stops(["ab"], ["a", "a", "b"])[:2] == ("a", True)
    assert _run_stops(["abc"], ["ab", "abc"])[:2] == ("ab", True)


def test_utf8_decoder_joins_multibyte_characters_split_across_pieces():
    d = Utf8Decoder()
    assert d.feed(b"caf\xc3") == "caf"
    assert d.feed(b"\xa9!") == "\u00e9!"
    emoji = "\U0001F600".encode()
    assert [d.feed(emoji[i:i + 1]) for i in range(4)] == ["", "", "", "\U0001F600"]
    assert d.feed(b"ab\xe2\x82") == "ab"
    assert d.feed(b"\xac") == "\u20ac"
    assert d.flush() == ""


def test_utf8_decoder_every_split_of_valid_text_round_trips():
    text = "h\u00e9llo \u20ac \U0001F600 \u65e5\u672c z"
    data = text.encode()
    for a in range(len(data) + 1):
        for b in range(a, len(data) + 1):
            d = Utf8Decoder()
            out = d.feed(data[:a]) + d.feed(data[a:b]) + d.feed(data[b:]) + d.flush()
            assert out == text, (a, b)


def test_utf8_decoder_flush_replaces_an_incomplete_tail():
    d = Utf8Decoder()
    assert d.feed(b"x\xe2\x82") == "x"
    assert d.flush() == "\ufffd"


def test_utf8_decoder_output_does_not_depend_on_how_invalid_bytes_are_split():
    # A model can emit invalid UTF-8 (a stray byte); text after it must still decode the same
    # however the bytes are split into pieces — like Python's incremental decoder does.
    pieces = [b"\xff", b"abc\xc3", b"\xa9"]
    reference = codecs.getincrementaldecoder("utf-8")(errors="replace")
    expected = "".join(reference.decode(p) for p in pieces) + reference.decode(b"", final=True)
    assert expected == b"".join(pieces).decode("utf-8", errors="replace") == "\ufffdabc\u00e9"
    d = Utf8Decoder()
    assert "".join(d.feed(p) for p in pieces) + d.flush() == expected


# -- errors ------------------------------------------------------------------------------------

ERROR_CLASSES = [getattr(E, name) for name in E.__all__ if name not in ("error_from_dict", "NextStep")]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_error_round_trip_keeps_class_status_param_extra(cls):
    err = cls("something went wrong", param="messages", retry_after=7, sources=["a", "b"])
    data = err.to_dict()
    assert data == {"kind": cls.__name__, "message": "something went wrong", "param": "messages",
                    "next_step": None, "extra": {"retry_after": 7, "sources": ["a", "b"]}}
    for back in (E.error_from_dict(data), pickle.loads(pickle.dumps(err))):
        assert type(back) is cls
        assert back.status == cls.status
        assert back.message == "something went wrong"
        assert str(back) == "something went wrong"
        assert back.param == "messages"
        assert back.extra == {"retry_after": 7, "sources": ["a", "b"]}
        assert back.openai_body() == err.openai_body()


def test_next_step_renders_per_front_end_and_crosses_dask():
    step = E.NextStep("events", ("m1",), "shows what happened")
    err = E.LaunchFailed("model 'm1' failed to launch: no file", next_step=step)
    assert err.render("cli") == err.message == str(err) == (
        "model 'm1' failed to launch: no file; `xnb events m1` shows what happened")
    assert err.render("notebook") == "model 'm1' failed to launch: no file; %xnb events m1 shows what happened"
    assert err._render_traceback_() == ["LaunchFailed: " + err.render("notebook")]
    assert err.openai_body()["error"]["message"] == err.message  # HTTP: the terminal form
    for back in (E.error_from_dict(err.to_dict()), pickle.loads(pickle.dumps(err))):
        assert type(back) is E.LaunchFailed and back.next_step == step and back.reason == err.reason



def test_error_statuses_and_openai_body():
    expected = {
        E.InvalidRequest: 400, E.UnsupportedParameter: 400, E.AuthenticationFailed: 401,
        E.PermissionDenied: 403, E.NotFound: 404, E.ModelNotFound: 404, E.CatalogEntryNotFound: 404,
        E.Conflict: 409, E.DuplicateModel: 409, E.PlacementFailed: 409, E.QueueFull: 429,
        E.ModelNotReady: 503, E.ReplicaLost: 503, E.ClusterUnavailable: 503, E.LaunchFailed: 500,
        E.EngineError: 500, E.XnbError: 500,
    }
    for cls, status in expected.items():
        assert cls.status == status, cls
    body = E.ModelNotFound("no model 'x'", param="model").openai_body()
    assert body == {"error": {"message": "no model 'x'", "type": "not_found_error", "param": "model",
                              "code": "model_not_found"}}
    assert E.QueueFull("full", retry_after=3).retry_after == 3
    assert E.QueueFull("full").retry_after == 1


def test_error_from_unknown_kind_is_the_base_class():
    err = E.error_from_dict({"kind": "NoSuchError", "message": "m", "param": None, "extra": None})
    assert type(err) is E.XnbError
    assert err.message == "m" and err.extra == {}


# -- OpenAI requests ---------------------------------------------------------------------------


def _chat(**body):
    return parse_request(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body})


def test_chat_unknown_fields_are_refused_by_name():
    with pytest.raises(E.InvalidRequest) as info:
        _chat(frobnicate=1, zeta=True)
    assert "frobnicate" in info.value.message and "zeta" in info.value.message
    assert info.value.status == 400
    # Fields that change nothing are accepted.
    body = _chat(user="u1", store=False, metadata={"a": "b"})
    assert body.to_generate().messages == [{"role": "user", "content": "hi"}]


def test_chat_content_parts_are_joined():
    body = _chat(messages=[{"role": "user", "content": [{"type": "text", "text": "Hello "},
                                                         {"type": "text", "text": "world"}]}])
    assert body.to_generate().messages == [{"role": "user", "content": "Hello world"}]


def test_chat_image_parts_are_unsupported():
    body = _chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]}])
    with pytest.raises(E.UnsupportedParameter) as info:
        body.to_generate()
    assert info.value.param == "messages"
    assert "image_url" in info.value.message
    assert info.value.status == 400


def test_chat_roles():
    body = _chat(messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert body.to_generate().messages[0] == {"role": "system", "content": "Be brief."}
    with pytest.raises(E.InvalidRequest, match="role"):
        _chat(messages=[{"role": "wizard", "content": "x"}]).to_generate()
    with pytest.raises(E.InvalidRequest, match="tool_call_id"):
        _chat(messages=[{"role": "tool", "content": "42"}]).to_generate()
    with pytest.raises(E.InvalidRequest, match="at least one message"):
        _chat(messages=[]).to_generate()


def test_chat_response_format_mapping():
    assert _chat().to_generate().params.json_schema is None
    assert _chat(response_format={"type": "text"}).to_generate().params.json_schema is None
    assert _chat(response_format={"type": "json_object"}).to_generate().params.json_schema == {}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert _chat(response_format=fmt).to_generate().params.json_schema == schema
    with pytest.raises(E.InvalidRequest) as info:
        _chat(response_format={"type": "yaml"}).to_generate()
    assert info.value.param == "response_format"
    with pytest.raises(E.InvalidRequest):
        _chat(response_format={"type": "json_schema", "json_schema": "nope"}).to_generate()


def test_chat_stop_forms_and_limit():
    assert _chat(stop="END").to_generate().params.stop == ["END"]
    assert _chat(stop=["a", "b"]).to_generate().params.stop == ["a", "b"]
    assert _chat().to_generate().params.stop == []
    assert _chat(stop=["1", "2", "3", "4"]).to_generate().params.stop == ["1", "2", "3", "4"]
    with pytest.raises(E.InvalidRequest) as info:
        _chat(stop=["1", "2", "3", "4", "5"])
    assert info.value.param == "stop"
    assert "4" in info.value.message


def test_chat_logprobs_parsed():
    params = _chat(logprobs=True, top_logprobs=5).to_generate().params
    assert params.logprobs and params.top_logprobs == 5
    assert not _chat(logprobs=False).to_generate().params.logprobs
    with pytest.raises(E.InvalidRequest, match="top_logprobs"):
        _chat(top_logprobs=2)


def test_chat_max_completion_tokens_wins():
    assert _chat(max_tokens=10).to_generate().params.max_tokens == 10
    assert _chat(max_completion_tokens=20).to_generate().params.max_tokens == 20
    assert _chat(max_tokens=10, max_completion_tokens=20).to_generate().params.max_tokens == 20


def test_chat_sampling_params_and_ranges():
    params = _chat(temperature=0.5, top_p=0.9, seed=3, top_k=40, presence_penalty=0.1,
                   logit_bias={"15": -100}).to_generate().params
    assert (params.temperature, params.top_p, params.seed, params.top_k) == (0.5, 0.9, 3, 40)
    assert params.logit_bias == {15: -100.0}
    with pytest.raises(E.InvalidRequest) as info:
        _chat(temperature=3)
    assert info.value.param == "temperature"
    with pytest.raises(E.InvalidRequest) as info:
        _chat(n=17)
    assert info.value.param == "n"
    with pytest.raises(E.InvalidRequest, match="token ids"):
        _chat(logit_bias={"hello": 1}).to_generate()
    assert _chat(stream=True, stream_options={"include_usage": True}).include_usage
    assert not _chat(stream=True).include_usage


def test_completion_request():
    body = parse_request(CompletionRequest, {"model": "m", "prompt": ["a", "b"], "n": 2, "echo": True})
    reqs = body.to_generate()
    assert [r.prompt for r in reqs] == ["a", "b"]
    assert all(r.kind == "completion" and r.n == 2 and r.echo for r in reqs)
    assert reqs[0].params.max_tokens == 16  # OpenAI's default for completions
    single = parse_request(CompletionRequest, {"model": "m", "prompt": "x", "max_tokens": 5}).to_generate()
    assert len(single) == 1 and single[0].params.max_tokens == 5
    for bad, what in (({"suffix": "s"}, "suffix"), ({"best_of": 3}, "best_of"), ({"prompt": []}, "empty"),
                      ({"foo": 1}, "foo")):
        with pytest.raises(E.InvalidRequest, match=what):
            parse_request(CompletionRequest, {"model": "m", "prompt": "x", **bad})


def test_embedding_request():
    body = parse_request(EmbeddingRequest, {"model": "m", "input": "one"})
    assert body.texts == ["one"]
    assert parse_request(EmbeddingRequest, {"model": "m", "input": ["a", "b"]}).texts == ["a", "b"]
    with pytest.raises(E.InvalidRequest) as info:
        parse_request(EmbeddingRequest, {"model": "m", "input": "x", "pooling": "cls"})
    assert "pooling" in info.value.message
    with pytest.raises(E.InvalidRequest) as info:
        parse_request(EmbeddingRequest, {"model": "m", "input": "x", "encoding_format": "hex"})
    assert info.value.param == "encoding_format"
    with pytest.raises(E.InvalidRequest, match="empty"):
        _ = parse_request(EmbeddingRequest, {"model": "m", "input": ["a", ""]}).texts
    with pytest.raises(E.InvalidRequest, match="empty"):
        _ = parse_request(EmbeddingRequest, {"model": "m", "input": []}).texts


# -- OpenAI shapes -----------------------------------------------------------------------------


def test_chunk_builder_chat_first_chunk_has_role_then_content_then_finish():
    b = ChunkBuilder(kind="chat", model="m", include_usage=False)
    chunks = b.chunks([(0, "Hel", None), (0, "lo", None)]) + b.chunks([(0, "", "length")])
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * 3
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "Hel"}, {"content": "lo"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert all(c["model"] == "m" and c["choices"][0]["index"] == 0 for c in chunks)
    assert b.usage_chunk({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}) is None


def test_chunk_builder_chat_text_and_finish_in_one_delta_and_abort():
    b = ChunkBuilder(kind="chat", model="m")
    chunks = b.chunks([(0, "Hi", "stop"), (1, "", "abort")])
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"])
            for c in chunks] == [
        (0, {"role": "assistant", "content": "Hi"}, None),
        (0, {}, "stop"),
        (1, {"role": "assistant", "content": ""}, None),
        (1, {}, "stop"),  # "abort" is internal; OpenAI clients see "stop"
    ]


def test_chunk_builder_usage_chunk_only_with_include_usage():
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    b = ChunkBuilder(kind="chat", model="m", include_usage=True)
    b.chunks([(0, "x", "stop")])
    final = b.usage_chunk(usage)
    assert final["choices"] == [] and final["usage"] == usage
    assert final["object"] == "chat.completion.chunk"
    c = ChunkBuilder(kind="completion", model="m", include_usage=True)
    chunks = c.chunks([(0, "a", None), (1, "b", None), (0, "", "length"), (1, "", None)])
    assert [(x["object"], x["choices"][0]["index"], x["choices"][0]["text"], x["choices"][0]["finish_reason"])
            for x in chunks] == [("text_completion", 0, "a", None), ("text_completion", 1, "b", None),
                                 ("text_completion", 0, "", "length")]
    final = c.usage_chunk(usage)
    assert final["object"] == "text_completion" and final["choices"] == [] and final["usage"] == usage
    assert ChunkBuilder(kind="completion", model="m").usage_chunk(usage) is None


def test_collect_choices():
    deltas = [(0, "a", None), (1, "x", None), (0, "b", None), (1, "y", "stop"), (0, "", "length")]
    assert collect_choices(deltas, 2) == [("ab", "length", None), ("xy", "stop", None)]
    assert collect_choices([], 2) == [("", None, None), ("", None, None)]
    assert collect_choices([(2, "late", "stop", None)], 1) == [("", None, None), ("", None, None),
                                                               ("late", "stop", None)]


def test_full_response_shapes():
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    chat = chat_completion(id="chatcmpl-1", model="m", created=1, choices=[("hi", "length"), ("yo", None)],
                           usage=usage)
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": None},
                                  "logprobs": None, "finish_reason": "length"}
    assert chat["choices"][1]["finish_reason"] == "stop"
    assert chat["usage"] == usage
    comp = completion(id="cmpl-1", model="m", created=1, choices=[("t", "abort")], usage=usage)
    assert comp["object"] == "text_completion"
    assert comp["choices"] == [{"index": 0, "text": "t", "logprobs": None, "finish_reason": "stop"}]


def test_embedding_list_float_and_base64_round_trip():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3, 16)).astype(np.float32)
    out = embedding_list(model="m", vectors=vectors, prompt_tokens=9, encoding_format="base64")
    assert out["object"] == "list" and out["model"] == "m"
    assert out["usage"] == {"prompt_tokens": 9, "total_tokens": 9}
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    for d, vec in zip(out["data"], vectors):
        assert d["object"] == "embedding"
        decoded = np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
        assert decoded.shape == (16,)
        assert np.array_equal(decoded, vec)
    floats = embedding_list(model="m", vectors=vectors, prompt_tokens=9)
    assert np.array_equal(np.asarray([d["embedding"] for d in floats["data"]], dtype=np.float32), vectors)
