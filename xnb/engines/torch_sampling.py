"""Per-sequence pieces of the transformers engine: next-token choice and
incremental detokenization (no torch import at module level)."""

from __future__ import annotations

from typing import Any

from xnb.engines.base import SamplingParams

__all__ = ["IncrementalDetokenizer", "Sampler", "TokenBytes", "eos_ids", "adds_bos"]


class IncrementalDetokenizer:
    """Token ids → text deltas, never splitting a multi-byte character.

    Decodes a small window of recent tokens (so tokenizers whose text depends on
    the neighbouring token, like SentencePiece's leading spaces, decode right)
    and holds text back while it ends in U+FFFD, i.e. a partial UTF-8 sequence.
    Special tokens render as nothing, as in the llama.cpp engine.
    """

    __slots__ = ("_tokenizer", "ids", "_prefix", "_read")

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is held back (an incomplete character decodes as U+FFFD)."""
        if self._read == len(self.ids):
            return ""
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return after[len(before) :]


class Sampler:
    """Next-token choice as ``generate`` makes it, with a per-request generator.

    Repetition penalty and logit bias, then (unless greedy) temperature, top-k,
    top-p, min-p; unset parameters take OpenAI defaults (temperature 1).
    ``plain_greedy`` samplers (greedy, no penalty, no bias) are served by one
    batched ``argmax`` in the scheduler instead of :meth:`sample`.
    """

    def __init__(self, torch: Any, params: SamplingParams) -> None:
        import transformers as tf

        self._torch = torch
        self._seed = params.seed
        self._generator: Any = None
        self._bias = {int(k): float(v) for k, v in (params.logit_bias or {}).items()}
        temperature = 1.0 if params.temperature is None else params.temperature
        self.greedy = temperature <= 0.0
        procs = tf.LogitsProcessorList()
        if params.repeat_penalty is not None and params.repeat_penalty != 1.0:
            procs.append(tf.RepetitionPenaltyLogitsProcessor(params.repeat_penalty))
        self._penalties = procs
        warpers = tf.LogitsProcessorList()
        if not self.greedy:
            if temperature != 1.0:
                warpers.append(tf.TemperatureLogitsWarper(temperature))
            if params.top_k:
                warpers.append(tf.TopKLogitsWarper(params.top_k))
            if params.top_p is not None and params.top_p < 1.0:
                warpers.append(tf.TopPLogitsWarper(params.top_p))
            if params.min_p:
                warpers.append(tf.MinPLogitsWarper(params.min_p))
        self._warpers = warpers
        self.plain_greedy = self.greedy and not procs and not self._bias
        #: Whether :meth:`sample` reads the token history (repetition penalty, warpers).
        self.needs_history = bool(procs) or bool(warpers)

    def sample(self, history: list[int], logits: Any) -> int:
        """One token id from one position's ``logits`` (shape ``(vocab,)`` or ``(1, vocab)``)."""
        torch = self._torch
        scores = logits.reshape(1, -1).float()
        ids = torch.tensor([history], dtype=torch.long, device=scores.device) if self.needs_history else None
        if self._penalties:
            scores = self._penalties(ids, scores)
        if self._bias:
            scores = scores.clone()
            bias_ids = torch.tensor(list(self._bias), device=scores.device)
            bias_ids = bias_ids[bias_ids < scores.shape[-1]]
            values = torch.tensor([self._bias[int(i)] for i in bias_ids], device=scores.device)
            scores[0, bias_ids] += values
        if self.greedy:
            return int(scores.argmax(dim=-1)[0])
        scores = self._warpers(ids, scores)
        probs = torch.softmax(scores, dim=-1)
        if self._generator is None:
            self._generator = torch.Generator(device=scores.device)
            if self._seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(self._seed & 0xFFFF_FFFF_FFFF_FFFF)
        return int(torch.multinomial(probs, 1, generator=self._generator)[0, 0])


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a generation: the generation config's and the tokenizer's EOS."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(i) for i in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front of text it tokenizes with special tokens."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte ↔ printable character map, as byte-level BPE vocabularies use it."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


class TokenBytes:
    """Token id → the bytes it stands for (for logprobs); special tokens are empty.

    Byte-level BPE vocabularies (GPT-2 style: SmolLM2, Llama 3, Qwen) map back
    through the byte alphabet, so a token holding part of a UTF-8 character
    gives its real bytes; other tokenizers fall back to the decoded text.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._decoder = {c: b for b, c in _bytes_to_unicode().items()}
        self._cache: dict[int, bytes] = {}

    def __call__(self, token: int) -> bytes:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        if token in self._special:
            out = b""
        else:
            piece = self._tokenizer.convert_ids_to_tokens(token)
            if isinstance(piece, str) and piece and all(c in self._decoder for c in piece):
                out = bytes(self._decoder[c] for c in piece)
            else:
                out = self._tokenizer.decode([token], skip_special_tokens=True).encode("utf-8")
        self._cache[token] = out
        return out
