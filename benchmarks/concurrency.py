"""Serving many users at once: one replica, default launch options, concurrency 1/4/8/16.

Runs the engines in-process (the same code a model actor runs), each request a
greedy chat stream of a fixed length (``ignore_eos``), all of a level's requests
arriving at once:

* llama.cpp on the default launch's SmolLM2 GGUF (Q8_0, requantized from the packaged
  Q4_1; ``--quantization Q4_1`` for the packaged file), default options (``max_num_seqs``
  chosen from free memory), and, in the same run, the raw multi-sequence rate:
  ``llama_decode`` over 8 sequences called directly (8 prompts evaluated first,
  untimed; then greedy steps of one token per sequence, argmax in numpy), measured
  in ``--rounds`` rounds alternating with the engine's concurrency-8 level (the
  ratio reported is the median round's: this machine's speed drifts by ±15 %
  from one 5-second stretch to the next);
* transformers on the packaged SmolLM2 converted to safetensors
  (``xnb.catalog.convert.packaged_smollm2_safetensors``), float32 on CPU,
  default options.

Ratios are taken within this run (the machine is shared).

    .venv/bin/python benchmarks/concurrency.py [--threads 2] [--levels 1 4 8 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from xnb.catalog import Catalog
from xnb.catalog.files import resolve_files
from xnb.engines import get_engine
from xnb.engines.base import GenerateRequest, ReplicaResources, SamplingParams, Sink
from xnb.settings import XnbSettings

TOPICS = ["a lighthouse", "the desert", "a violin", "winter", "a library", "bread", "trains", "the moon",
          "a garden", "rain", "coffee", "a city at night", "mountains", "friendship", "a cat", "the sea"]


def request(i: int, max_tokens: int) -> GenerateRequest:
    content = f"Write a long poem about {TOPICS[i % len(TOPICS)]} (number {i})."
    return GenerateRequest(kind="chat", messages=[{"role": "user", "content": content}],
                           params=SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))


def run_level(engine: Any, concurrency: int, max_tokens: int, offset: int) -> dict[str, Any]:
    """``concurrency`` requests submitted at once; aggregate tokens/s and TTFT."""
    sinks, firsts, starts = [], [], []
    all_done = threading.Event()

    def watcher(k: int) -> Any:
        def notify() -> None:
            if firsts[k] is None:
                firsts[k] = time.perf_counter()
            if all(s.done for s in sinks):
                all_done.set()
        return notify

    for k in range(concurrency):
        firsts.append(None)
        sinks.append(Sink(1, notify=watcher(k)))
    started = time.perf_counter()
    for k, sink in enumerate(sinks):
        starts.append(time.perf_counter())
        engine.submit(request(offset + k, max_tokens), sink)
    all_done.wait(timeout=900)
    elapsed = time.perf_counter() - started
    assert all(s.done and s.error is None for s in sinks), [s.error for s in sinks]
    tokens = sum(s.usage["completion_tokens"] for s in sinks)
    ttfts = [f - s for f, s in zip(firsts, starts)]
    return {
        "concurrency": concurrency,
        "tokens": tokens,
        "seconds": round(elapsed, 3),
        "tokens_per_s": round(tokens / elapsed, 1),
        "ttft_p50_ms": round(1000 * statistics.median(ttfts), 1),
        "ttft_max_ms": round(1000 * max(ttfts), 1),
    }


def raw_decode_rate(engine: Any, n_seqs: int, steps: int, threads: int) -> float:
    """Tokens/s of bare ``llama_decode`` over ``n_seqs`` sequences, one token each per step."""
    import llama_cpp

    from xnb.engines.llama_native import native_call

    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = 512 * n_seqs
    cparams.n_batch = cparams.n_ubatch = 512
    cparams.n_seq_max = n_seqs
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.kv_unified = False  # as the engine: a KV stream per sequence
    cparams.no_perf = True
    ctx = llama_cpp.llama_init_from_model(engine._model, cparams)
    batch = llama_cpp.llama_batch_init(512, 0, 1)
    n_vocab = engine.vocab.n_tokens
    try:
        last, n_past = [], []
        for s in range(n_seqs):  # prompts, untimed
            tokens = engine.tokenize_prompt(engine.prompt_text(request(100 + s, 1)))
            for j, tok in enumerate(tokens):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = tok, j, 1
                batch.seq_id[j][0], batch.logits[j] = s, int(j == len(tokens) - 1)
            batch.n_tokens = len(tokens)
            assert native_call(llama_cpp.llama_decode, ctx, batch) == 0
            row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            last.append(int(row.argmax()))
            n_past.append(len(tokens))
        started = time.perf_counter()
        for _ in range(steps):
            for s in range(n_seqs):
                batch.token[s], batch.pos[s], batch.n_seq_id[s] = last[s], n_past[s], 1
                batch.seq_id[s][0], batch.logits[s] = s, 1
            batch.n_tokens = n_seqs
            assert native_call(llama_cpp.llama_decode, ctx, batch) == 0
            for s in range(n_seqs):
                row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, s), shape=(n_vocab,))
                last[s] = int(row.argmax())
                n_past[s] += 1
        return n_seqs * steps / (time.perf_counter() - started)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


def bench_llama(args: argparse.Namespace) -> dict[str, Any]:
    spec = Catalog().resolve("smollm2-135m-instruct", engine="llama-cpp", quantization=args.quantization)
    cls = get_engine("llama-cpp")
    path = resolve_files(spec, cache_dir=XnbSettings().cache_dir).path  # as a launch gets it
    print(f"llama.cpp: {spec.quantization} ({path})", flush=True)
    engine = cls(spec, path, cls.Options(), ReplicaResources(threads=args.threads))
    info = engine.load()
    levels, rounds = [], []
    try:
        run_level(engine, 1, 8, 200)  # warm-up
        for i, c in enumerate(args.levels):
            if c != 8:
                levels.append(run_level(engine, c, args.max_tokens, 20 * i))
                print("llama.cpp", levels[-1], flush=True)
                continue
            # Concurrency 8 against the raw rate: rounds of one each, the order alternating,
            # so a slow stretch of the (shared, virtual) machine hits both alike.
            for r in range(args.rounds):
                measured: dict[str, Any] = {}
                for what in (("raw", "engine") if r % 2 == 0 else ("engine", "raw")):
                    if what == "raw":
                        measured["raw"] = round(raw_decode_rate(engine, 8, args.max_tokens, args.threads), 1)
                    else:
                        measured["engine"] = run_level(engine, 8, args.max_tokens, 20 * i + 8 * r)
                measured["ratio"] = round(measured["engine"]["tokens_per_s"] / measured["raw"], 3)
                rounds.append(measured)
                print("llama.cpp c=8 round", r, measured, flush=True)
            best = sorted(rounds, key=lambda m: m["ratio"])[len(rounds) // 2]  # the median round
            levels.append(best["engine"])
        stats = engine.stats()
    finally:
        engine.unload()
    return {"load": info, "levels": levels, "c8_rounds": rounds, "stats": stats}


def bench_transformers(args: argparse.Namespace) -> dict[str, Any]:
    from xnb.catalog.convert import packaged_smollm2_safetensors

    folder = packaged_smollm2_safetensors()
    spec = Catalog().resolve("smollm2-135m-instruct", engine="transformers", fmt="pytorch")
    cls = get_engine("transformers")
    engine = cls(spec, folder, cls.Options(), ReplicaResources(threads=args.threads))
    info = engine.load()
    levels = []
    try:
        run_level(engine, 1, 4, 300)  # warm-up
        for i, c in enumerate(args.levels):
            levels.append(run_level(engine, c, args.tf_max_tokens, 20 * i))
            print("transformers", levels[-1], flush=True)
        stats = engine.stats()
    finally:
        engine.unload()
    return {"load": info, "levels": levels, "stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quantization", default=None,
                        help="llama.cpp weights (default: the catalog's default, Q8_0; or Q4_1)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=96, help="llama.cpp tokens per request")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of raw vs engine at concurrency 8")
    parser.add_argument("--tf-max-tokens", type=int, default=64, help="transformers tokens per request")
    parser.add_argument("--skip", choices=["llama", "transformers"], action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/concurrency.json"))
    args = parser.parse_args()
    started = time.time()
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    if "llama" not in args.skip:
        result["llama"] = bench_llama(args)
    if "transformers" not in args.skip:
        result["transformers"] = bench_transformers(args)
    result["minutes"] = round((time.time() - started) / 60, 2)
    for name in ("llama", "transformers"):
        if name not in result:
            continue
        part = result[name]
        base = part["levels"][0]["tokens_per_s"]
        print(f"\n{name}: max_num_seqs {part['load']['max_num_seqs']} ({part['load'].get('max_num_seqs_source')})")
        print("| concurrency | tokens | tok/s | × c=1 | TTFT p50 ms | TTFT max ms |")
        print("|---|---|---|---|---|---|")
        for lv in part["levels"]:
            print(f"| {lv['concurrency']} | {lv['tokens']} | {lv['tokens_per_s']} | {lv['tokens_per_s'] / base:.2f} "
                  f"| {lv['ttft_p50_ms']} | {lv['ttft_max_ms']} |")
        if part.get("c8_rounds"):
            print("\n| round | raw llama_decode, 8 sequences tok/s | engine c=8 tok/s | engine / raw | TTFT p50 ms |")
            print("|---|---|---|---|---|")
            for r, m in enumerate(part["c8_rounds"]):
                print(f"| {r} | {m['raw']} | {m['engine']['tokens_per_s']} | {m['ratio']:.2f} | "
                      f"{m['engine']['ttft_p50_ms']} |")
            ratios = [m["ratio"] for m in part["c8_rounds"]]
            print(f"engine / raw at c=8: median {statistics.median(ratios):.2f} over {len(ratios)} rounds "
                  f"(the table above shows the median round)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
