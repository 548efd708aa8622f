"""`qadapter-client`: chat, complete, list models and manage adapters on a running qadapter server."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from qadapter.client.client import QAdapterClient
from qadapter.client.errors import Conflict, NotFound, QAdapterClientError, Unauthorized
from qadapter.client.types import Chunk, Sampling

EXAMPLES = """examples:
  qadapter-client models
  qadapter-client chat --adapter harmless                 # interactive, streamed
  qadapter-client chat --adapter harmless "Tell me about cats."
  echo "Tell me about cats." | qadapter-client chat       # the base model, prompt from stdin
  qadapter-client adapters upload out/harmless            # a directory, or a .tar.gz/.zip of one
  qadapter-client adapters upload out/harmless --replace  # publish a new version

The server is QADAPTER_URL (default http://127.0.0.1:8000); keys come from --api-key / --admin-key or
QADAPTER_API_KEY / QADAPTER_ADMIN_KEY."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `qadapter-client` console script."""
    args = build_parser().parse_args(argv)
    run: Callable[[QAdapterClient, argparse.Namespace], int] = args.run
    try:
        with QAdapterClient(
            args.url, api_key=args.api_key, admin_key=args.admin_key, timeout=args.timeout, max_retries=args.retries
        ) as client:
            return run(client, args)
    except QAdapterClientError as exc:
        print(f"error: {exc}{_hint(exc, args.is_admin)}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as exc:  # a local path that cannot be uploaded
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qadapter-client",
        description="Talk to a running qadapter server.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", help="server root URL (env QADAPTER_URL, default http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="key for chat, complete and models (env QADAPTER_API_KEY)")
    parser.add_argument("--admin-key", help="key for `adapters` commands (env QADAPTER_ADMIN_KEY)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the server (default 300)")
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="retries when the server is overloaded or unreachable (default 2; not for uploads/deletes)",
    )
    parser.set_defaults(is_admin=False)
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    chat = commands.add_parser(
        "chat",
        help="chat, streamed (interactive without a prompt on a terminal)",
        description="Chat with an adapter or the base model. With PROMPT, or a prompt on "
        "stdin, print one streamed answer; otherwise chat interactively (Ctrl-D quits).",
    )
    chat.add_argument("prompt", nargs="?", help="one user message (default: stdin, or interactive on a terminal)")
    chat.add_argument("--system", help="a system message to start the conversation with")
    _add_generation_options(chat)
    chat.set_defaults(run=_run_chat)

    complete = commands.add_parser(
        "complete",
        help="complete a raw prompt, streamed",
        description="Print the streamed continuation of a raw prompt (no chat template).",
    )
    complete.add_argument("prompt", nargs="?", help="the prompt (default: stdin)")
    _add_generation_options(complete)
    complete.set_defaults(run=_run_complete)

    models = commands.add_parser("models", help="list the base model and the adapters served")
    models.set_defaults(run=_run_models)
    _add_adapter_commands(commands)
    return parser


def _add_adapter_commands(commands: argparse._SubParsersAction) -> None:
    adapters = commands.add_parser(
        "adapters",
        help="upload, list and delete adapters (admin key)",
        description="Hot-swap adapters on the running server; needs the admin key.",
    )
    adapters.set_defaults(is_admin=True)
    actions = adapters.add_subparsers(title="actions", required=True, metavar="ACTION")
    upload = actions.add_parser("upload", help="upload an adapter directory or a .tar.gz/.zip of one")
    upload.add_argument(
        "path",
        help="adapter directory (adapter_config.json, adapter_model.safetensors, qadapter.json) or an archive of it",
    )
    upload.add_argument("--name", help="serve it under this name (default: the name in its qadapter.json)")
    upload.add_argument("--replace", action="store_true", help="publish a new version of an existing adapter")
    upload.set_defaults(run=_run_upload, is_admin=True)
    listing = actions.add_parser("list", help="list the served adapters")
    listing.set_defaults(run=_run_list, is_admin=True)
    delete = actions.add_parser("delete", help="delete an adapter (running requests on it finish)")
    delete.add_argument("name")
    delete.set_defaults(run=_run_delete, is_admin=True)


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--adapter", help="the adapter to use, by name (default: the base model)")
    which.add_argument("--model", help="a model id as `models` lists it")
    parser.add_argument("--max-tokens", type=int, default=256, help="default 256")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int, help="repeatable sampling")
    parser.add_argument("--alpha", type=float, help="override the adapter's alpha (sharpness of Q); with --omega")
    parser.add_argument("--omega", type=float, help="override the adapter's omega (weight of the base model)")
    parser.add_argument(
        "--strength", type=float, help="instead of --alpha/--omega: 0 = the base model, 1 = the adapter as trained"
    )


