"""Reference output from vLLM itself (``vllm.LLM(...).generate``), run with .venv-vllm's python:

    .venv-vllm/bin/python tests/helpers_vllm_ref.py MODEL_FOLDER MAX_MODEL_LEN < prompts.json

stdin: a JSON list of prompts, each ``{"prompt": str, "chat": bool, "max_tokens": int}``
(chat prompts are already rendered and get no extra special tokens, as xnb sends them).
Prints one line ``XNB_REF <json>``: the greedy text for each prompt (vLLM logs to stdout too).
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    folder, max_len = sys.argv[1], int(sys.argv[2])
    prompts = json.load(sys.stdin)
    from vllm import LLM, SamplingParams

    llm = LLM(model=folder, enforce_eager=True, max_model_len=max_len, disable_log_stats=True)
    texts = []
    for p in prompts:
        params = SamplingParams(temperature=0, max_tokens=p["max_tokens"])
        [out] = llm.generate(p["prompt"], params,
                             tokenization_kwargs={"add_special_tokens": not p["chat"]})
        texts.append(out.outputs[0].text)
    print("XNB_REF " + json.dumps(texts), flush=True)


if __name__ == "__main__":
    main()
