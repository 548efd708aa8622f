"""Prompt log-probabilities (completions' echo) from the engine's prefill, against a hand computation:
each prompt alone, through a reference adapter host, under the served policy (α/ω)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from qadapter.core.base import BaseModelInfo
from qadapter.core.knobs import Knobs
from qadapter.core.lora import AdapterHost
from qadapter.core.model import LoadedModel
from qadapter.core.policy import stream_scores
from qadapter.server.engine.request import GenerationRequest, TokenEvent
from qadapter.testing.synthetic_adapters import random_adapter
from tests.conftest import tiny_model
from tests.unit.server.engine.test_engine import ADAPTERS, PROMPTS, _engine, drive, greedy, tokens

KNOBS = Knobs(0.5, 0.3)


def expected_prompt_logprobs(tmp_path: Path, prompt: list[int], adapter: str | None) -> list[float]:
    """log π_served(x_t | x_<t) for t ≥ 1, from one forward of the prompt alone."""
    host = AdapterHost(tiny_model())
    info = BaseModelInfo.from_model(tiny_model(), "tiny-llama")
    if adapter is not None:  # the engine's adapters are random_adapter(…, seed = their index in ADAPTERS)
        seed, b_std = list(ADAPTERS).index(adapter), ADAPTERS[adapter]
        weights = random_adapter(tmp_path / f"ref-{adapter}", info, name=adapter, b_std=b_std, seed=seed).read_weights()
        host.load(adapter, weights)
    ids = torch.tensor([prompt, prompt])
    with torch.inference_mode():
        logits, _ = host.forward(ids, None, [adapter, None], all_positions=True)
    scores = stream_scores(logits, [0], [1], [None if adapter is None else KNOBS])[0]  # [columns, vocab]
    logprobs = torch.log_softmax(scores, dim=-1)
    return [float(logprobs[t - 1, prompt[t]]) for t in range(1, len(prompt))]


def prompt_entries(events: list[TokenEvent]) -> list[tuple[int, float | None]]:
    assert all(not e.prompt_logprobs for e in events[1:]), "the prompt's log-probabilities come once, first"
    return [(e.token_id, e.logprob) for e in events[0].prompt_logprobs]


@pytest.mark.parametrize("chunk_tokens", [2048, 4])
def test_prompt_logprobs_match_a_hand_computation_in_any_group_and_chunking(
    tmp_path: Path, embedded: LoadedModel, chunk_tokens: int
) -> None:
    """Four prompts of different lengths (left-padded in one group; the longest is scored in several
    windows), three on adapters, prefilled whole or 4 token-rows a step (chunks that split prompts);
    one more request asks nothing and is unchanged."""
    long_prompt = [(7 * i) % 500 + 1 for i in range(150)]
    asked = {"a": (PROMPTS[0], "loud"), "b": (PROMPTS[1], None), "c": (PROMPTS[2], "odd"), "d": (long_prompt, "calm")}
    knobs = {"alpha": KNOBS.alpha, "omega": KNOBS.omega}
    plan = [
        (0, GenerationRequest(rid, tuple(p), a, greedy(3, prompt_logprobs=2, **({} if a is None else knobs))))
        for rid, (p, a) in asked.items()
    ]
    plan.append((0, GenerationRequest("quiet", tuple(PROMPTS[3]), "calm", greedy(3))))
    engine = _engine(tmp_path, embedded, start=False, prefill_chunk_tokens=chunk_tokens)
    results = asyncio.run(drive(engine, plan))
    for rid, (prompt, adapter) in asked.items():
        entries = prompt_entries(results[rid])
        assert [t for t, _ in entries] == prompt
        assert entries[0][1] is None
        got = [lp for _, lp in entries[1:]]
        assert got == pytest.approx(expected_prompt_logprobs(tmp_path, prompt, adapter), abs=1e-4)
        assert all(len(e.top) == 2 and e.top[0][1] >= e.logprob for e in results[rid][0].prompt_logprobs[1:])
    alone = asyncio.run(drive(_engine(tmp_path / "alone", embedded, start=False), [plan[-1]]))
    assert not results["quiet"][0].prompt_logprobs
    assert tokens(results["quiet"]) == tokens(alone["quiet"])