def _sampling(args: argparse.Namespace) -> Sampling:
    options = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "alpha": args.alpha,
        "omega": args.omega,
        "strength": args.strength,
    }
    return cast(Sampling, {key: value for key, value in options.items() if value is not None})


def _model(client: QAdapterClient, args: argparse.Namespace) -> str:
    """--adapter or --model, else the base model (the entry of /v1/models without a parent)."""
    return args.adapter or args.model or next(m.id for m in client.models() if not m.is_adapter)


def _prompt(args: argparse.Namespace) -> str:
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        raise ValueError("no prompt: give one as an argument or on stdin")
    return prompt


def _print_stream(chunks: Iterable[Chunk]) -> str:
    """Print the first choice's text as it arrives; return all of it."""
    parts = []
    for chunk in chunks:
        if chunk.index == 0 and chunk.text:
            parts.append(chunk.text)
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    print()
    return "".join(parts)


def _run_chat(client: QAdapterClient, args: argparse.Namespace) -> int:
    model, sampling = _model(client, args), _sampling(args)
    history: list[dict[str, Any]] = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None or not sys.stdin.isatty():
        history.append({"role": "user", "content": _prompt(args)})
        _print_stream(client.chat(history, model=model, stream=True, **sampling))
        return 0
    print(f"chatting with {model}; Ctrl-D quits", file=sys.stderr)
    while True:
        try:
            text = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if text.strip():
            history.append({"role": "user", "content": text})
            answer = _print_stream(client.chat(history, model=model, stream=True, **sampling))
            history.append({"role": "assistant", "content": answer})


def _run_complete(client: QAdapterClient, args: argparse.Namespace) -> int:
    _print_stream(client.complete(_prompt(args), model=_model(client, args), stream=True, **_sampling(args)))
    return 0


def _run_models(client: QAdapterClient, _: argparse.Namespace) -> int:
    for model in client.models():
        kind = f"adapter v{model.version} on {model.parent}" if model.is_adapter else "base model"
        print(f"{model.id:<32} {kind}")
    return 0


def _run_upload(client: QAdapterClient, args: argparse.Namespace) -> int:
    adapter = client.adapters.upload(args.path, name=args.name, replace=args.replace)
    print(f"uploaded {adapter.name} version {adapter.version} ({adapter.size_bytes} bytes)")
    return 0


def _run_list(client: QAdapterClient, _: argparse.Namespace) -> int:
    print(f"{'NAME':<24} {'VERSION':>7} {'BYTES':>10} {'RUNNING':>7}  DESCRIPTION")
    for a in client.adapters.list():
        print(f"{a.name:<24} {a.version:>7} {a.size_bytes:>10} {a.running_requests:>7}  {a.description}")
    return 0


def _run_delete(client: QAdapterClient, args: argparse.Namespace) -> int:
    client.adapters.delete(args.name)
    print(f"deleted {args.name}")
    return 0


def _hint(exc: QAdapterClientError, is_admin: bool) -> str:
    """What to do about the errors a CLI user meets first, in CLI terms."""
    if isinstance(exc, Unauthorized):
        return (
            "\nhint: pass --admin-key or set QADAPTER_ADMIN_KEY"
            if is_admin
            else "\nhint: pass --api-key or set QADAPTER_API_KEY"
        )
    if isinstance(exc, Conflict):
        return "\nhint: add --replace to publish a new version"
    if isinstance(exc, NotFound) and not is_admin:
        return "\nhint: `qadapter-client models` lists what the server serves"
    return ""


if __name__ == "__main__":
    sys.exit(main())
