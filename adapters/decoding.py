"""Batched generation from the base model or a Q-adapter's customised policy (evaluation, data making).

The server has its own engine; this is the small offline loop `qadapter eval` and the example scripts
need: left-padded rows, one KV cache per forward kind (adapter on, adapter off).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from adapters.policy import customised_logits
from adapters.scoring import adapter_off


@dataclass(frozen=True)
class Policy:
    """What to sample from: the base (`use_adapter` False) or the adapter's customised logits with α, ω."""

    use_adapter: bool
    alpha: float = 1.0
    omega: float = 0.0


BASE = Policy(use_adapter=False)


@dataclass
class _Rows:
    """The state of a batch being decoded."""

    input_ids: torch.Tensor  # [rows, new]: the tokens to feed next
    attention_mask: torch.Tensor  # [rows, so far]
    position_ids: torch.Tensor  # [rows, new]
    caches: dict[bool, object]  # adapter on/off → its KV cache


@torch.no_grad()
def generate(
    model: PreTrainedModel | PeftModel,
    prompts: Sequence[Sequence[int]],
    policy: Policy,
    max_new_tokens: int,
    stop_ids: frozenset[int],
    pad_id: int,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
    progress: str | None = None,
) -> list[list[int]]:
    """Each prompt's answer ids (its stop token included when one came); greedy at temperature 0.

    `progress` names a progress bar over the batches (none when None).
    """
    answers: list[list[int]] = []
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None):
        chunk = prompts[start:start + batch_size]
        answers += _generate_batch(model, chunk, policy, max_new_tokens, stop_ids, pad_id, temperature, generator)
    return answers


def _generate_batch(
    model: PreTrainedModel | PeftModel,
    prompts: Sequence[Sequence[int]],
    policy: Policy,
    max_new_tokens: int,
    stop_ids: frozenset[int],
    pad_id: int,
    temperature: float,
    generator: torch.Generator,
) -> list[list[int]]:
    device = next(model.parameters()).device
    length = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (length - len(p)) + list(p) for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts], device=device)
    rows = _Rows(input_ids, attention_mask, (attention_mask.cumsum(1) - 1).clamp(min=0), caches={})
    answers: list[list[int]] = [[] for _ in prompts]
    is_done = [False] * len(prompts)
    for _ in range(max_new_tokens):
        scores = _next_scores(model, rows, policy)  # [rows, vocab]
        if temperature > 0:
            tokens = torch.multinomial(torch.softmax(scores / temperature, dim=-1), 1, generator=generator)[:, 0]
        else:
            tokens = scores.argmax(dim=-1)
        for i, token in enumerate(tokens.tolist()):
            if not is_done[i]:
                answers[i].append(token)
                is_done[i] = token in stop_ids
        if all(is_done):
            break
        rows.input_ids = tokens[:, None]
        rows.attention_mask = torch.cat([rows.attention_mask, rows.attention_mask.new_ones((len(prompts), 1))], 1)
        rows.position_ids = rows.position_ids[:, -1:] + 1
    return answers


def _next_scores(model: PreTrainedModel | PeftModel, rows: _Rows, policy: Policy) -> torch.Tensor:
    """The policy's next-token scores `[rows, vocab]` in float32, each forward kind with its own cache."""

    def forward(adapter_on: bool) -> torch.Tensor:
        out = model(
            input_ids=rows.input_ids,
            attention_mask=rows.attention_mask,
            position_ids=rows.position_ids,
            cache=rows.caches.get(adapter_on),
            use_cache=True,
            logits_to_keep=1,
        )
        rows.caches[adapter_on] = out.cache
        return out.logits[:, -1].float()

    with adapter_off(model):
        base = forward(adapter_on=False)
    if not policy.use_adapter:
        return base
    return customised_logits(forward(adapter_on=True), base, policy.alpha, policy.omega)
