"""Per-token log-probabilities computed from a logits row (engines call this).

The type is :class:`xnb.protocol.TokenLogprob` (the actor-boundary wire
types live there); an engine that honours ``SamplingParams.logprobs``
attaches one per generated token to the delta that carries its text.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from xnb.protocol import MAX_TOP_LOGPROBS, TokenLogprob, TopLogprob

__all__ = ["TopLogprob", "TokenLogprob", "as_token_logprob", "token_logprob", "MAX_TOP_LOGPROBS"]

as_token_logprob = TokenLogprob.of


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
