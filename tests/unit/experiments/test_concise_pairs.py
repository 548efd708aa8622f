"""experiments/build_concise_pairs.py: held-out `concise` pairs never share a prompt with training pairs."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.build_concise_pairs import sampling_prompts
from qadapter.training.data import PreferencePair

DATA = Path(__file__).resolve().parents[3] / "adapters" / "examples" / "data"


def _pair(question: str, line: int) -> PreferencePair:
    prompt = (
        {"role": "user", "content": question},
        {"role": "assistant", "content": "?"},
        {"role": "user", "content": "more"},
    )
    return PreferencePair(prompt=prompt, chosen="a", rejected="b", line=line)


def test_consecutive_ranges_split_one_order_without_overlap() -> None:
    pairs = [_pair(f"question number {i % 40}", i) for i in range(80)]  # each first turn twice
    pairs.append(_pair("too short", 80))
    first, more = sampling_prompts(pairs, 0, 0, 15), sampling_prompts(pairs, 0, 15, 100)
    assert len(first) == 15 and len(more) == 25  # 40 distinct prompts; the 9-character one is left out
    assert not set(first) & set(more)
    assert first + more == sampling_prompts(pairs, 0, 0, 100)
    assert sampling_prompts(list(reversed(pairs)), 0, 0, 100) == first + more  # file order does not matter
    assert sampling_prompts(pairs, 1, 0, 100) != first + more


def test_shipped_held_out_prompts_are_not_training_prompts() -> None:
    def prompts(name: str) -> list[str]:
        lines = (DATA / name).read_text(encoding="utf-8").split("\n")  # not splitlines: answers hold U+2028
        return [json.loads(line)["prompt"] for line in lines if line.strip()]

    train, test = prompts("concise-train.jsonl"), prompts("concise-test.jsonl")
    assert len(test) == len(set(test))
    assert not set(test) & set(train)
