"""Reference decoding for one prompt: every output stream of the prompt in one batched forward per token.

A Q-adapter stream owns two rows (adapter on, adapter off) that see the same tokens with separate KV;
a base stream owns one row. The engine must reproduce these tokens exactly (greedy).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from adapters.policy import DEFAULT_ALPHA, DEFAULT_OMEGA, customised_logits
from server.engine.request import GREEDY_BELOW_TEMPERATURE
from server.lora import AdapterHost


@dataclass(frozen=True)
class Stream:
    """One output of the prompt: the base model (adapter None) or a Q-adapter with its α, ω."""

    adapter: str | None = None
    alpha: float = DEFAULT_ALPHA
    omega: float = DEFAULT_OMEGA

    @property
    def label(self) -> str:
        return "base" if self.adapter is None else self.adapter

    @property
    def row_adapters(self) -> tuple[str | None, ...]:
        """Its batch rows: the adapter row then the base row, or one base row."""
        return (self.adapter, None) if self.adapter else (None,)


@dataclass(frozen=True)
class DecodeParams:
    """How to pick tokens: temperature 0 is greedy; seed makes sampling repeatable."""

    max_tokens: int = 64
    temperature: float = 0.0
    seed: int | None = None


def decode_steps(
    host: AdapterHost,
    prompt_ids: Sequence[int],
    streams: Sequence[Stream],
    params: DecodeParams,
    stop_token_ids: frozenset[int],
) -> Iterator[list[int | None]]:
    """Yield, per step, each stream's new token (None once it has stopped)."""
    row_adapters = [name for s in streams for name in s.row_adapters]
    row_streams = [i for i, s in enumerate(streams) for _ in s.row_adapters]  # row → its stream
    first_rows = [row_streams.index(i) for i in range(len(streams))]
    device = host.device
    generators = [_generator(params.seed, device) for _ in streams]
    input_ids = torch.tensor([list(prompt_ids)] * len(row_adapters), device=device)  # [rows, prompt]
    cache = None
    finished = [False] * len(streams)
    for _ in range(params.max_tokens):
        last, cache = host.forward(input_ids, cache, row_adapters)  # [rows, vocab]
        tokens = []
        for stream, row, generator in zip(streams, first_rows, generators):
            if stream.adapter is None:
                scores = last[row].float()
            else:
                scores = customised_logits(last[row], last[row + 1], stream.alpha, stream.omega)
            tokens.append(_pick(scores, params.temperature, generator))
        yield [None if done else token for done, token in zip(finished, tokens)]
        finished = [done or token in stop_token_ids for done, token in zip(finished, tokens)]
        if all(finished):
            return
        input_ids = torch.tensor([[tokens[i]] for i in row_streams], device=device)  # [rows, 1]


def decode(
    host: AdapterHost,
    prompt_ids: Sequence[int],
    streams: Sequence[Stream],
    params: DecodeParams,
    stop_token_ids: frozenset[int],
) -> list[list[int]]:
    """Each stream's generated token ids (the stop token included when one was produced)."""
    outputs: list[list[int]] = [[] for _ in streams]
    for step in decode_steps(host, prompt_ids, streams, params, stop_token_ids):
        for output, token in zip(outputs, step):
            if token is not None:
                output.append(token)
    return outputs


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _pick(scores: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    if temperature < GREEDY_BELOW_TEMPERATURE:
        return int(scores.argmax())
    probs = torch.softmax(scores / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
