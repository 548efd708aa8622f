"""`qadapter generate`: one answer offline from the base model and Q-adapters, through the same LoRA
host as serving and the one decode loop (adapter row and base row in one batched forward)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qadapter.adapters.format import AdapterLimits, validate
from qadapter.core.chat import user_prompt_ids
from qadapter.core.cli_options import (
    add_knob_options,
    add_model_options,
    add_strength_option,
    knob_choice,
    positive,
    settings_from,
)
from qadapter.core.decode import DecodeParams, Stream, decode, decode_steps
from qadapter.core.lora import AdapterHost
from qadapter.core.model import LoadedModel, load_base_model


def add_generate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "generate",
        help="generate offline from the base model with Q-adapters applied",
        description="Generate one answer offline, token by token, from the customised policy of each "
        "adapter (adapter row and base row in one batched forward).",
    )
    add_model_options(parser)
    parser.add_argument("prompt", help="the prompt (a user message with --chat)")
    parser.add_argument(
        "--adapter", action="append", default=[], type=Path, metavar="DIR", help="Q-adapter directory (repeatable)"
    )
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--compare", action="store_true", help="also print the base model's answer")
    parser.add_argument("--max-tokens", type=positive(int, False), default=64, help="default 64")
    parser.add_argument("--temperature", type=positive(float, True), default=0.0, help="0 (default) is greedy")
    parser.add_argument("--seed", type=int, help="seed for sampling")
    add_knob_options(parser, ("--alpha", "--omega"), "for every adapter, instead of its manifest's (give both)")
    add_strength_option(parser)
    parser.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    choice = knob_choice(args)
    settings = settings_from(args)
    loaded = load_base_model(settings)
    host = AdapterHost(loaded.model)
    streams, labels = [], []
    for path in args.adapter:
        adapter = validate(path, loaded.info, AdapterLimits.of(settings))
        host.load(adapter.name, adapter.read_weights())
        knobs = adapter.manifest.knobs.served(*choice)
        streams.append(Stream(None) if knobs is None else Stream(adapter.name, knobs))  # None: strength 0, the base
        labels.append(adapter.name if knobs else f"{adapter.name} (strength 0: the base model)")
    if not streams or args.compare:
        streams.append(Stream(None))
        labels.append("base")
    prompt = user_prompt_ids(loaded.tokenizer, args.prompt) if args.chat else loaded.tokenizer(args.prompt).input_ids
    params = DecodeParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    if len(streams) == 1:
        _print_streaming(loaded, host, prompt, streams[0], params)
        return 0
    (outputs,) = decode(host, [prompt], streams, params, loaded.stop_token_ids, loaded.pad_token_id)
    for label, stream, tokens in zip(labels, streams, outputs):
        knobs = "" if stream.adapter is None else f" (alpha={stream.knobs.alpha:g}, omega={stream.knobs.omega:g})"
        print(f"=== {label}{knobs} ===")
        print(loaded.tokenizer.decode(tokens, skip_special_tokens=True).strip())
    return 0


def _print_streaming(
    loaded: LoadedModel, host: AdapterHost, prompt_ids: list[int], stream: Stream, params: DecodeParams
) -> None:
    tokens: list[int] = []
    printed = ""
    for ((token,),) in decode_steps(host, [prompt_ids], [stream], params, loaded.stop_token_ids, loaded.pad_token_id):
        if token is None:
            continue
        tokens.append(token)
        # Decode the whole answer each time: a character may span several tokens.
        text = loaded.tokenizer.decode(tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[len(printed) :])
            sys.stdout.flush()
            printed = text
    print()
