"""The forwards of one engine step over the KV cache of every running row.

KV layout: decoding rows live in slots of one `SlotCache` (each row's tokens from position 0, its
own length; a 4-D mask lets each row see only its own tokens), so a join writes its own rows and a
leave moves one row. Joining requests are prefilled as a group in a left-padded cache of their own,
a chunk of at most `prefill_chunk_tokens` (rows × columns) per step; after the last chunk the
group's rows are copied into free slots. Up to MAX_PREFILL_GROUPS groups are prefilled at once, a
chunk of one per step, the oldest group's and the newest's in turn: a request that arrives while
a long prompt is prefilled waits for one or two chunks, not for the whole prompt, and a stream of
short arrivals cannot starve the long prompt, which runs every other chunk. A group with a request that asks for its prompt's log-probabilities (echo)
has the logits of every column computed, not only the last. It works with any Hugging Face causal
LM's own attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qadapter.core.lora import AdapterHost
from qadapter.core.shared_rows import LayerRows
from qadapter.server.engine.kv_cache import GrowableCache, GrowableLayer, SlotCache
from qadapter.server.engine.logprobs import Row, record_prompt_logprobs
from qadapter.server.engine.request import Sequence

# A chunk holds at most `prefill_chunk_tokens` token-rows and a quarter of that in columns: its
# attention grows with the keys before it, so one long prompt goes in narrower slices (on 2 CPU
# cores a 4000-token prompt stalled others 15 s in 2048-column chunks, 4.9 s in 512-column ones),
# while a group of short prompts still goes in one forward.
COLUMNS_PER_CHUNK_TOKEN = 0.25
# A chunk that scores its prompts (echo with logprobs) keeps the logits of every position,
# [rows, columns, vocab]: a quarter of the budget keeps that to 128 MiB at 2048 token-rows and a
# 128k vocabulary in bf16.
SCORING_BUDGET_DIVISOR = 4
MAX_PREFILL_GROUPS = 4


@dataclass
class _PrefillGroup:
    """Joining rows whose prompts are being run, `done` columns so far."""

    rows: list[Row]
    ids: torch.Tensor  # [rows, width] left-padded prompts
    mask: torch.Tensor  # [rows, width] 1 = real token
    positions: torch.Tensor  # [rows, width]
    cache: GrowableCache
    plan: list[LayerRows] | None  # the rows each layer runs (and its cache holds); None: every row
    done: int = 0

    @property
    def layer_rows(self) -> list[tuple[int, ...]] | None:
        return None if self.plan is None else [layer.rows for layer in self.plan]

    def keep(self, kept: list[int], plan: list[LayerRows] | None) -> None:
        """Only the rows `kept` (whole sequences), and the plan of those rows."""
        index = torch.tensor(kept, device=self.ids.device)
        self.rows = [self.rows[i] for i in kept]
        self.ids, self.mask, self.positions = self.ids[index], self.mask[index], self.positions[index]
        held_rows = self.layer_rows or []
        for number, layer in enumerate(self.cache.layers):
            if isinstance(layer, GrowableLayer) and layer.is_initialized:
                held = held_rows[number] if number < len(held_rows) else range(len(layer.keys))
                still = torch.tensor([p for p, row in enumerate(held) if row in kept], device=index.device)
                layer.replace(layer.keys[still], layer.values[still])
        self.plan = plan


class BatchRunner:
    """Owns the KV caches; `rows` are the decoding rows in slot order."""

    def __init__(self, host: AdapterHost, pad_token_id: int, prefill_chunk_tokens: int) -> None:
        self._host = host
        self._pad_token_id = pad_token_id
        self._prefill_chunk_tokens = prefill_chunk_tokens
        self._cache = SlotCache()
        self._prefills: list[_PrefillGroup] = []  # in the order they came
        self._oldest_ran = False  # whether the last chunk was the oldest group's
        self.rows: list[Row] = []

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    @property
    def is_prefilling(self) -> bool:
        return bool(self._prefills)

    @property
    def can_start_prefill(self) -> bool:
        return len(self._prefills) < MAX_PREFILL_GROUPS

    def decode(self) -> torch.Tensor:
        """One token for every decoding row (each row's last output token); logits `[rows, vocab]`."""
        tokens = torch.tensor([[seq.output_ids[-1]] for seq, _ in self.rows], device=self._host.device)  # [rows, 1]
        mask, positions = self._cache.step_inputs(self._host.dtype, self._host.uses_additive_masks)
        names = [name for _, name in self.rows]
        plan = self._host.row_plan(names, _partners(self.rows))
        logits, _ = self._host.forward(tokens, self._cache, names, mask, positions, plan=plan)
        self._cache.advance()
        return logits

    def start_prefill(self, seqs: list[Sequence]) -> None:
        """Take joining sequences as a new prefill group; its first chunk runs next."""
        assert self.can_start_prefill, f"at most {MAX_PREFILL_GROUPS} prefill groups at a time"
        rows = [(seq, key) for seq in seqs for key in ((seq.adapter_key, None) if seq.adapter_key else (None,))]
        width = max(seq.num_prompt_tokens for seq in seqs)
        device = self._host.device
        ids = torch.full((len(rows), width), self._pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for i, (seq, _) in enumerate(rows):
            n = seq.num_prompt_tokens
            ids[i, width - n :] = torch.tensor(seq.request.prompt_ids, device=device)
            mask[i, width - n :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        plan = self._host.row_plan([name for _, name in rows], _partners(rows))
        self._prefills.append(_PrefillGroup(rows, ids, mask, positions, GrowableCache(), plan))

    def prefill_chunk(self) -> torch.Tensor | None:
        """Run the next chunk of a prefill group, the oldest's and the newest's in turn; after its last
        chunk the group's rows join the decoding rows and their logits `[new rows, vocab]` are
        returned (None before that)."""
        is_newest_turn = len(self._prefills) > 1 and self._oldest_ran
        group = self._prefills[-1 if is_newest_turn else 0]
        self._oldest_ran = not is_newest_turn
        budget = self._prefill_chunk_tokens
        scores_prompt = any(seq.request.params.prompt_logprobs is not None for seq, _ in group.rows)
        if scores_prompt:  # the logits of every column are kept
            budget = max(1, budget // SCORING_BUDGET_DIVISOR)
        columns = max(1, min(int(budget * COLUMNS_PER_CHUNK_TOKEN), budget // len(group.rows)))
        end = min(group.ids.shape[1], group.done + columns)
        logits, _ = self._host.forward(
            group.ids[:, group.done : end],
            group.cache,
            [name for _, name in group.rows],
            group.mask[:, :end],
            group.positions[:, group.done : end],
            all_positions=scores_prompt,
            plan=group.plan,  # the rows its cache's layers hold
        )
        if scores_prompt:  # every column's logits, for the prompt's log-probabilities; the last one samples
            record_prompt_logprobs(logits, group.rows, group.ids, group.done)
            logits = logits[:, -1].clone()  # not a view that keeps every column's logits alive
        group.done = end
        if end < group.ids.shape[1]:
            return None
        self._prefills.remove(group)
        self._cache.add_rows(group.cache, group.mask, group.layer_rows)
        self.rows += group.rows
        return logits

    def _without(self, group: _PrefillGroup, leaving: set[int]) -> _PrefillGroup | None:
        """The group without the rows of the leaving sequences (by id); None when no row is left."""
        kept = [i for i, (seq, _) in enumerate(group.rows) if id(seq) not in leaving]
        if len(kept) < len(group.rows) and kept:
            rows = [group.rows[i] for i in kept]
            group.keep(kept, self._host.row_plan([name for _, name in rows], _partners(rows)))
        return group if kept else None

    def reset(self) -> None:
        """Drop every row (after a failed step, whose state is unknown)."""
        self.rows, self._cache, self._prefills = [], SlotCache(), []

    def remove(self, seqs: list[Sequence]) -> None:
        """Drop the rows of finished or aborted sequences; only their slots are freed."""
        leaving = set(map(id, seqs))
        if not leaving:  # the engine's every step asks to remove its aborted rows, mostly none
            return
        self._prefills = [kept for group in self._prefills if (kept := self._without(group, leaving)) is not None]
        gone = [i for i, (seq, _) in enumerate(self.rows) if id(seq) in leaving]
        if gone:
            order = self._cache.remove_rows(gone)
            self.rows = [self.rows[i] for i in order]


def _partners(rows: list[Row]) -> list[int | None]:
    """Per row, the row it may share lower layers with: an adapter row's base row (None for base rows)."""
    base_row = {id(seq): i for i, (seq, name) in enumerate(rows) if name is None}
    return [None if name is None else base_row.get(id(seq)) for seq, name in rows]
