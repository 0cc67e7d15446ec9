"""Continuous batching for the transformers engine.

One :class:`TorchBatchScheduler` thread owns the model.  Running sequences
share one padded KV cache (a ``DynamicCache`` whose rows are the sequences,
left-padded to the longest, with a 2-D attention mask marking the padding),
so every step evaluates the next token of *all* of them in one forward pass.

Every step:

* one forward pass over the running batch (one token per sequence; explicit
  ``position_ids``, so a padded row sees exactly its own positions);
* prompt chunks of newly admitted sequences, each on its own private cache
  (at most ``prefill_chunk`` tokens each, ``max_batched_tokens`` per step in
  all), so a long prompt never stalls the running streams for more than one
  chunk and a new request starts after one step, not after others finish;
* a sequence whose prompt is done samples its first token and joins the batch
  (its cache is padded and concatenated onto the batch's);
* finished and aborted sequences leave the batch at once (their rows are
  dropped, and columns that only padding uses are cut off).

Greedy sequences without penalties or bias are served by one ``argmax`` over
the batch's logits; others sample one row each with their own generator.
Batched float arithmetic is not bit-identical to one sequence alone (matmul
blocking depends on the batch shape), so greedy text alone and in a batch
agree in practice but are not guaranteed to (tests/test_engines_torch.py checks them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from xnb.engines.base import Sink
from xnb.engines.text import StopChecker
from xnb.engines.logprobs import TokenLogprob, token_logprob
from xnb.engines.torch_sampling import IncrementalDetokenizer, Sampler
from xnb.errors import EngineError

__all__ = ["TorchBatchScheduler", "TorchSequence"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class TorchSequence:
    """One request (one choice) on its way through the scheduler."""

    sink: Sink
    ids: list[int]  # prompt, then generated tokens
    n_prompt: int
    max_new: int
    sampler: Sampler
    stop: StopChecker
    detok: IncrementalDetokenizer
    eos: frozenset[int]
    logprobs: int | None = None  # alternatives wanted per token (None: no logprobs at all)
    piece: Callable[[int], bytes] | None = None  # token id -> bytes, for logprobs
    #: Logprobs of generated tokens whose text is not out yet (UTF-8 or stop hold-back).
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    generated: int = 0
    n_cached: int = 0  # tokens whose keys/values are cached (own cache, then a batch row)
    cache: Any = None  # the private cache while the prompt is evaluated
    submitted_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None


class TorchBatchScheduler:
    """Serves many sequences of one transformers model, one forward pass per step."""

    def __init__(
        self,
        model: Any,
        *,
        device: Any,
        cache_arg: str,
        forward_extra: dict[str, Any],
        max_num_seqs: int,
        max_batched_tokens: int,
        prefill_chunk: int,
    ) -> None:
        import torch

        self._torch = torch
        self.model = model
        self.device = device
        self._cache_arg = cache_arg
        self._extra = forward_extra
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.prefill_chunk = prefill_chunk
        self.waiting: deque[TorchSequence] = deque()
        self.prefilling: list[TorchSequence] = []
        self.running: list[TorchSequence] = []  # row i of the batch cache is running[i]
        self._cache: Any = None
        self._mask: Any = None  # (rows, cached columns), 0 where a row is padding
        self._incoming: list[TorchSequence] = []
        self._cond = threading.Condition()
        self._closed = False
        self.counters: dict[str, Any] = dict.fromkeys((
            "requests", "prompt_tokens", "tokens_generated", "forward_passes", "decode_steps",
            "prefill_chunks", "max_batch_seqs", "sequences_finished", "sequences_aborted"), 0)
        self.counters["busy_seconds"] = 0.0
        self._thread = threading.Thread(target=self._run, name="xnb-torch-batch", daemon=True)
        self._thread.start()

    # -- public ------------------------------------------------------------------------

    def submit(self, seq: TorchSequence) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("scheduler is closed")
            self._incoming.append(seq)
            self._cond.notify()

    def wake(self) -> None:
        """Make the loop look at cancellations now (called on abort)."""
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=60)

    def stats(self) -> dict[str, Any]:
        out = dict(self.counters)
        busy = out.pop("busy_seconds")
        out["decode_tokens_per_second"] = round(out["tokens_generated"] / busy, 2) if busy else None
        out["running"] = len(self.running) + len(self.prefilling)
        out["waiting"] = len(self.waiting) + len(self._incoming)
        out["active"] = out["running"]
        out["max_num_seqs"] = self.max_num_seqs
        out["kv_columns"] = 0 if self._mask is None else int(self._mask.shape[1])
        return out

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        with self._torch.inference_mode():  # thread-local: entered on this thread
            while True:
                with self._cond:
                    while not (self._closed or self._incoming or self.waiting
                               or self.prefilling or self.running):
                        self._cond.wait()
                    if self._closed:
                        break
                    self.waiting.extend(self._incoming)
                    self._incoming.clear()
                started = time.monotonic()
                try:
                    self._step()
                except Exception:  # a bug or a device error must not leave clients hanging
                    logger.exception("transformers batch step failed; failing running sequences")
                    self._fail_all("the transformers scheduler failed; the request was not completed")
                self.counters["busy_seconds"] += time.monotonic() - started
        self._fail_all("the model is shutting down")

    def _step(self) -> None:
        """Drop cancelled sequences, admit waiting ones, one decode pass, prompt chunks."""
        self._drop_cancelled()
        while self.waiting and len(self.prefilling) + len(self.running) < self.max_num_seqs:
            seq = self.waiting.popleft()
            self.prefilling.append(seq)
            self.counters["requests"] += 1
            self.counters["prompt_tokens"] += seq.n_prompt
        budget = self.max_batched_tokens
        if self.running:
            budget -= len(self.running)
            self._decode()
        for i, seq in enumerate(list(self.prefilling)):
            pending = len(seq.ids) - seq.n_cached
            # The oldest prompt always advances (running streams cannot starve it).
            room = budget if i else max(budget, min(self.prefill_chunk, 32))
            if room <= 0:
                break
            count = min(pending, self.prefill_chunk, room)
            budget -= count
            self._prefill(seq, count)

    def _forward(self, input_ids: Any, position_ids: Any, cache: Any, mask: Any = None) -> Any:
        kwargs = {self._cache_arg: cache, **self._extra}
        if mask is not None:
            kwargs["attention_mask"] = mask
        out = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=True, **kwargs)
        self.counters["forward_passes"] += 1
        return out

    def _prefill(self, seq: TorchSequence, count: int) -> None:
        torch = self._torch
        start = seq.n_cached
        ids = torch.tensor([seq.ids[start : start + count]], dtype=torch.long, device=self.device)
        pos = torch.arange(start, start + count, device=self.device).unsqueeze(0)
        out = self._forward(ids, pos, seq.cache)
        seq.cache = getattr(out, self._cache_arg)
        seq.n_cached += count
        self.counters["prefill_chunks"] += 1
        if seq.n_cached < len(seq.ids):
            return
        self.prefilling.remove(seq)
        logits = out.logits[0, -1]
        token = int(logits.argmax()) if seq.sampler.plain_greedy else seq.sampler.sample(seq.ids, logits)
        if self._accept(seq, token, logits):
            self._join(seq)
        else:
            seq.cache = None

    def _decode(self) -> None:
        torch = self._torch
        rows = len(self.running)
        ids = torch.tensor([[s.ids[-1]] for s in self.running], dtype=torch.long, device=self.device)
        pos = torch.tensor([[s.n_cached] for s in self.running], dtype=torch.long, device=self.device)
        mask = torch.cat([self._mask, self._mask.new_ones(rows, 1)], dim=1)
        out = self._forward(ids, pos, self._cache, mask)
        self._cache, self._mask = getattr(out, self._cache_arg), mask
        self.counters["decode_steps"] += 1
        self.counters["max_batch_seqs"] = max(self.counters["max_batch_seqs"], rows)
        logits = out.logits[:, -1, :]
        greedy = None
        if any(s.sampler.plain_greedy for s in self.running):
            greedy = logits.argmax(dim=-1).tolist()  # one call for every plain greedy row
        leaving = []
        for i, seq in enumerate(self.running):
            seq.n_cached += 1
            if greedy is not None and seq.sampler.plain_greedy:
                token = greedy[i]
            else:
                token = seq.sampler.sample(seq.ids, logits[i])
            if not self._accept(seq, token, logits[i]):
                leaving.append(i)
        if leaving:
            self._drop_rows(leaving)

    # -- sequences in and out ---------------------------------------------------------------

    def _accept(self, seq: TorchSequence, token: int, logits: Any) -> bool:
        """Record a sampled token; ``False`` when the sequence has finished."""
        if seq.first_token_at is None:
            seq.first_token_at = time.monotonic()
        if token in seq.eos:
            self._finish(seq, "stop")  # the end token is not output, nor counted
            return False
        seq.generated += 1
        self.counters["tokens_generated"] += 1
        seq.ids.append(token)
        if seq.logprobs is not None and seq.piece is not None:  # the model's own distribution
            row = logits.float().cpu().numpy()
            seq.pending_logprobs.append(token_logprob(row, token, seq.logprobs, seq.piece))
        text = seq.detok.push(token)
        if text:
            safe, stopped = seq.stop.feed(text)
            if safe:
                seq.sink.put(0, safe, self._take_logprobs(seq))
            if stopped:
                self._finish(seq, "stop", flush=False)
                return False
        if seq.generated >= seq.max_new:
            self._finish(seq, "length")
            return False
        return True

    def _join(self, seq: TorchSequence) -> None:
        """Put a prefilled sequence's cache into the batch as its last row."""
        torch = self._torch
        cols = seq.n_cached
        if not self.running:
            self._cache = seq.cache
            self._mask = torch.ones(1, cols, dtype=torch.long, device=self.device)
        else:
            width = self._mask.shape[1]
            pad_new, pad_batch = max(0, width - cols), max(0, cols - width)
            for mine, theirs in zip(self._cache.layers, seq.cache.layers):
                mine.keys = torch.cat([_pad_left(mine.keys, pad_batch), _pad_left(theirs.keys, pad_new)])
                mine.values = torch.cat([_pad_left(mine.values, pad_batch), _pad_left(theirs.values, pad_new)])
            row = torch.cat([self._mask.new_zeros(1, pad_new), self._mask.new_ones(1, cols)], dim=1)
            self._mask = torch.cat([_pad_left(self._mask, pad_batch, dim=1), row])
        seq.cache = None
        self.running.append(seq)

    def _drop_rows(self, rows: list[int]) -> None:
        """Remove finished rows; cut the columns that only padding uses any more."""
        torch = self._torch
        gone = set(rows)
        keep = [i for i in range(len(self.running)) if i not in gone]
        self.running = [self.running[i] for i in keep]
        if not keep:
            self._cache = self._mask = None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        mask = self._mask.index_select(0, index)
        first = int(torch.nonzero(mask.any(dim=0))[0, 0])
        mask = mask[:, first:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]
        self._mask = mask

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.waiting if s.sink.cancelled.is_set()]:
            self.waiting.remove(seq)
            self._finish(seq, "abort")
        for seq in [s for s in self.prefilling if s.sink.cancelled.is_set()]:
            self.prefilling.remove(seq)
            seq.cache = None
            self._finish(seq, "abort")
        rows = [i for i, s in enumerate(self.running) if s.sink.cancelled.is_set()]
        for i in rows:
            self._finish(self.running[i], "abort")
        if rows:
            self._drop_rows(rows)

    @staticmethod
    def _take_logprobs(seq: TorchSequence) -> list[TokenLogprob] | None:
        if seq.logprobs is None:
            return None
        out, seq.pending_logprobs = seq.pending_logprobs, []
        return out

    def _finish(self, seq: TorchSequence, reason: str, *, flush: bool = True) -> None:
        tail = ""
        logprobs = None
        if flush and reason != "abort":
            rest = seq.detok.flush()
            safe, stopped = seq.stop.feed(rest) if rest else ("", False)
            if stopped:
                tail, reason = safe, "stop"
            else:
                tail = safe + seq.stop.flush()
            if tail:
                logprobs = self._take_logprobs(seq)
        key = "sequences_aborted" if reason == "abort" else "sequences_finished"
        self.counters[key] += 1
        seq.sink.finish(0, reason, tail, logprobs)
        seq.sink.close(seq.n_prompt, seq.generated)

    def _fail_all(self, message: str) -> None:
        with self._cond:
            seqs = [*self.running, *self.prefilling, *self.waiting, *self._incoming]
            self._incoming = []
        self.running, self.prefilling = [], []
        self.waiting.clear()
        self._cache = self._mask = None
        for seq in seqs:
            seq.cache = None
            if not seq.sink.done:
                seq.sink.fail(EngineError(message))


def _pad_left(tensor: Any, count: int, dim: int = 2) -> Any:
    """``tensor`` with ``count`` zero columns in front along ``dim`` (keys: dim 2)."""
    if count == 0:
        return tensor
    import torch

    shape = list(tensor.shape)
    shape[dim] = count
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
