"""LoRA on the top layers only: below the lowest adapted layer every row's residual stream is the
frozen base's, the same in every step, so it is computed once per dataset and a step runs the
adapted layers alone, forward and backward. What the rows give is unchanged (the layers below
would compute the same values again); only the cost is (tests/unit/training/test_step.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from qadapter.core.errors import InvalidData
from qadapter.core.shared_rows import decoder_layers
from qadapter.training.data import EncodedPair
from qadapter.training.objectives import Model, pair_rows
from qadapter.training.scoring import ResponseBatch, causal_lm, collate


@dataclass(frozen=True)
class LowerOutput:
    """The residual stream entering `first_layer` for a batch's rows, `[rows, length, hidden]`,
    left-padded as `scoring.collate` pads their tokens."""

    first_layer: int
    hidden: torch.Tensor


class LowerLayers:
    """The residual stream entering the first adapted layer, for both rows of every training pair."""

    def __init__(self, first_layer: int, by_pair: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.first_layer = first_layer
        self._by_pair = by_pair  # (chosen row, rejected row) per pair, `[tokens, hidden]` each

    @classmethod
    def build(
        cls, model: Model, pairs: Sequence[EncodedPair], first_layer: int, pad_id: int, batch_size: int, show: bool
    ) -> LowerLayers:
        device = next(model.parameters()).device
        by_pair: list[tuple[torch.Tensor, torch.Tensor]] = []
        for start in tqdm(range(0, len(pairs), batch_size), desc="lower layers", unit="batch", disable=not show):
            rows = pair_rows(pairs[start : start + batch_size])
            entering = residual_entering(model, collate(rows, pad_id, device), first_layer).cpu()
            per_row = [row[-(len(p) + len(r)) :] for row, (p, r) in zip(entering, rows, strict=True)]
            by_pair.extend(zip(per_row[0::2], per_row[1::2]))
        return cls(first_layer, by_pair)

    def rows(self, pair_indices: Sequence[int], chosen_only: bool = False) -> LowerOutput:
        """The batch of these pairs' rows (interleaved chosen, rejected; or the chosen alone, as SFT's)."""
        rows = [row for i in pair_indices for row in (self._by_pair[i][:1] if chosen_only else self._by_pair[i])]
        length = max(len(row) for row in rows)
        hidden = rows[0].new_zeros((len(rows), length, rows[0].shape[-1]))
        for i, row in enumerate(rows):
            hidden[i, length - len(row) :] = row
        return LowerOutput(self.first_layer, hidden)


class _Entered(Exception):
    """Stops a forward once the layer of interest has its input (the layers above are not needed)."""


@torch.no_grad()
def residual_entering(model: Model, batch: ResponseBatch, first_layer: int) -> torch.Tensor:
    """The residual stream `[rows, length, hidden]` entering decoder layer `first_layer` (the LoRA
    off: below the first adapted layer the model is the base), computed through that layer only."""
    captured: list[torch.Tensor] = []

    def capture(_: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _Entered

    handle = _layers(model)[first_layer].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        causal_lm(model).get_decoder()(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
    except _Entered:
        pass
    finally:
        handle.remove()
    return captured[0].float()


@contextmanager
def from_layer(model: Model, first_layer: int) -> Iterator[None]:
    """The decoder runs layers `first_layer`… only, its input taken as the stream entering them."""
    if first_layer == 0:
        yield
        return
    decoder = causal_lm(model).get_decoder()
    every = _layers(model)
    decoder.layers = torch.nn.ModuleList(list(every)[first_layer:])
    try:
        yield
    finally:
        decoder.layers = every


def _layers(model: Model) -> torch.nn.ModuleList:
    layers = decoder_layers(causal_lm(model))
    if layers is None:
        raise InvalidData("LoRA on some layers needs a decoder whose layers are its `layers` list (as Llama's)")
    return layers
