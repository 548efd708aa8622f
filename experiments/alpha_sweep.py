"""Preference accuracy of Q-adapters served at several α (ω = α − 1): by their reward and by their policy.

    python adapters/examples/alpha_sweep.py --alphas 5 10 20 40 --adapter DIR [DIR ...] \
        --data val=build/examples/harmless-val.jsonl test=adapters/examples/data/harmless-test.jsonl

For each adapter, data set and α: the share of pairs ranked right by the Q-adapter's reward (as
`qadapter eval --alpha A --omega A-1` ranks them) and by its served policy's log-ratio to the base
Σ log π_custom/π_base. One forward of Q and one of the base per batch serve every α, so a sweep
costs about what one `qadapter eval` of the pairs does. One JSON object per adapter, set and α.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from qadapter.adapters.format import ValidatedAdapter, validate
from qadapter.core.cli_options import add_model_options, positive, settings_from, within
from qadapter.core.errors import QAdapterError
from qadapter.core.knobs import MAX_ALPHA
from qadapter.core.model import load_base_model
from qadapter.core.policy import customised_logits, sequence_rewards, token_rewards
from qadapter.training.data import PreferencePair, encode_pair, load_pairs
from qadapter.training.objectives import margins, pair_rows
from qadapter.training.rankings import PAIRS_PER_BATCH, adapter_method, reward_objective
from qadapter.training.scoring import base_window_logits, collate, taken_logprobs, window_logits


@torch.no_grad()
def sweep_margins(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    adapter: ValidatedAdapter,
    pairs: Sequence[PreferencePair],
    alphas: Sequence[float],
    max_length: int,
    pad_id: int,
) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """Per α: the reward margin and the policy log-ratio margin of each pair (chosen minus rejected)."""
    trained = reward_objective(adapter)  # γ, V position and normalisation as trained; α, ω as served
    device = next(model.parameters()).device
    reward: dict[float, list[torch.Tensor]] = {a: [] for a in alphas}
    policy: dict[float, list[torch.Tensor]] = {a: [] for a in alphas}
    for start in range(0, len(pairs), PAIRS_PER_BATCH):
        encoded = [encode_pair(tokenizer, p, max_length) for p in pairs[start : start + PAIRS_PER_BATCH]]
        batch = collate(pair_rows(encoded), pad_id, device)
        q, base = window_logits(model, batch), base_window_logits(model, batch)
        base_taken = taken_logprobs(base, batch.actions)
        for alpha in alphas:
            omega = alpha - 1
            tokens = token_rewards(
                q, base, batch.actions, batch.action_mask, alpha, omega, trained.gamma, trained.value_position
            )
            reward[alpha].append(margins(sequence_rewards(tokens, batch.action_mask, trained.reward_norm)).cpu())
            ratio = taken_logprobs(customised_logits(q, base, alpha, omega), batch.actions) - base_taken
            policy[alpha].append(margins((ratio * batch.action_mask).sum(-1)).cpu())
    return {a: (torch.cat(reward[a]), torch.cat(policy[a])) for a in alphas}


def named_file(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE (for example test=pairs.jsonl), got {text!r}")
    return name, Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--adapter", nargs="+", required=True, help="Q-adapter directories")
    parser.add_argument(
        "--data", nargs="+", required=True, type=named_file, help="NAME=FILE: held-out pairs (JSONL), named"
    )
    parser.add_argument(
        "--alphas",
        nargs="+",
        required=True,
        type=within(1.0, MAX_ALPHA),
        help="serving α, each served with ω = α − 1 (so α ≥ 1)",
    )
    parser.add_argument("--max-length", type=positive(int, False), default=192)
    args = parser.parse_args()
    alphas = list(dict.fromkeys(args.alphas))
    if len({name for name, _ in args.data}) < len(args.data):
        parser.error("--data: each NAME=FILE needs its own name")
    try:  # every input checked before the first (long) sweep
        data = {name: load_pairs(path, skip_bad=True).pairs for name, path in args.data}
        info = load_base_model(settings_from(args)).info
        adapters = [validate(Path(d), info) for d in args.adapter]
    except QAdapterError as exc:
        parser.error(str(exc))
    for name, pairs in data.items():
        if not pairs:
            parser.error(f"--data {name}: no usable pairs")
    for adapter in adapters:
        if adapter_method(adapter) != "qadapter":
            parser.error(f"{adapter.path}: a {adapter_method(adapter)} adapter has no Q-adapter reward to sweep")
    for adapter_dir, adapter in zip(args.adapter, adapters):
        loaded = load_base_model(settings_from(args))  # a fresh base for each: wrapping it in a PeftModel changes it
        model = PeftModel.from_pretrained(loaded.model, adapter_dir).eval()
        for name, pairs in data.items():
            swept = sweep_margins(model, loaded.tokenizer, adapter, pairs, alphas, args.max_length, loaded.pad_token_id)
            for alpha, (reward, policy) in swept.items():
                print(
                    json.dumps(
                        {
                            "adapter": adapter_dir,
                            "data": name,
                            "alpha": alpha,
                            "num_pairs": len(reward),
                            "reward_accuracy": round(float((reward > 0).float().mean()), 4),
                            "policy_log_ratio_accuracy": round(float((policy > 0).float().mean()), 4),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
