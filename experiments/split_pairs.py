"""Split a preference JSONL file into train and held-out files, reproducibly (a seeded shuffle of its lines).

python adapters/examples/split_pairs.py PAIRS.jsonl --held-out 0.1 --seed 0 --train OUT --test OUT
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", type=Path)
    parser.add_argument("--held-out", type=float, default=0.1, help="share of rows kept out (default 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    args = parser.parse_args()
    lines = [line for line in args.pairs.read_text(encoding="utf-8").split("\n") if line.strip()]
    random.Random(args.seed).shuffle(lines)
    num_test = max(1, round(len(lines) * args.held_out))
    for path, part in ((args.test, lines[:num_test]), (args.train, lines[num_test:])):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(part) + "\n", encoding="utf-8")
    print(f"{len(lines) - num_test} train rows -> {args.train}, {num_test} held-out rows -> {args.test}")


if __name__ == "__main__":
    main()
