"""The running batch of continuous batching, and the prefix cache of prefilled captions.

Dimensions: R rows in the running batch (C its capacity), u unique rows of a prefix (a caption,
and its null caption when guided), V num_image_tokens, T' = text_len (<bos> + caption).

`RunningBatch` knows rows and positions, nothing about requests (the scheduler's business): a
sequence joins with rows copied from a prefilled `Prefix`, every `step` feeds one token per row and
returns each sequence's next-token logits, and finished sequences leave (the rows behind them move
up, so the R used rows are always rows 0..R-1 of one preallocated cache of C rows).  Every step is
the model's one cached step (`DALLE.decode_step`): with one position shared by every row when all
rows are at the same position, on exactly the tensors `generation.decode.generate_codes` uses (a lone
request then decodes bit for bit as generate.py does), otherwise with one position per row.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable, Optional

import torch

from dalle_pytorch.models.dalle import DALLE
from dalle_pytorch.nn.cache import InferenceCache

__all__ = ["Prefix", "PrefixCache", "RunningBatch", "Sequence", "prefill"]


@dataclass
class Prefix:
    """Prefilled caption rows: their cache (u rows, T' positions) and the logits of the first image code."""

    cache: InferenceCache
    logits: torch.Tensor  # (u, V)

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes() + self.logits.numel() * self.logits.element_size()


@torch.inference_mode()
def prefill(model: DALLE, text: torch.Tensor, prime: Optional[torch.Tensor] = None) -> Prefix:
    """Run the caption rows `text` (u, T) (user ids, 0 = pad), then each row's priming codes `prime` (u, n) if
    given (a variation's kept first codes), through the model: the same call as
    `generation.decode.prefill_rows` makes for its unique rows, so the cache and logits are the same bits."""
    n = 0 if prime is None else prime.shape[1]
    cache = model.setup_cache(text.shape[0], model.text_len + n)
    logits = model.prefill(model.text_ids(text), prime, cache)[:, model.num_text_tokens :]
    return Prefix(cache, logits)


class PrefixCache:
    """A bounded LRU of `Prefix`es keyed by token ids: a caption seen recently ("more like this",
    or the next batch of the same request) skips its prefill.

    Bounded by entries and by bytes; the least recently used entries go first.  Used by one thread.
    """

    def __init__(self, max_entries: int = 64, max_bytes: int = 256 * 2**20):
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("the prefix cache's bounds must be >= 0")
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[Hashable, Prefix] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Optional[Prefix]:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: Hashable, prefix: Prefix) -> None:
        size = prefix.nbytes
        if self.max_entries == 0 or size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
        self._entries[key] = prefix
        self.nbytes += size
        while len(self._entries) > self.max_entries or self.nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.nbytes -= evicted.nbytes
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


@dataclass(eq=False)
class Sequence:
    """Rows of the running batch that advance together (one generator's batch, with its null rows)."""

    rows: int
    next_pos: int  # the position of the next token fed
    row0: int = 0  # first row in the running batch (moves when rows before it leave)
    owner: object = field(default=None, repr=False)  # whatever the scheduler attaches


class RunningBatch:
    """Up to `capacity` rows of one preallocated cache, each sequence at its own position."""

    def __init__(self, model: DALLE, capacity: int, rewind: int = 0):
        """rewind: how far a step may start before the end of the last one (speculative windows: K)."""
        if capacity < 1:
            raise ValueError(f"the running batch needs a capacity of at least 1 row, got {capacity}")
        self.model, self.capacity = model, capacity
        self.cache = model.setup_cache(capacity, rewind=rewind)
        self.sequences: list[Sequence] = []
        device = self.cache.kv[0].k.device
        self._positions = torch.arange(model.total_seq_len + 1, device=device)  # 0-d position tensors, as generate_codes
        self._row_index = torch.arange(capacity, device=device)
        #: steps run with one position shared by every row, and with one position per row
        self.scalar_steps = self.row_steps = 0

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.sequences)

    @property
    def free_rows(self) -> int:
        return self.capacity - self.rows

    def join(self, prefix: Prefix, index: torch.Tensor, owner: object = None) -> tuple[Sequence, torch.Tensor]:
        """Add a sequence whose row i starts as `prefix` row index[i] (index: (r,) long).

        Returns the sequence and its first logits (r, V) (the prefill's, gathered).
        """
        r = index.shape[0]
        if r > self.free_rows:
            raise ValueError(f"{r} rows do not fit: {self.free_rows} of {self.capacity} are free")
        seq = Sequence(rows=r, next_pos=prefix.cache.length, row0=self.rows, owner=owner)
        self.cache.narrow_rows(seq.row0, r).copy_rows_from(prefix.cache, index.to(self._row_index.device))
        self.sequences.append(seq)
        return seq, prefix.logits[index]

    def leave(self, gone: list[Sequence]) -> None:
        """Remove sequences; the ones after them move up (only their filled positions are copied)."""
        gone_ids = {id(s) for s in gone}
        kept, row = [], 0
        for seq in self.sequences:
            if id(seq) in gone_ids:
                continue
            if seq.row0 != row:
                src = self._row_index[seq.row0 : seq.row0 + seq.rows]
                dst = self._row_index[row : row + seq.rows]
                self.cache.move_rows(src, dst, length=seq.next_pos)
                seq.row0 = row
            kept.append(seq)
            row += seq.rows
        self.sequences = kept

    @torch.inference_mode()
    def step(self, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        """Feed one token per row: tokens[i] (rows of sequence i,) image codes, in `sequences` order.

        Returns each sequence's next logits (its rows, V), and advances every sequence by one position.
        """
        if len(tokens) != len(self.sequences):
            raise ValueError(f"{len(tokens)} token tensors for {len(self.sequences)} sequences")
        rows = self.rows
        token = torch.cat(tokens) if len(tokens) > 1 else tokens[0]
        view = self.cache.narrow_rows(0, rows)
        first = self.sequences[0].next_pos
        if all(s.next_pos == first for s in self.sequences):  # one shared position, as generate_codes steps
            logits = self.model.decode_step(token, self._positions[first], view, length=first + 1)
            self.scalar_steps += 1
        else:  # the same step with one position per row
            pos = torch.cat([self._positions[s.next_pos].expand(s.rows) for s in self.sequences])
            length = max(s.next_pos for s in self.sequences) + 1
            logits = self.model.decode_step(token, pos, view, length=length)
            self.row_steps += 1
        out = []
        for s in self.sequences:
            out.append(logits[s.row0 : s.row0 + s.rows])
            s.next_pos += 1
        return out

    @torch.inference_mode()
    def step_window(self, tokens: list[torch.Tensor], starts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Feed t tokens per row at per-row starts: tokens[i] (rows of sequence i, t) image codes from the
        positions starts[i] (rows,), in `sequences` order (speculative windows).  Returns each sequence's
        logits (its rows, t, V); a sequence's `next_pos` becomes the end of its furthest window."""
        if len(tokens) != len(self.sequences) or len(starts) != len(self.sequences):
            raise ValueError(f"{len(tokens)} token tensors for {len(self.sequences)} sequences")
        t = tokens[0].shape[1]
        token = torch.cat(tokens) if len(tokens) > 1 else tokens[0]
        start = torch.cat(starts) if len(starts) > 1 else starts[0]
        logits = self.model.step(token, start, self.cache.narrow_rows(0, self.rows), length=int(start.max()) + t)
        self.row_steps += 1
        out = []
        for s, first in zip(self.sequences, starts):
            out.append(logits[s.row0 : s.row0 + s.rows])
            s.next_pos = max(s.next_pos, int(first.max()) + t)
        return out
