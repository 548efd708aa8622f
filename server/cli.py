"""The `qadapter` command line: `serve`, `generate`, `train` and `eval`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from adapters.bounds import MAX_ALPHA, MAX_OMEGA, MIN_ALPHA
from adapters.errors import QAdapterError
from adapters.format import validate
from server.cli_options import add_model_options, positive, settings_from, within
from server.cli_training import add_eval, add_train
from server.generate import DecodeParams, Stream, decode, decode_steps
from server.lora import AdapterHost
from server.model import LoadedModel, load_base_model


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `qadapter` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return args.run(args)
    except QAdapterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qadapter",
        description="Serve, run, train and evaluate Q-adapters on one frozen LLM.",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_generate(commands)
    add_train(commands)
    add_eval(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve the OpenAI-compatible HTTP API",
        description="Serve the base model and every adapter in --adapters-dir over an OpenAI-compatible API. "
        "Every flag can also be set as a QADAPTER_<FLAG> environment variable.",
    )
    add_model_options(parser)
    parser.add_argument("--adapters-dir", type=Path, help="adapters served from the start (default ./adapters-store)")
    parser.add_argument(
        "--install-adapters", type=Path, metavar="DIR",
        help="at start, copy into --adapters-dir every adapter under DIR whose name it lacks (e.g. adapters/examples)",
    )
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default 8000)")
    parser.add_argument("--api-keys", help="comma-separated keys required on /v1/* (default: none)")
    parser.add_argument("--admin-key", help="key for /admin/* (default: none, admin routes off)")
    parser.add_argument("--max-resident-adapters", type=positive(int, False), help="adapters in memory (default 64)")
    parser.add_argument("--max-upload-bytes", type=positive(int, False), help="largest upload (default 256 MiB)")
    parser.add_argument("--max-running", type=positive(int, False), help="requests decoded together (default 32)")
    parser.add_argument("--max-waiting", type=positive(int, False), help="queue length before 503 (default 256)")
    parser.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app

    settings = settings_from(args)
    app = create_app(settings)

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT, refuse new work at once, then let uvicorn wait for running requests."""

        def handle_exit(self, sig: int, frame: object) -> None:
            serving = getattr(app.state, "serving", None)
            if serving is not None:
                serving.is_draining = True
            super().handle_exit(sig, frame)  # type: ignore[arg-type]
            # uvicorn re-raises the signal once drained, so the exit status would read "killed";
            # a completed graceful shutdown exits 0 instead.
            self._captured_signals.clear()

    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="info",
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
    )
    DrainingServer(config).run()
    return 0


def _add_generate(commands: argparse._SubParsersAction) -> None:
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
    parser.add_argument("--alpha", type=within(MIN_ALPHA, MAX_ALPHA), help=f"override every adapter's alpha ({MIN_ALPHA:g}-{MAX_ALPHA:g})")
    parser.add_argument("--omega", type=within(0.0, MAX_OMEGA), help=f"override every adapter's omega (0-{MAX_OMEGA:g})")
    parser.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    loaded = load_base_model(settings)
    host = AdapterHost(loaded.model)
    streams = []
    for path in args.adapter:
        adapter = validate(path, loaded.info, settings.max_lora_rank)
        host.load(adapter)
        alpha = adapter.manifest.alpha if args.alpha is None else args.alpha
        omega = adapter.manifest.omega if args.omega is None else args.omega
        streams.append(Stream(adapter.name, alpha=alpha, omega=omega))
    if not streams or args.compare:
        streams.append(Stream(None))
    prompt_ids = encode_prompt(loaded, args.prompt, args.chat)
    params = DecodeParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    if len(streams) == 1:
        _print_streaming(loaded, host, prompt_ids, streams[0], params)
        return 0
    outputs = decode(host, prompt_ids, streams, params, loaded.stop_token_ids)
    for stream, tokens in zip(streams, outputs):
        knobs = "" if stream.adapter is None else f" (alpha={stream.alpha:g}, omega={stream.omega:g})"
        print(f"=== {stream.label}{knobs} ===")
        print(loaded.tokenizer.decode(tokens, skip_special_tokens=True).strip())
    return 0


def encode_prompt(loaded: LoadedModel, prompt: str, chat: bool) -> list[int]:
    """Token ids of a raw prompt, or of a one-message chat ready for the assistant's answer."""
    if chat:
        messages = [{"role": "user", "content": prompt}]
        text = loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return loaded.tokenizer(text, add_special_tokens=False).input_ids
    return loaded.tokenizer(prompt).input_ids


def _print_streaming(
    loaded: LoadedModel, host: AdapterHost, prompt_ids: list[int], stream: Stream, params: DecodeParams
) -> None:
    tokens: list[int] = []
    printed = ""
    for (token,) in decode_steps(host, prompt_ids, [stream], params, loaded.stop_token_ids):
        if token is None:
            continue
        tokens.append(token)
        # Decode the whole answer each time: a character may span several tokens.
        text = loaded.tokenizer.decode(tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text
    print()
