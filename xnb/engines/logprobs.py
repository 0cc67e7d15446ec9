"""Per-token log-probabilities: the neutral type engines produce and how to compute it.

An engine that honours ``SamplingParams.logprobs`` attaches, to each text
delta it puts into its :class:`~xnb.engines.base.Sink`, one
:class:`TokenLogprob` per generated token whose text that delta carries.
Values are the model's own log-probabilities: the log-softmax of the raw
logits row the sampler was given (before temperature, penalties, grammar),
which is what OpenAI reports.  The OpenAI ``logprobs`` objects are built from
these in :mod:`xnb.openai.shapes`.

On the wire (actor → client) a ``TokenLogprob`` is a plain list
``[token, logprob, bytes, top]`` (msgpack turns tuples into lists), with
``top`` a list of ``[token, logprob, bytes]`` best first;
:func:`as_token_logprob` reads either form back.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

__all__ = ["TopLogprob", "TokenLogprob", "as_token_logprob", "token_logprob", "MAX_TOP_LOGPROBS"]

#: The most alternatives a request may ask for (OpenAI's limit).
MAX_TOP_LOGPROBS = 20


class TopLogprob(NamedTuple):
    """One candidate token at a position."""

    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(NamedTuple):
    """The sampled token at one position, its log-probability and the ``top``
    most likely candidates there (best first; empty when none were asked for)."""

    token: str
    logprob: float
    bytes: list[int]
    top: list[TopLogprob]


def as_token_logprob(value: Sequence[Any]) -> TokenLogprob:
    """A :class:`TokenLogprob` from its wire form (a list) or itself."""
    token, logprob, raw, top = value
    return TokenLogprob(
        str(token), float(logprob), list(raw), [TopLogprob(str(t), float(lp), list(b)) for t, lp, b in top]
    )


def token_logprob(
    logits: np.ndarray, token: int, top: int, piece: Callable[[int], bytes]
) -> TokenLogprob:
    """Log-softmax of one logits row (float32, length n_vocab): the chosen
    ``token``'s entry and the ``top`` largest, with ``piece(id) -> bytes``
    naming tokens.  The sum runs in float64, so rounding does not depend on
    the vocabulary size."""
    row = np.asarray(logits, dtype=np.float64)
    peak = row.max()
    logz = peak + np.log(np.exp(row - peak).sum())

    def entry(tok: int) -> TopLogprob:
        raw = piece(tok)
        return TopLogprob(raw.decode("utf-8", errors="replace"), float(row[tok] - logz), list(raw))

    best: list[TopLogprob] = []
    if top > 0:
        ids = np.argpartition(-row, top - 1)[:top] if top < row.size else np.arange(row.size)
        ids = ids[np.argsort(-row[ids], kind="stable")]
        best = [entry(int(i)) for i in ids]
    chosen = entry(int(token))
    return TokenLogprob(chosen.token, chosen.logprob, chosen.bytes, best)
