"""Preference pairs for the `concise` example: two sampled base-model answers per prompt, the shorter preferred.

Prompts are the first user turns of a preference file (the harmless training split). A pair is kept
only when the two answers differ in length by at least --min-gap tokens and the shorter one ended by
itself (an answer cut at --max-tokens has no known length). Output: TRL explicit form
{"prompt", "chosen", "rejected"}, split into train and held-out files.

    python adapters/examples/build_concise_pairs.py --prompts-from TRAIN.jsonl --train OUT --test OUT
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from qadapter.adapters.data import load_pairs
from qadapter.adapters.scoring import ModelRows
from qadapter.core.chat import user_prompt_ids
from qadapter.core.decode import DecodeParams, Stream, decode
from qadapter.core.model import load_base_model
from qadapter.core.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--prompts-from", type=Path, required=True, help="preference JSONL to take first user turns from"
    )
    parser.add_argument("--num-prompts", type=int, default=240)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--min-gap", type=int, default=8, help="least length difference in tokens")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--held-out", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    args = parser.parse_args()

    loaded = load_base_model(Settings(device="cpu"))
    tokenizer = loaded.tokenizer
    data = load_pairs(args.prompts_from, skip_bad=True)
    firsts = sorted({next(m["content"] for m in p.prompt if m["role"] == "user") for p in data.pairs})
    random.Random(args.seed).shuffle(firsts)
    prompts = [p for p in firsts if 10 <= len(p) <= 300][: args.num_prompts]
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
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part), encoding="utf-8")
    print(
        f"{len(rows)} pairs from {len(prompts)} prompts: {len(rows) - num_test} -> {args.train}, {num_test} -> {args.test}"
    )


if __name__ == "__main__":
    main()
