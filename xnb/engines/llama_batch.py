"""Continuous batching on llama.cpp's low-level API.

One :class:`BatchScheduler` owns one llama.cpp context and one thread.  It
keeps up to ``max_num_seqs`` sequences in the context, each in its own *slot*
(slot *i* is llama.cpp sequence id *i* and has its own KV stream of
``n_ctx / max_num_seqs`` cells).  Every step:

* one ``llama_decode`` over a multi-sequence batch evaluates the last sampled
  token of every decoding sequence;
* prefilling sequences add one chunk of their prompt each (a fixed grid of
  ``prefill_chunk`` tokens, so a long prompt never stalls the others and is
  always split the same way — see :meth:`BatchScheduler._plan`);
* each sequence whose last pending token was evaluated samples its next
  token with its own sampler chain (temperature, top-p/k, seed, penalties,
  grammar) and checks its own stop conditions.

Why a stream per slot and not llama.cpp's unified KV cache: with a unified
cache a sequence's cells land at indices that depend on what else is running,
and the CPU attention kernels group their sums by cell index, so the same
greedy request could give different text alone and in a batch.  Separate
streams keep every sequence's cells at the same indices either way, and
cannot run out of room because of another sequence (see docs/architecture.md).

A finished sequence leaves its slot at once.  Its cells are freed, or with
``prefix_cache`` kept so a later request sharing the prefix (same system
prompt, a continued conversation) reuses them; a long prefix in another slot
(idle or running) is copied over.  A sequence that reaches its own length
limit ends with ``finish_reason="length"``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from xnb.engines.base import SamplingParams, Sink
from xnb.engines.text import StopChecker, Utf8Decoder
from xnb.engines.logprobs import TokenLogprob, token_logprob
from xnb.engines.llama_native import Vocab, common_prefix, native_call
from xnb.errors import EngineError

__all__ = ["BatchScheduler", "Sequence", "SequenceGroup"]

logger = logging.getLogger(__name__)


class SequenceGroup:
    """The ``n`` choices of one request, sharing a sink; closes it when all end."""

    def __init__(self, sink: Sink, n_choices: int, prompt_tokens: int) -> None:
        self.sink = sink
        self.remaining = n_choices
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0

    def choice_done(self, generated: int) -> None:
        self.completion_tokens += generated
        self.remaining -= 1
        if self.remaining == 0:
            self.sink.close(self.prompt_tokens, self.completion_tokens)


@dataclass(eq=False)
class Sequence:
    group: SequenceGroup
    index: int
    tokens: list[int]
    n_prompt: int
    params: SamplingParams
    max_len: int
    sampler: Any
    stop: StopChecker
    greedy: bool = False  # plain greedy (llama_native.is_plain_greedy): argmax in numpy
    decoder: Utf8Decoder = field(default_factory=Utf8Decoder)
    slot: int = -1
    n_past: int = 0
    generated: int = 0
    admitted_at: float = 0.0
    submitted_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    reused: int = 0
    #: Logprobs of generated tokens whose text is not out yet (UTF-8 or stop hold-back).
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def sink(self) -> Sink:
        return self.group.sink

    @property
    def max_new(self) -> int:
        return self.params.max_tokens or (1 << 30)


@dataclass(eq=False)
class Slot:
    seq_id: int
    seq: Sequence | None = None
    cached: list[int] = field(default_factory=list)


class BatchScheduler:
    """Serves many sequences on one llama.cpp context with one decode per step."""

    #: Shortest shared prefix worth copying from another slot's stream (``llama_memory_seq_cp``
    #: took ~0.01 ms for SmolLM2 here; evaluating 16 prompt tokens takes tens of ms).
    MIN_COPY_PREFIX = 16

    def __init__(
        self,
        ctx: Any,
        vocab: Vocab,
        *,
        n_ctx: int,
        max_num_seqs: int,
        n_batch: int,
        prefill_chunk: int | None = 64,
        prefix_cache: bool = True,
    ) -> None:
        self.ctx = ctx
        self.vocab = vocab
        self.mem = llama_cpp.llama_get_memory(ctx)
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.grid = min(prefill_chunk or 64, n_batch)
        self.prefix_cache = prefix_cache
        self.slots = [Slot(i) for i in range(max_num_seqs)]
        self.waiting: deque[Sequence] = deque()
        self._incoming: list[Sequence] = []
        self._cond = threading.Condition()
        self._closed = False
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._ctx_lock = threading.Lock()
        self.counters = {
            "steps": 0,
            "tokens_decoded": 0,
            "tokens_generated": 0,
            "prompt_tokens": 0,
            "prompt_tokens_reused": 0,
            "sequences_finished": 0,
            "sequences_aborted": 0,
            "max_batch_seqs": 0,
        }
        self._thread = threading.Thread(target=self._run, name="xnb-llama-batch", daemon=True)
        self._thread.start()

    # -- public ------------------------------------------------------------------------

    def submit(self, seqs: list[Sequence]) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("scheduler is closed")
            self._incoming.extend(seqs)
            self._cond.notify()

    def wake(self) -> None:
        """Make the loop look at cancellations now (called on abort)."""
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)
        llama_cpp.llama_batch_free(self._batch)

    def kv_cells(self) -> dict[str, int]:
        """KV cells per state, read from llama.cpp's memory (positions per sequence)."""
        with self._ctx_lock:
            return self._kv_cells_locked()

    def _kv_cells_locked(self) -> dict[str, int]:
        active = cached = 0
        for slot in self.slots:
            lo = llama_cpp.llama_memory_seq_pos_min(self.mem, slot.seq_id)
            hi = llama_cpp.llama_memory_seq_pos_max(self.mem, slot.seq_id)
            cells = 0 if hi < 0 else hi - lo + 1
            if slot.seq is not None:
                active += cells
            else:
                cached += cells
        return {"kv_cells_active": active, "kv_cells_cached": cached}

    def stats(self) -> dict[str, Any]:
        running = sum(1 for s in self.slots if s.seq is not None)
        return {
            **self.counters,
            "running": running,
            "waiting": len(self.waiting) + len(self._incoming),
            "max_num_seqs": len(self.slots),
            "n_ctx": self.n_ctx,
            **self.kv_cells(),
        }

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while (
                    not self._closed
                    and not self._incoming
                    and not self.waiting
                    and all(s.seq is None for s in self.slots)
                ):
                    self._cond.wait()
                if self._closed:
                    break
                self.waiting.extend(self._incoming)
                self._incoming.clear()
            try:
                with self._ctx_lock:
                    self._step()
            except Exception:  # a bug here must not leave clients hanging
                logger.exception("llama.cpp batch step failed; failing running sequences")
                self._fail_all("the llama.cpp scheduler failed; the request was not completed")
        self._fail_all("the model is shutting down")

    def _step(self) -> None:
        """One scheduling step: a decode call for every decoding sequence, then one
        grid-aligned prompt chunk per prefilling sequence (each its own call)."""
        self._drop_cancelled()
        self._admit()
        for entries in self._plan():
            self._fill_batch(entries)
            ret = native_call(llama_cpp.llama_decode, self.ctx, self._batch)
            if ret == 1:
                self._relieve_memory(entries)
                return
            if ret != 0:
                raise RuntimeError(f"llama_decode returned {ret}")
            self.counters["steps"] += 1
            self.counters["tokens_decoded"] += self._batch.n_tokens
            self.counters["max_batch_seqs"] = max(self.counters["max_batch_seqs"], len(entries))
            for seq, count, out_index in entries:
                seq.n_past += count
                if out_index >= 0:
                    self._sample(seq, out_index)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.waiting if s.sink.cancelled.is_set()]:
            self.waiting.remove(seq)
            self._finish(seq, "abort")
        for slot in self.slots:
            if slot.seq is not None and slot.seq.sink.cancelled.is_set():
                self._finish(slot.seq, "abort")

    def _admit(self) -> None:
        deferred: list[Sequence] = []
        while self.waiting:
            free = [s for s in self.slots if s.seq is None]
            if not free:
                break
            seq = self.waiting.popleft()
            if self._prefix_in_flight(seq, free):
                deferred.append(seq)
                continue
            self._place(seq, free)
        self.waiting.extendleft(reversed(deferred))

    def _prefix_in_flight(self, seq: Sequence, free: list[Slot]) -> bool:
        """Whether a running sequence is still evaluating a long prefix (a shared system
        prompt) that ``seq`` starts with: then ``seq`` waits for it and copies it
        (concurrent arrivals evaluate a shared prompt once, not once each: eight
        45-token SmolLM2 chat prompts sharing ~30 tokens got their first tokens in
        2.9 s instead of 5.2 s on the loaded 2-core machine)."""
        have = max((common_prefix(slot.cached, seq.tokens) for slot in free), default=0)
        for slot in self.slots:
            other = slot.seq
            if other is None or other.n_past >= other.n_prompt - 2:
                continue  # idle, or (nearly) done with its prompt: _place copies what it has
            shared = common_prefix(other.tokens[: other.n_prompt], seq.tokens)
            if shared >= self.MIN_COPY_PREFIX and shared > have and other.n_past < shared:
                return True
        return False

    def _place(self, seq: Sequence, free: list[Slot]) -> None:
        """Put a sequence in the lowest free slot, reusing the longest cached or running prefix.

        Lowest first, because llama.cpp evaluates a batch's attention over the whole
        range of KV streams its sequences use (from the lowest to the highest stream
        id, idle streams in between included): eight sequences scattered over sixteen
        slots cost a third more per decode step than eight in slots 0–7 (measured at
        concurrency 8 with the prefix cache filling the other slots: 172 → 124 tok/s
        over four waves, against a steady 175–200 with the sequences kept low).
        A prefix cached in the chosen slot is reused in place; a longer one in another
        slot (idle or running) is copied over (llama.cpp copies whole streams, so only
        when it pays).
        """
        tokens = seq.tokens
        dst = min(free, key=lambda s: s.seq_id)
        reuse = common_prefix(dst.cached, tokens)
        best_src, best_src_len = None, 0
        for slot in self.slots:
            if slot is dst:
                continue
            if slot.seq is not None:
                n = common_prefix(slot.seq.tokens[: slot.seq.n_past], tokens) if slot.seq.n_past > 0 else 0
            else:
                n = common_prefix(slot.cached, tokens)
            if n > best_src_len:
                best_src, best_src_len = slot, n
        if best_src is not None and best_src_len > reuse and best_src_len >= self.MIN_COPY_PREFIX:
            llama_cpp.llama_memory_seq_rm(self.mem, dst.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_cp(self.mem, best_src.seq_id, dst.seq_id, -1, -1)
            reuse = best_src_len
        # At least two tokens are evaluated again (logits for the last one; a one-row
        # chunk would take another attention kernel, see _plan).
        reuse = max(0, min(reuse, len(tokens) - 2))
        if not llama_cpp.llama_memory_seq_rm(self.mem, dst.seq_id, reuse, -1):
            llama_cpp.llama_memory_seq_rm(self.mem, dst.seq_id, -1, -1)
            reuse = 0
        dst.cached = []
        dst.seq = seq
        seq.slot = dst.seq_id
        seq.n_past = reuse
        seq.admitted_at = time.monotonic()
        seq.reused = reuse
        self.counters["prompt_tokens"] += len(tokens)
        self.counters["prompt_tokens_reused"] += reuse

    def _plan(self) -> list[list[tuple[Sequence, int, int]]]:
        """The calls of this step, as ``(sequence, tokens, output index)`` entries.

        Batch invariance: llama.cpp's CPU flash attention picks its kernel by
        the shape of a call — a tiled kernel for 64 or more query rows, a
        row-by-row one below, a split-KV one for a single row over 512+ cells —
        and the kernels round differently.  So each prompt chunk is its own call
        of at most ``prefill_chunk`` (< 64) rows and never one row, and decoding
        sequences share one call (one token each): every row of a sequence then
        takes the same kernel whatever else runs and wherever a reused prefix
        ends, and a sequence gives the same greedy text alone and in a batch
        (while its KV stays under 512 cells, where a lone decoding sequence
        takes the split-KV kernel).
        """
        running = [s.seq for s in self.slots if s.seq is not None]
        calls: list[list[tuple[Sequence, int, int]]] = []
        decoding = [s for s in running if len(s.tokens) - s.n_past == 1]
        if decoding:
            calls.append([(s, 1, i) for i, s in enumerate(decoding)])
        budget = self.n_batch
        chunks: dict[int, list[tuple[Sequence, int, int]]] = {}
        for seq in sorted((s for s in running if len(s.tokens) - s.n_past > 1), key=lambda s: s.admitted_at):
            pending = len(seq.tokens) - seq.n_past
            count = min(pending, self.grid)
            if pending - count == 1:
                count -= 1  # never leave a one-row chunk
            if count > budget and (chunks or decoding):
                break  # the step is full; this chunk waits for the next one
            budget -= count
            chunks.setdefault(count, []).append((seq, count, -1 if count < pending else 0))
        # Chunks of equal length share a call: llama.cpp evaluates them as one
        # sequence-parallel ubatch, each row still on the row-by-row kernel.
        for group in chunks.values():
            offset, entries = 0, []
            for seq, count, last in group:
                entries.append((seq, count, offset + count - 1 if last == 0 else -1))
                offset += count
            calls.append(entries)
        return calls

    def _fill_batch(self, entries: list[tuple[Sequence, int, int]]) -> None:
        batch = self._batch
        n = 0
        for seq, count, _ in entries:
            start = seq.n_past
            for j in range(count):
                batch.token[n + j] = seq.tokens[start + j]
                batch.pos[n + j] = start + j
                batch.n_seq_id[n + j] = 1
                batch.seq_id[n + j][0] = seq.slot
                batch.logits[n + j] = 0
            if count == len(seq.tokens) - start:
                batch.logits[n + count - 1] = 1
            n += count
        batch.n_tokens = n

    def _sample(self, seq: Sequence, out_index: int) -> None:
        row = None
        if seq.params.logprobs or seq.greedy:  # the raw row: the model's own distribution
            ptr = llama_cpp.llama_get_logits_ith(self.ctx, out_index)
            row = np.ctypeslib.as_array(ptr, shape=(self.vocab.n_tokens,))
        if seq.greedy:
            token = int(row.argmax())  # what the greedy chain picks (first of equal maxima)
        else:
            if row is not None:
                row = row.copy()  # the sampler chain may rewrite the logits
            token = llama_cpp.llama_sampler_sample(seq.sampler, self.ctx, out_index)
        now = time.monotonic()
        if seq.first_token_at is None:
            seq.first_token_at = now
        if self.vocab.is_eog(token) and not seq.params.ignore_eos:
            self._finish(seq, "stop")  # the end token is not output: not counted, as OpenAI does
            return
        seq.generated += 1
        self.counters["tokens_generated"] += 1
        seq.tokens.append(token)
        if seq.params.logprobs:
            seq.pending_logprobs.append(token_logprob(row, token, seq.params.top_logprobs or 0, self.vocab.piece))
        text = seq.decoder.feed(self.vocab.piece(token))
        if text:
            safe, stopped = seq.stop.feed(text)
            if safe:
                seq.sink.put(seq.index, safe, self._take_logprobs(seq))
            if stopped:
                self._finish(seq, "stop", flush=False)
                return
        if seq.generated >= seq.max_new or len(seq.tokens) >= seq.max_len:
            self._finish(seq, "length")

    @staticmethod
    def _take_logprobs(seq: Sequence) -> list[TokenLogprob] | None:
        if not seq.params.logprobs:
            return None
        out, seq.pending_logprobs = seq.pending_logprobs, []
        return out

    def _finish(self, seq: Sequence, reason: str, *, flush: bool = True) -> None:
        tail = ""
        logprobs = None
        if flush and reason != "abort":
            rest = seq.decoder.flush()
            safe, stopped = seq.stop.feed(rest) if rest else ("", False)
            tail = safe if stopped else safe + seq.stop.flush()
            if tail:
                logprobs = self._take_logprobs(seq)
        if seq.slot >= 0:
            slot = self.slots[seq.slot]
            slot.seq = None
            if self.prefix_cache and reason != "abort":
                slot.cached = seq.tokens[: seq.n_past]
            else:
                llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
                slot.cached = []
            seq.slot = -1
        if seq.sampler is not None:
            llama_cpp.llama_sampler_free(seq.sampler)
            seq.sampler = None
        key = "sequences_aborted" if reason == "abort" else "sequences_finished"
        self.counters[key] += 1
        seq.sink.finish(seq.index, reason, tail, logprobs)
        seq.group.choice_done(seq.generated)

    def _relieve_memory(self, entries: list[tuple[Sequence, int, int]]) -> None:
        """A stream had no room (it cannot, given max_len ≤ cells per stream):
        end the longest sequence of the batch with ``length`` rather than loop."""
        victim = max((seq for seq, _, _ in entries), key=lambda s: len(s.tokens))
        logger.warning("llama.cpp found no KV room for a sequence of %d tokens", len(victim.tokens))
        self._finish(victim, "length")

    def _fail_all(self, message: str) -> None:
        seqs = [s.seq for s in self.slots if s.seq is not None] + list(self.waiting)
        with self._cond:
            seqs += self._incoming
            self._incoming = []
        self.waiting.clear()
        failed: set[int] = set()
        for seq in seqs:
            if seq.slot >= 0:
                self.slots[seq.slot].seq = None
                llama_cpp.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
                seq.slot = -1
            if id(seq.group) not in failed:
                failed.add(id(seq.group))
                seq.sink.fail(EngineError(message))
