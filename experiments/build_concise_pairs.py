"""Preference pairs for the `concise` example: two sampled base-model answers per prompt, the shorter preferred.

Prompts are the first user turns of a preference file (the harmless training split). A pair is kept
only when the two answers differ in length by at least --min-gap tokens and the shorter one ended by
itself (an answer cut at --max-tokens has no known length). Output: TRL explicit form
{"prompt", "chosen", "rejected"}, split into train and held-out files. --skip-prompts takes prompts
further down the same shuffled order, so a second call with --held-out 1 adds held-out pairs whose
prompts no training pair has.

    python experiments/build_concise_pairs.py --prompts-from TRAIN.jsonl --train OUT --test OUT
    python experiments/build_concise_pairs.py --prompts-from TRAIN.jsonl --skip-prompts 240 --held-out 1 --test OUT
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from qadapter.core.chat import user_prompt_ids
from qadapter.core.decode import DecodeParams, Stream, decode
from qadapter.core.model import load_base_model
from qadapter.core.settings import Settings
from qadapter.training.data import PreferencePair, load_pairs
from qadapter.training.scoring import ModelRows


def sampling_prompts(pairs: list[PreferencePair], seed: int, skip: int, count: int) -> list[str]:
    """Distinct first user turns of 10-300 characters in one seeded order, prompts skip … skip+count of it.

    The order depends on the set of prompts and the seed alone, so calls with the same file and seed
    and disjoint ranges never share a prompt.
    """
    firsts = sorted({next(m["content"] for m in p.prompt if m["role"] == "user") for p in pairs})
    random.Random(seed).shuffle(firsts)
    return [p for p in firsts if 10 <= len(p) <= 300][skip : skip + count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--prompts-from", type=Path, required=True, help="preference JSONL to take first user turns from"
    )
    parser.add_argument("--num-prompts", type=int, default=240)
    parser.add_argument("--skip-prompts", type=int, default=0, help="start this far down the shuffled prompts")
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--min-gap", type=int, default=8, help="least length difference in tokens")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--held-out", type=float, default=0.1, help="fraction of pairs for --test (1: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=Path, help="training pairs (needed unless --held-out is 1)")
    parser.add_argument("--test", type=Path, required=True)
    args = parser.parse_args()
    if not 0 < args.held_out <= 1 or (args.held_out < 1 and args.train is None):
        parser.error("--held-out must be in (0, 1], and --train is needed when it is below 1")

    loaded = load_base_model(Settings(device="cpu"))
    tokenizer = loaded.tokenizer
    pairs = load_pairs(args.prompts_from, skip_bad=True).pairs
    prompts = sampling_prompts(pairs, args.seed, args.skip_prompts, args.num_prompts)
    ids = [user_prompt_ids(tokenizer, p) for p in prompts]
    # Each prompt twice in one call: the two samples differ because each position has its own seed.
    params = DecodeParams(args.max_tokens, args.temperature, args.seed)
    decoded = decode(
        ModelRows(loaded.model),
        ids + ids,
        [Stream(None)],
        params,
        frozenset({tokenizer.eos_token_id}),
        loaded.pad_token_id,
        progress="sampling answers",
    )
    answers = [per_stream[0] for per_stream in decoded]
    rows = []
    for prompt, first, second in zip(prompts, answers[: len(prompts)], answers[len(prompts) :]):
        short, long = sorted((first, second), key=len)
        if short[-1:] != [tokenizer.eos_token_id] or len(long) - len(short) < args.min_gap:
            continue
        text = [tokenizer.decode(a, skip_special_tokens=True).strip() for a in (short, long)]
        if text[0] and text[0] != text[1]:
            rows.append({"prompt": prompt, "chosen": text[0], "rejected": text[1]})
    num_test = max(1, round(len(rows) * args.held_out))
    for path, part in ((args.test, rows[:num_test]), (args.train, rows[num_test:])):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    print(
        f"{len(rows)} pairs from {len(prompts)} prompts: {len(rows) - num_test} -> {args.train}, {num_test} -> {args.test}"
    )


if __name__ == "__main__":
    main()
