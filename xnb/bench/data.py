"""Datasets for the load generator: the bundled prompts, random prompts, sampling."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["BUNDLED_PROMPTS", "BenchError", "Prompt", "WARMUP_PROMPT_TEXT", "load_prompts", "random_prompts", "sample_prompts", "warmup_prompt"]




#: The small prompt set shipped with the repository (``--dataset bundled``).
BUNDLED_PROMPTS = Path(__file__).resolve().parent / "prompts.json"

#: What warm-up requests ask (not a dataset prompt, so a server's prefix cache
#: holds nothing of the measured prompts when the run starts).
WARMUP_PROMPT_TEXT = "Reply with one word: are you ready?"



class BenchError(RuntimeError):
    """The benchmark cannot run (server unreachable, warm-up request failed, bad dataset)."""


# -- datasets ------------------------------------------------------------------------------------


@dataclass
class Prompt:
    """One request of the workload: chat messages, and optionally its own ``max_tokens``."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = None

    @property
    def text(self) -> str:
        return "\n".join(str(m.get("content", "")) for m in self.messages)


def _prompt_from(item: Any, where: str) -> Prompt:
    if isinstance(item, str):
        return Prompt([{"role": "user", "content": item}])
    if isinstance(item, dict):
        max_tokens = item.get("max_tokens")
        if "messages" in item and isinstance(item["messages"], list):
            return Prompt(list(item["messages"]), max_tokens)
        if isinstance(item.get("prompt"), str):
            return Prompt([{"role": "user", "content": item["prompt"]}], max_tokens)
    raise BenchError(f"{where}: each prompt must be a string, {{'prompt': str}} or {{'messages': [...]}}")


def load_prompts(path: str | Path | None = None) -> list[Prompt]:
    """Prompts from a JSON file: a list, or ``{"prompts": [...]}``; entries are strings,
    ``{"prompt": str, "max_tokens"?: int}`` or ``{"messages": [...], "max_tokens"?: int}``.
    Without a path, the bundled set (``xnb/bench/prompts.json``, shipped in the package)."""
    path = Path(path) if path is not None else BUNDLED_PROMPTS
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        hint = " (the bundled set lives in the xnb repository; pass --dataset-path FILE)" if path == BUNDLED_PROMPTS else ""
        raise BenchError(f"prompt file {path} not found{hint}") from None
    except ValueError as exc:
        raise BenchError(f"prompt file {path} is not valid JSON: {exc}") from None
    items = data.get("prompts") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise BenchError(f"{path}: expected a non-empty list of prompts (or {{'prompts': [...]}})")
    return [_prompt_from(item, f"{path} entry {i}") for i, item in enumerate(items)]


# Short, common English words: each is one token (with its leading space) for the usual
# BPE vocabularies, so `input_len` words make a prompt of about `input_len` tokens.
_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more write go see number no way could people my than first "
    "water been call who oil its now find long down day did get come made may part over new "
    "sound take only little work know place year live me back give most very after thing our "
    "just name good sentence man think say great where help through much before line right too "
    "mean old any same tell boy follow came want show also around form three small set put end "
    "does another well large must big even such because turn here why ask went men read need "
    "land different home us move try kind hand picture again change off play spell air away "
    "animal house point page letter mother answer found study still learn should world high"
).split()


def warmup_prompt() -> Prompt:
    """The request sent before a run (and not counted)."""
    return Prompt([{"role": "user", "content": WARMUP_PROMPT_TEXT}], max_tokens=8)


def random_prompts(num: int, input_len: int, output_len: int, *, seed: int = 0) -> list[Prompt]:
    """``num`` prompts of about ``input_len`` tokens (random common words), each asking
    for ``output_len`` tokens (send ``ignore_eos`` where the server supports it to get
    exactly that many)."""
    if num < 1 or input_len < 1 or output_len < 1:
        raise BenchError("random prompts need num, input_len and output_len ≥ 1")
    rng = random.Random(seed)
    out = []
    for _ in range(num):
        words = " ".join(rng.choice(_WORDS) for _ in range(input_len))
        out.append(Prompt([{"role": "user", "content": words}], output_len))
    return out


def sample_prompts(prompts: Sequence[Prompt], num: int, *, seed: int | None = 0) -> list[Prompt]:
    """``num`` prompts: the set in order (shuffled with ``seed``; ``None`` keeps the file's
    order), repeated as often as needed."""
    if not prompts:
        raise BenchError("the dataset is empty")
    order = list(prompts)
    if seed is not None:
        random.Random(seed).shuffle(order)
    return [order[i % len(order)] for i in range(num)]
