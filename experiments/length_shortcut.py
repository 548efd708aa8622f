"""How much of an adapter's ranking of preference pairs is "the shorter response wins"?

    python adapters/examples/length_shortcut.py --data adapters/examples/data/harmless-test.jsonl \
        --adapter base adapters/examples/harmless build/examples/harmless-dpo

For each adapter (or `base`), over the held-out pairs: the accuracy of its implicit reward (as
`qadapter eval` ranks), the accuracy of its served policy's log-ratio to the base
Σ log π_custom/π_base (what the adapter changed; for SFT/DPO the two are the same), how often each
agrees with "the shorter response wins" (pairs of equal length left out), and both accuracies on the
pairs whose responses differ by at most --near tokens. One JSON object per adapter.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import PeftModel

from qadapter.adapters.format import validate
from qadapter.core.cli_options import add_model_options, positive, settings_from
from qadapter.core.model import LoadedModel, load_base_model
from qadapter.training.data import encode_pair, load_pairs
from qadapter.training.objectives import log_ratios, margins, pair_rows
from qadapter.training.rankings import PAIRS_PER_BATCH, pair_margins
from qadapter.training.scoring import collate


def shares(margin: torch.Tensor, shorter_wins: torch.Tensor, near: torch.Tensor) -> dict[str, float]:
    """Accuracy, agreement with "shorter wins" where lengths differ, accuracy on near-equal lengths."""
    differ = shorter_wins != 0
    return {
        "accuracy": float((margin > 0).float().mean()),
        "agrees_with_shorter_wins": float(((margin > 0) == (shorter_wins > 0))[differ].float().mean()),
        "accuracy_near_equal_length": float((margin[near] > 0).float().mean()),
    }


@torch.no_grad()
def report(loaded: LoadedModel, adapter_arg: str, data: Path, max_length: int, near_tokens: int) -> dict[str, object]:
    tokenizer, pad_id = loaded.tokenizer, loaded.pad_token_id
    pairs = load_pairs(data, skip_bad=True).pairs
    encoded = [encode_pair(tokenizer, p, max_length) for p in pairs]
    length_gap = torch.tensor([len(e.rejected_ids) - len(e.chosen_ids) for e in encoded], dtype=torch.float32)
    shorter_wins, near = torch.sign(length_gap), length_gap.abs() <= near_tokens
    out: dict[str, object] = {"adapter": adapter_arg, "num_pairs": len(pairs), "num_near_equal_length": int(near.sum())}
    if adapter_arg == "base":
        reward = pair_margins(loaded.model, tokenizer, None, pairs, max_length, pad_id)
        return out | {"reward": shares(reward, shorter_wins, near)}
    adapter = validate(Path(adapter_arg), loaded.info)
    scored = PeftModel.from_pretrained(loaded.model, adapter_arg).eval()
    reward = pair_margins(scored, tokenizer, adapter, pairs, max_length, pad_id)
    policy = torch.cat(
        [
            margins(
                log_ratios(
                    scored,
                    collate(pair_rows(encoded[i : i + PAIRS_PER_BATCH]), pad_id, loaded.device),
                    adapter.manifest.knobs,
                )
            ).cpu()
            for i in range(0, len(encoded), PAIRS_PER_BATCH)
        ]
    )
    return out | {"reward": shares(reward, shorter_wins, near), "policy_log_ratio": shares(policy, shorter_wins, near)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--data", type=Path, required=True, help="held-out pairs (JSONL)")
    parser.add_argument("--adapter", nargs="+", required=True, help="adapter directories, or 'base'")
    parser.add_argument("--max-length", type=positive(int, False), default=192)
    parser.add_argument(
        "--near", type=positive(int, True), default=5, help="'near-equal length': at most this many tokens apart"
    )
    args = parser.parse_args()
    for adapter_arg in args.adapter:  # a fresh base for each: wrapping it in a PeftModel changes it
        loaded = load_base_model(settings_from(args))
        print(json.dumps(report(loaded, adapter_arg, args.data, args.max_length, args.near)), flush=True)


if __name__ == "__main__":
    main()
