"""Training speed: micro-batches per second, forward and backward, before and after the cached path.

    python bench/training.py --json [--quick] [--num-pairs 24] [--batch-size 8] [--max-length 192]

On the embedded model with the default LoRA (rank 8 on q_proj, v_proj), over the shipped held-out
harmless pairs, for a LoRA on every layer (`every_…`) and on the top quarter (`top_quarter_…`):
- `<lora>_<method>_before_steps_s`: the full-window step (`qadapter.testing.reference_step`: every
  layer run, the head over the whole response window, the frozen base run again every micro-batch);
- `<lora>_<method>_after_steps_s`: `training/step.py` (the layers below the LoRA and the base's side
  from caches, the head at response states only); `<lora>_<method>_speedup` the ratio;
- `<lora>_lower_cache_s_per_pair`, `<lora>_<method>_base_cache_s_per_pair`: the caches' cost, paid
  once per dataset (per pair: multiply by the training set's size).
Both paths run in this one process, alternately, on the same micro-batches.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from peft import LoraConfig, get_peft_model

from qadapter.adapters.format import LoraSpec
from qadapter.core.cli_options import add_model_options, settings_from
from qadapter.core.model import load_base_model
from qadapter.testing.reference_step import full_window_loss
from qadapter.training.data import EncodedPair, encode_pair, load_pairs
from qadapter.training.lower_layers import LowerLayers
from qadapter.training.objectives import METHODS, Objective
from qadapter.training.step import BaseCache, compute_step

PAIRS = Path(__file__).resolve().parents[1] / "adapters" / "examples" / "data" / "harmless-test.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few pairs, short rows")
    parser.add_argument("--num-pairs", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per micro-batch")
    parser.add_argument("--max-length", type=int, default=192)
    add_model_options(parser)
    args = parser.parse_args()
    num_pairs, max_length = (8, 64) if args.quick else (args.num_pairs, args.max_length)
    batch_size = min(args.batch_size, num_pairs)
    report: dict[str, object] = {"num_pairs": num_pairs, "batch_size": batch_size, "max_length": max_length}
    report["threads"] = torch.get_num_threads()
    for lora in ("every", "top_quarter"):
        loaded = load_base_model(settings_from(args))  # afresh: peft wraps the model it is given in place
        num_layers = loaded.model.config.num_hidden_layers
        spec = LoraSpec().on_top(num_layers // 4 if lora == "top_quarter" else 0, num_layers)
        model = get_peft_model(loaded.model, LoraConfig(**spec.peft_config())).train()
        pairs = [encode_pair(loaded.tokenizer, p, max_length) for p in load_pairs(PAIRS, skip_bad=True).pairs]
        report |= measure(model, pairs[:num_pairs], spec.first_layer, loaded.pad_token_id, batch_size, lora)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))


def measure(
    model: torch.nn.Module, pairs: list[EncodedPair], first_layer: int, pad_id: int, batch_size: int, lora: str
) -> dict[str, float]:
    """Each method's micro-batches per second before and after, and the once-per-dataset caches' cost."""
    batches = [list(range(i, min(i + batch_size, len(pairs)))) for i in range(0, len(pairs), batch_size)]
    started = time.perf_counter()
    lower = LowerLayers.build(model, pairs, first_layer, pad_id, batch_size, show=False) if first_layer else None
    figures = (
        {f"{lora}_lower_cache_s_per_pair": round((time.perf_counter() - started) / len(pairs), 4)} if lower else {}
    )
    for method in METHODS:
        objective = Objective(method)
        started = time.perf_counter()
        cache = BaseCache.build(model, pairs, method, pad_id, batch_size, show=False, lower=lower)
        figures[f"{lora}_{method}_base_cache_s_per_pair"] = round((time.perf_counter() - started) / len(pairs), 4)
        before = after = 0.0
        for chosen in batches:
            micro = [pairs[i] for i in chosen]
            rows = None if cache is None else cache.rows(chosen)
            entering = None if lower is None else lower.rows(chosen, chosen_only=method == "sft")
            before += timed(model, lambda: full_window_loss(model, micro, objective, pad_id))  # noqa: B023
            after += timed(model, lambda: compute_step(model, micro, objective, pad_id, rows, entering).loss)  # noqa: B023
        figures[f"{lora}_{method}_before_steps_s"] = round(len(batches) / before, 3)
        figures[f"{lora}_{method}_after_steps_s"] = round(len(batches) / after, 3)
        figures[f"{lora}_{method}_speedup"] = round(before / after, 2)
    return figures


def timed(model: torch.nn.Module, loss_of: Callable[[], torch.Tensor]) -> float:
    """Seconds of one forward and backward (called at once: the loop's variables are current)."""
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    loss_of().backward()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
