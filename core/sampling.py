"""The one sampling function: one token from a row of scores, greedy or with temperature, top-k and
top-p; the engine and the offline decode loop both pick their tokens here."""

from __future__ import annotations

import torch

from qadapter.core.temperature import is_greedy


def new_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator seeded with `seed`, or from fresh entropy when it is None."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def pick_token(
    scores: torch.Tensor,
    temperature: float,
    generator: torch.Generator,
    top_p: float = 1.0,
    top_k: int = 0,
) -> int:
    """One token id from float32 scores `[vocab]`; top_k 0 and top_p 1 mean no limit."""
    if is_greedy(temperature):
        return int(scores.argmax())
    scores = scores / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, index = torch.sort(scores, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # keep the first token that crosses top_p
        drop[0] = False  # the most likely token always stays (a tiny top_p rounds to 0 in float32)
        scores = scores.scatter(0, index, ordered.masked_fill(drop, float("-inf")))
    return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator))
