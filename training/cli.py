"""`qadapter train` and `qadapter eval`: argument parsing, then thin calls into `train` and `evaluate`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from qadapter.adapters.format import LoraSpec
from qadapter.core.cli_options import (
    DefaultsFormatter,
    add_knob_options,
    add_model_options,
    add_strength_option,
    knob_choice,
    positive,
    settings_from,
    within,
)
from qadapter.core.errors import InvalidData
from qadapter.core.knobs import DEFAULT_ALPHA, DEFAULT_OMEGA, MAX_ALPHA, MAX_OMEGA, MAX_STRENGTH, MIN_ALPHA, Knobs
from qadapter.core.model import LoadedModel, load_base_model
from qadapter.core.policy import DEFAULT_BETA, DEFAULT_GAMMA
from qadapter.training.answers import SPLITS, EvalSets
from qadapter.training.data import PreferencePair, load_pairs
from qadapter.training.evaluate import ServedPoint, evaluate, format_report, read_adapter_manifest
from qadapter.training.frontier import check_out_dir, format_frontier, strength_points, sweep, write_frontier
from qadapter.training.objectives import METHODS, Objective
from qadapter.training.train import TrainConfig, TrainOptions, check_options, check_output, train

_DEFAULTS = TrainConfig()
# The longest bundled held-out pair (harmless-test) is 812 tokens: evaluation sees every one whole.
EVAL_MAX_LENGTH = 1024


def add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train a Q-adapter (or an SFT / DPO LoRA baseline) from preference pairs",
        description="Train a LoRA on the frozen base model from preference pairs (JSONL: chat form "
        '{"chosen": [messages], "rejected": [messages]} or TRL form {"prompt", "chosen", "rejected"}) and '
        "write it as an adapter directory ready for `qadapter serve` or upload.",
        formatter_class=DefaultsFormatter,
    )
    add_model_options(parser)
    parser.add_argument("--data", type=Path, required=True, help="training pairs (JSONL)")
    parser.add_argument("--out", type=Path, required=True, help="adapter directory to create (must not exist)")
    parser.add_argument("--name", help="adapter name (default: the --out directory's name)")
    parser.add_argument("--description", default="", help="one line for the manifest")
    parser.add_argument("--method", choices=METHODS, default="qadapter", help="qadapter, or a baseline")
    parser.add_argument("--eval-data", type=Path, help="held-out pairs: loss and accuracy reported during training")
    parser.add_argument("--eval-every", type=positive(int, True), default=0, help="steps between evals (0: at the end)")
    parser.add_argument("--skip-bad", action="store_true", help="skip (and count) bad rows instead of stopping")
    _add_optimisation_options(parser.add_argument_group("optimisation"))
    _add_objective_options(parser.add_argument_group("objective (docs/design.md §1)"))
    group = parser.add_argument_group("LoRA")
    group.add_argument("--lora-r", type=positive(int, False), default=LoraSpec.r)
    group.add_argument("--lora-alpha", type=positive(int, False), default=LoraSpec.lora_alpha)
    group.add_argument("--lora-dropout", type=within(0.0, 0.9), default=LoraSpec.dropout)
    group.add_argument("--target-modules", default=",".join(LoraSpec.target_modules), help="comma-separated")
    group.add_argument("--lora-top-layers", type=positive(int, True), default=0, help="adapt the top K layers (0: all)")
    parser.set_defaults(run=_run_train)


def _add_optimisation_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--epochs", type=positive(float, False), default=_DEFAULTS.epochs, help="passes over the data")
    group.add_argument("--max-steps", type=positive(int, False), help="optimizer steps (overrides --epochs)")
    group.add_argument(
        "--batch-size", type=positive(int, False), default=_DEFAULTS.batch_size, help="pairs per forward"
    )
    group.add_argument(
        "--grad-accum", type=positive(int, False), default=_DEFAULTS.grad_accum, help="forwards per step"
    )
    group.add_argument("--lr", type=positive(float, False), default=_DEFAULTS.learning_rate, help="AdamW learning rate")
    group.add_argument("--warmup-ratio", type=within(0.0, 1.0), default=_DEFAULTS.warmup_ratio)
    group.add_argument("--weight-decay", type=positive(float, True), default=_DEFAULTS.weight_decay)
    group.add_argument(
        "--max-length",
        type=positive(int, False),
        default=_DEFAULTS.max_length,
        help="tokens per prompt+response; longer prompts lose their start",
    )
    group.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="LoRA init and data order")
    group.add_argument("--checkpoint-every", type=positive(int, True), default=50, help="steps (0: never)")
    group.add_argument("--resume", action="store_true", help="continue from <out>.checkpoint")


def _add_objective_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--alpha", type=within(MIN_ALPHA, MAX_ALPHA), default=DEFAULT_ALPHA)
    group.add_argument("--omega", type=within(0.0, MAX_OMEGA), default=DEFAULT_OMEGA)
    group.add_argument("--gamma", type=within(0.0, 1.0), default=DEFAULT_GAMMA)
    group.add_argument(
        "--beta", type=positive(float, True), default=DEFAULT_BETA, help="χ² weight (qadapter) or DPO temperature (dpo)"
    )
    group.add_argument(
        "--value-position",
        choices=["same", "next"],
        default=Objective.value_position,
        help="V(s_t) as in the paper's public code (sound: the loss depends on the served policy only), or "
        "V(s_{t+1}) as in the paper's derivation (keeps a V(s_0) term that length normalisation does not cancel)",
    )
    group.add_argument(
        "--reward-norm",
        choices=["length", "padded"],
        default="length",
        help="divide R(y) by the response length, or by the micro-batch's longest response",
    )
    add_knob_options(
        group,
        ("--serve-alpha", "--serve-omega"),
        "written to the manifest for serving (default: --alpha, --omega); training is unchanged. Give both, and "
        "keep alpha = 1 + omega so that an untrained adapter serves the base model",
    )


def _run_train(args: argparse.Namespace) -> int:
    data = load_pairs(args.data, skip_bad=args.skip_bad)
    eval_data = load_pairs(args.eval_data, skip_bad=args.skip_bad) if args.eval_data else None
    config = TrainConfig(
        objective=Objective(
            method=args.method,
            knobs=Knobs(args.alpha, args.omega),
            gamma=args.gamma,
            beta=args.beta,
            value_position=args.value_position,
            reward_norm=args.reward_norm,
        ),
        lora=LoraSpec(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            dropout=args.lora_dropout,
            target_modules=tuple(m.strip() for m in args.target_modules.split(",") if m.strip()),
        ),
        learning_rate=args.lr,
        warmup_ratio=args.warmup_ratio,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_length=args.max_length,
        weight_decay=args.weight_decay,
        seed=args.seed,
    )
    options = TrainOptions(
        name=args.name or args.out.name,
        description=args.description,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        command=shlex.join(["qadapter", *sys.argv[1:]]),
        serve_knobs=_knob_pair(args.serve_alpha, args.serve_omega, "--serve-alpha and --serve-omega"),
    )
    check_options(config, options)  # before the slow model load
    check_output(args.out, options.name)
    loaded = load_base_model(settings_from(args))
    config = replace(config, lora=config.lora.on_top(args.lora_top_layers, loaded.model.config.num_hidden_layers))
    if data.num_skipped:
        print(f"skipped {data.num_skipped} bad rows of {args.data}", file=sys.stderr)
    adapter = train(loaded, data, args.out, config, options, eval_data)
    final = adapter.manifest.training["final"] if adapter.manifest.training else {}
    print(
        f"wrote adapter {adapter.name!r} to {adapter.path} ({adapter.size_bytes / 1e6:.1f} MB); "
        + ", ".join(f"{k} {v}" for k, v in final.items())
    )
    return 0


def add_eval(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval",
        help="measure an adapter: preference accuracy, KL to the base, knowledge retention",
        description="Evaluate an adapter (or the base model itself with --adapter base) on held-out preference "
        "pairs, and measure how much of the base model it kept: KL to the base along the base's greedy "
        "answers to neutral prompts, and accuracy on short factual questions beside the base's own.",
        formatter_class=DefaultsFormatter,
    )
    add_model_options(parser)
    parser.add_argument(
        "--adapter", nargs="+", required=True, help="adapter directory, or 'base' (several with --sweep)"
    )
    parser.add_argument("--data", type=Path, required=True, help="held-out preference pairs (JSONL)")
    parser.add_argument(
        "--max-length",
        type=positive(int, False),
        default=EVAL_MAX_LENGTH,
        help="tokens per prompt+response; longer prompts lose their start (the default keeps every bundled "
        "held-out pair whole)",
    )
    parser.add_argument("--skip-bad", action="store_true", help="skip (and count) bad rows instead of stopping")
    parser.add_argument("--limit", type=positive(int, False), help="evaluate only the first N pairs")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="which half of the bundled prompts and questions: validation to choose on, test to report",
    )
    parser.add_argument("--neutral-prompts", type=Path, help="one prompt per line (default: the bundled set)")
    parser.add_argument("--questions", type=Path, help='JSONL {"question", "answers"} (default: the bundled set)')
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_knob_options(parser, ("--alpha", "--omega"), "to serve the adapter with instead of its manifest's (give both)")
    add_strength_option(parser)
    group = parser.add_argument_group("frontier")
    group.add_argument(
        "--sweep",
        type=_strength_list,
        metavar="S,S,...",
        help="serve every --adapter at each strength in its range (e.g. 0.25,0.5,1,2) and write the frontier "
        "(JSON and PNG: preference and behaviour against KL to the base and retention, one curve per method) "
        "to --out",
    )
    group.add_argument("--out", type=Path, help="the sweep's folder (frontier.json, frontier.png)")
    parser.set_defaults(run=_run_eval)


def _strength_list(text: str) -> list[float]:
    try:
        strengths = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected strengths like 0.25,0.5,1,2, got {text!r}") from None
    if not strengths or not all(0 < s <= MAX_STRENGTH for s in strengths):  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"strengths must be above 0 and at most {MAX_STRENGTH:g} (the base model, strength 0, is always included)"
        )
    return strengths


def _run_eval(args: argparse.Namespace) -> int:
    if args.sweep is not None:
        return _run_sweep(args)
    if args.out is not None:
        raise InvalidData("--out is the folder of a --sweep; without one the report goes to stdout")
    if len(args.adapter) > 1:
        raise InvalidData("give one --adapter, or several with --sweep")
    adapter_dir = None if args.adapter[0] == "base" else Path(args.adapter[0])
    choice = knob_choice(args)
    sets_knobs = any(value is not None for value in (args.alpha, args.omega, args.strength))
    if adapter_dir is None and sets_knobs:
        raise InvalidData("--alpha, --omega and --strength set how an adapter serves, not the base model")
    points = []
    if adapter_dir is not None:
        manifest = read_adapter_manifest(adapter_dir)
        args.model = args.model or manifest.base_model.id
        knobs = manifest.knobs.served(*choice)
        if sets_knobs and knobs is None:  # strength 0: the base model itself
            adapter_dir = None
        elif sets_knobs and knobs is not None:
            points = [ServedPoint(knobs, args.strength)]
    loaded, pairs, sets = _eval_inputs(args)
    report = evaluate(loaded, adapter_dir, pairs, sets, args.max_length, points)[0]
    print(json.dumps(report.as_dict()) if args.json else format_report(report))
    return 0


def _run_sweep(args: argparse.Namespace) -> int:
    """Everything that can be refused is refused before the model loads: a sweep takes a while."""
    if any(value is not None for value in (args.alpha, args.omega, args.strength)):
        raise InvalidData("--sweep serves each adapter at its strengths: drop --alpha, --omega and --strength")
    if args.out is None:
        raise InvalidData("--sweep writes frontier.json and frontier.png: give the folder with --out")
    if "base" in args.adapter:
        raise InvalidData("the base model is every sweep's strength-0 point: list adapter directories only")
    adapter_dirs = [Path(a) for a in args.adapter]
    manifests = [read_adapter_manifest(d) for d in adapter_dirs]
    for adapter_dir, manifest in zip(adapter_dirs, manifests):
        if not strength_points(manifest.knobs, args.sweep):
            low, high = manifest.knobs.strength_range
            raise InvalidData(
                f"{adapter_dir}: none of the strengths {args.sweep} is in its range [{low:.3g}, {high:.3g}]"
            )
    models = {m.base_model.id for m in manifests}
    if len(models) > 1 and not args.model:
        raise InvalidData(f"the adapters were trained on different base models {sorted(models)}: one sweep, one base")
    args.model = args.model or models.pop()
    check_out_dir(args.out)
    loaded, pairs, sets = _eval_inputs(args)
    frontier = sweep(loaded, adapter_dirs, pairs, sets, args.max_length, args.sweep, args.split)
    json_path, png_path = write_frontier(frontier, args.out)
    print(json.dumps(frontier.as_dict()) if args.json else format_frontier(frontier))
    print(f"wrote {json_path} and {png_path}", file=sys.stderr)
    return 0


def _eval_inputs(args: argparse.Namespace) -> tuple[LoadedModel, list[PreferencePair], EvalSets]:
    """The base model, the held-out pairs (`--limit`) and the prompt and question sets of `--split`."""
    data = load_pairs(args.data, skip_bad=args.skip_bad)
    sets = EvalSets.load(args.split, args.neutral_prompts, args.questions)
    loaded = load_base_model(settings_from(args))
    return loaded, data.pairs[: args.limit] if args.limit else data.pairs, sets


def _knob_pair(alpha: float | None, omega: float | None, flags: str) -> Knobs | None:
    """Both knobs or neither: half a pair would silently break α = 1 + ω."""
    if (alpha is None) != (omega is None):
        raise InvalidData(f"give {flags} together (with alpha = 1 + omega an untrained adapter is the base)")
    return None if alpha is None or omega is None else Knobs(alpha, omega)
