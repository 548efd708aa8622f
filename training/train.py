"""`qadapter train`: a LoRA on the frozen base, trained by one of the objectives, saved as an adapter.

The base stays frozen; only the LoRA learns. Runs on whatever device the base model is on.
Checkpoints (LoRA, optimizer, schedule, RNG) go to `<out>.checkpoint/` so `--resume` continues
exactly where a run stopped: the data order is a function of the seed and the step.
"""

from __future__ import annotations

import math
import random
import shutil
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from tqdm.auto import tqdm

from qadapter.adapters.format import (
    LoraSpec,
    Manifest,
    ValidatedAdapter,
    check_name,
    create,
    validate,
)
from qadapter.core.base import BaseModelInfo
from qadapter.core.errors import InvalidData
from qadapter.core.knobs import Knobs
from qadapter.core.model import LoadedModel
from qadapter.training.checkpoints import Checkpoints
from qadapter.training.data import EncodedPair, PreferenceData, encode_pair
from qadapter.training.lower_layers import LowerLayers
from qadapter.training.objectives import Objective, StepFigures
from qadapter.training.step import BaseCache, compute_step

RUNNING_WINDOW_PAIRS = 200  # the progress bar's accuracy is over the last this many pairs


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (recorded in the manifest)."""

    objective: Objective = field(default_factory=Objective)
    lora: LoraSpec = field(default_factory=LoraSpec)
    learning_rate: float = 3e-4
    warmup_ratio: float = 0.1  # linear warm-up over this share of the steps, then linear decay to 0
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    batch_size: int = 2  # pairs per forward
    grad_accum: int = 4  # forwards per optimizer step
    max_length: int = 512  # tokens per prompt+response; the prompt's start is cut
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0

    def num_steps(self, num_pairs: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        micro_batches_per_epoch = math.ceil(num_pairs / self.batch_size)  # the last one may be short
        return max(1, math.ceil(self.epochs * micro_batches_per_epoch / self.grad_accum))


@dataclass(frozen=True)
class TrainOptions:
    """How a run is carried out and recorded; none of it changes the weights."""

    name: str
    description: str = ""
    eval_every: int = 0  # optimizer steps between evaluations on the eval data; 0 = at the end only
    checkpoint_every: int = 50
    resume: bool = False
    command: str = ""
    show_progress: bool = True
    # The knobs the manifest serves a Q-adapter with (None: the objective's). With α = 1 + ω a larger α
    # moves the served policy less for the same Q; the reward ranking hardly changes.
    serve_knobs: Knobs | None = None


@dataclass
class RunningFigures:
    """Loss and pair ranking over the recent micro-batches, for the progress bar and the manifest."""

    losses: deque[float] = field(default_factory=lambda: deque(maxlen=50))
    ranked: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=RUNNING_WINDOW_PAIRS))

    def add(self, figures: StepFigures) -> None:
        self.losses.append(float(figures.loss.detach()))
        if figures.num_correct is not None:
            self.ranked.append((figures.num_correct, figures.num_pairs))

    def summary(self) -> dict[str, float]:
        out = {"loss": sum(self.losses) / max(len(self.losses), 1)}
        if self.ranked:
            out["accuracy"] = sum(c for c, _ in self.ranked) / sum(n for _, n in self.ranked)
        return out


def check_output(out: Path, name: str) -> None:
    """Fail before any work when the adapter could not be written."""
    check_name(name)
    if Path(out).exists():
        raise InvalidData(f"output {str(out)!r} already exists; choose another --out or delete it")


def check_options(config: TrainConfig, options: TrainOptions) -> None:
    """Serving knobs apply to a Q-adapter only: SFT and DPO adapters are plain LoRA policies, served
    with α 1, ω 0."""
    if config.objective.method != "qadapter" and options.serve_knobs is not None:
        raise InvalidData(
            f"--serve-alpha/--serve-omega apply to Q-adapters only; {config.objective.method} adapters are served "
            "with alpha 1, omega 0"
        )


def train(
    loaded: LoadedModel,
    data: PreferenceData,
    out: Path,
    config: TrainConfig,
    options: TrainOptions,
    eval_data: PreferenceData | None = None,
) -> ValidatedAdapter:
    """Train a LoRA on `data` by `config.objective` and write it to `out` as a validated adapter."""
    out = Path(out)
    check_options(config, options)
    check_output(out, options.name)
    info = loaded.info
    pairs = [encode_pair(loaded.tokenizer, pair, config.max_length) for pair in data.pairs]
    eval_pairs = [encode_pair(loaded.tokenizer, p, config.max_length) for p in eval_data.pairs] if eval_data else []
    torch.manual_seed(config.seed)  # the LoRA's initial A
    peft_model = get_peft_model(loaded.model, LoraConfig(**config.lora.peft_config()))
    checkpoints = Checkpoints(out.with_name(out.name + ".checkpoint"), _run_identity(config, data, info))
    running, final_eval = _optimise(peft_model, pairs, eval_pairs, config, options, checkpoints, loaded.pad_token_id)
    training = {
        "method": config.objective.method,
        "data": {"file_sha256": data.sha256, "num_pairs": len(pairs), "num_skipped": data.num_skipped},
        "hyperparameters": _hyperparameters(config),
        "steps": config.num_steps(len(pairs)),
        "final": {f"train_{k}": round(v, 4) for k, v in running.summary().items()}
        | {f"eval_{k}": round(v, 4) for k, v in final_eval.items()},
        "command": options.command,
    }
    adapter = _save(peft_model, info, out, config, options, training)
    checkpoints.remove()
    return adapter


def _optimise(
    model: PeftModel,
    pairs: Sequence[EncodedPair],
    eval_pairs: Sequence[EncodedPair],
    config: TrainConfig,
    options: TrainOptions,
    checkpoints: Checkpoints,
    pad_id: int,
) -> tuple[RunningFigures, dict[str, float]]:
    """The optimisation loop (from the checkpoint with --resume); the running and the last eval figures."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    num_steps = config.num_steps(len(pairs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_then_decay(num_steps, config.warmup_ratio))
    start = checkpoints.restore(model, optimizer, scheduler) if options.resume else 0
    lower, base = _caches(model, pairs, config, pad_id, options.show_progress) if start < num_steps else (None, None)
    running, final_eval = RunningFigures(), {}
    progress = tqdm(
        total=num_steps, initial=start, desc=f"train {options.name}", unit="step", disable=not options.show_progress
    )
    for step in range(start, num_steps):
        model.train()
        for micro in range(config.grad_accum):
            chosen = _micro_batch(len(pairs), config, step * config.grad_accum + micro)
            rows = None if base is None else base.rows(chosen)
            entering = None if lower is None else lower.rows(chosen, chosen_only=config.objective.method == "sft")
            figures = compute_step(model, [pairs[i] for i in chosen], config.objective, pad_id, rows, entering)
            (figures.loss / config.grad_accum).backward()
            running.add(figures)
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.update()
        progress.set_postfix({k: f"{v:.3f}" for k, v in running.summary().items()})
        is_last = step + 1 == num_steps
        if eval_pairs and (is_last or (options.eval_every and (step + 1) % options.eval_every == 0)):
            final_eval = evaluate_objective(model, eval_pairs, config, pad_id)
            progress.write(f"step {step + 1}: eval " + ", ".join(f"{k} {v:.3f}" for k, v in final_eval.items()))
        if options.checkpoint_every and (step + 1) % options.checkpoint_every == 0 and not is_last:
            checkpoints.save(model, optimizer, scheduler, step + 1)
    progress.close()
    model.eval()
    return running, final_eval


