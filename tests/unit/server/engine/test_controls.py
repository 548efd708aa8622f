"""Sampling controls on a row of scores, against a hand computation (vLLM's definitions)."""

from __future__ import annotations

import math

import pytest
import torch

from qadapter.server.engine.controls import apply_controls
from qadapter.server.engine.detokenize import TextTracker
from qadapter.server.engine.request import GenerationRequest, SamplingParams, Sequence

EOS = frozenset({9})
SCORES = [2.0, -1.0, 0.5, -3.0, 1.0, 0.0, 4.0, -2.0, 3.0, 1.5]


def sequence(params: SamplingParams, prompt: tuple[int, ...] = (0, 1), output: tuple[int, ...] = ()) -> Sequence:
    seq = Sequence(GenerationRequest("r", prompt, None, params), knobs=None, tracker=TextTracker(str, stop=()))
    seq.output_ids.extend(output)
    return seq


def controlled(params: SamplingParams, **kwargs: tuple[int, ...]) -> list[float]:
    scores = torch.tensor([SCORES])
    return apply_controls(scores, [sequence(params, **kwargs)], EOS)[0].tolist()


def test_a_sequence_without_controls_keeps_its_scores() -> None:
    assert not SamplingParams().has_controls
    assert controlled(SamplingParams(), output=(2, 2, 6)) == SCORES


def test_the_repetition_penalty_divides_positive_and_multiplies_negative_scores_of_every_seen_token() -> None:
    got = controlled(SamplingParams(repetition_penalty=2.0), prompt=(0, 1), output=(6,))
    expected = list(SCORES)
    expected[0], expected[1], expected[6] = 2.0 / 2, -1.0 * 2, 4.0 / 2
    assert got == pytest.approx(expected)


def test_frequency_and_presence_penalties_count_generated_tokens_only() -> None:
    params = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25)
    got = controlled(params, prompt=(8,), output=(2, 2, 2, 4))
    expected = list(SCORES)
    expected[2] -= 3 * 0.5 + 0.25
    expected[4] -= 1 * 0.5 + 0.25
    assert got == pytest.approx(expected)  # token 8 is in the prompt only: untouched


def test_logit_bias_adds_to_the_named_tokens() -> None:
    got = controlled(SamplingParams(logit_bias=((3, 100.0), (6, -100.0))))
    expected = list(SCORES)
    expected[3] += 100
    expected[6] -= 100
    assert got == pytest.approx(expected)


def test_min_tokens_bans_eos_and_stop_tokens_until_reached() -> None:
    params = SamplingParams(min_tokens=2, stop_token_ids=(5,))
    early = controlled(params, output=(1,))
    assert early[9] == -math.inf and early[5] == -math.inf
    assert controlled(params, output=(1, 2)) == SCORES  # reached: nothing banned
    ignoring_eos = controlled(SamplingParams(min_tokens=2, ignore_eos=True))
    assert ignoring_eos[9] == SCORES[9]  # EOS is no stop token then
