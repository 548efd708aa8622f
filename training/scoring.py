"""Teacher-forced scores of responses: left-padded batches and the policies that score them.

A batch row is a prompt followed by a response. Rows are left-padded so every response ends at the
last position; the vocabulary projection then runs only over the last `longest response` positions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from peft import PeftModel
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from qadapter.core.shared_rows import LayerRows


@dataclass(frozen=True)
class ResponseBatch:
    """Left-padded rows of prompt+response; `actions`/`action_mask` cover the response window."""

    input_ids: torch.Tensor  # [rows, length]
    attention_mask: torch.Tensor  # [rows, length]
    position_ids: torch.Tensor  # [rows, length]
    actions: torch.Tensor  # [rows, window]: the tokens taken in the last `window` states
    action_mask: torch.Tensor  # [rows, window]: 1 where the action is a response token

    @property
    def window(self) -> int:
        return self.actions.shape[1]


def collate(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, device: torch.device) -> ResponseBatch:
    """Rows of (prompt ids, response ids); every prompt holds at least one token."""
    length = max(len(p) + len(r) for p, r in rows)
    window = max(len(r) for _, r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    action_mask = torch.zeros((len(rows), window), dtype=torch.float32)
    for i, (prompt, response) in enumerate(rows):
        assert prompt, "a response needs at least one prompt token to be scored from"
        tokens = [*prompt, *response]
        input_ids[i, length - len(tokens) :] = torch.tensor(tokens)
        attention_mask[i, length - len(tokens) :] = 1
        action_mask[i, window - len(response) :] = 1
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return ResponseBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        actions=input_ids[:, length - window :].to(device),
        action_mask=action_mask.to(device),
    )


@contextmanager
def adapter_off(model: PreTrainedModel | PeftModel) -> Iterator[None]:
    """The frozen base model: the LoRA disabled when there is one."""
    with model.disable_adapter() if isinstance(model, PeftModel) else nullcontext():
        yield


def causal_lm(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The transformers model (inside peft's wrapper, its LoRA layers in place)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def window_logits(model: PreTrainedModel | PeftModel, batch: ResponseBatch) -> torch.Tensor:
    """Logits `[rows, window, vocab]` of the states that take the response actions."""
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        logits_to_keep=batch.window + 1,
    )
    return out.logits[:, :-1]  # the last position's state takes no action in the batch


def base_window_logits(model: PreTrainedModel | PeftModel, batch: ResponseBatch) -> torch.Tensor:
    """`window_logits` of the frozen base, without autograd."""
    with torch.no_grad(), adapter_off(model):
        return window_logits(model, batch)


def taken_logprobs(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[action] per position, `[rows, window]`, in float32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)


class ModelRows:
    """A model as the decode loop's RowModel: with a PeftModel, rows naming its adapter run the LoRA
    and base rows (None) run without it, in one forward (peft's mixed batches); a plain model has
    base rows only."""

    def __init__(self, model: PreTrainedModel | PeftModel) -> None:
        self._model = model

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device

    def row_plan(self, row_adapters: Sequence[str | None], partners: Sequence[int | None]) -> list[LayerRows] | None:
        """None: peft runs every row through every layer."""
        return None

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        cache: Cache | None,
        row_adapters: Sequence[str | None],
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        plan: list[LayerRows] | None = None,  # always None here (row_plan)
    ) -> tuple[torch.Tensor, Cache]:
        if isinstance(self._model, PeftModel):
            selected = {"adapter_names": [name or "__base__" for name in row_adapters]}
        else:
            assert not any(row_adapters), "a model without adapters decodes base rows only"
            selected = {}
        out = self._model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            **selected,
        )
        return out.logits[:, -1], out.cache