def _caches(
    model: PeftModel, pairs: Sequence[EncodedPair], config: TrainConfig, pad_id: int, show: bool
) -> tuple[LowerLayers | None, BaseCache | None]:
    """What every step would compute again, computed once: the stream entering the first adapted
    layer (a LoRA on the top layers only), then the frozen base's side of each pair."""
    first_layer, size = config.lora.first_layer, config.batch_size
    lower = LowerLayers.build(model, pairs, first_layer, pad_id, size, show) if first_layer else None
    return lower, BaseCache.build(model, pairs, config.objective.method, pad_id, size, show, lower)


def _micro_batch(num_pairs: int, config: TrainConfig, index: int) -> list[int]:
    """The pairs of the `index`-th micro-batch: epochs are reshuffled with seed+epoch, so it depends
    on nothing else."""
    per_epoch = math.ceil(num_pairs / config.batch_size)
    epoch, position = divmod(index, per_epoch)
    order = list(range(num_pairs))
    random.Random(config.seed + epoch).shuffle(order)
    return order[position * config.batch_size : (position + 1) * config.batch_size]


def _warmup_then_decay(num_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, round(num_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (num_steps - step) / max(1, num_steps - warmup))

    return factor


@torch.no_grad()
def evaluate_objective(
    model: PeftModel, pairs: Sequence[EncodedPair], config: TrainConfig, pad_id: int
) -> dict[str, float]:
    """The objective's loss and pair accuracy on held-out pairs (dropout off)."""
    model.eval()
    running = RunningFigures(losses=deque(), ranked=deque())
    for start in range(0, len(pairs), config.batch_size):
        running.add(compute_step(model, pairs[start : start + config.batch_size], config.objective, pad_id))
    return running.summary()


def _hyperparameters(config: TrainConfig) -> dict[str, Any]:
    values = asdict(config)
    values["lora"]["target_modules"] = list(config.lora.target_modules)
    return values


def _run_identity(config: TrainConfig, data: PreferenceData, info: BaseModelInfo) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the same base, data and hyper-parameters."""
    return {"base": info.fingerprint, "data_sha256": data.sha256, "hyperparameters": _hyperparameters(config)}


def _save(
    model: PeftModel,
    info: BaseModelInfo,
    out: Path,
    config: TrainConfig,
    options: TrainOptions,
    training: dict[str, Any],
) -> ValidatedAdapter:
    """Write the adapter into a staging directory, validate it, then rename it into place."""
    served = options.serve_knobs or config.objective.served_knobs
    manifest = Manifest(
        name=options.name,
        description=options.description or f"{config.objective.method} adapter",
        base_model={"id": info.id, "fingerprint": info.fingerprint},
        alpha=served.alpha,
        omega=served.omega,
        training=training,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    create(staging, manifest, config.lora, get_peft_model_state_dict(model), info)
    staging.rename(out)
    return validate(out, info)
