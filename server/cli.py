"""The `qadapter` command line: `serve` and `generate` here, `train` and `eval` from qadapter.training.cli."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from qadapter.core.cli_options import MODEL_SETTINGS, add_settings_options, settings_from
from qadapter.core.errors import QAdapterError
from qadapter.core.settings import Settings
from qadapter.server.draining import ABORTED_STREAMS_GRACE_S, DrainingServer
from qadapter.server.generate_cli import add_generate
from qadapter.server.http_protocol import timed_h11_protocol
from qadapter.training.cli import add_eval, add_train


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
    add_generate(commands)
    add_train(commands)
    add_eval(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve the OpenAI-compatible HTTP API",
        description="Serve the base model and every adapter in --adapters-dir over an OpenAI-compatible API. "
        "Every flag is also a QADAPTER_<FLAG> environment variable; a flag wins over its variable.",
    )
    add_settings_options(parser, MODEL_SETTINGS)
    add_settings_options(parser, [name for name in Settings.model_fields if name not in MODEL_SETTINGS])
    parser.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from qadapter.server.app import create_app

    settings = settings_from(args)
    app = create_app(settings, _cluster_engines() if settings.replicas else None)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        http=timed_h11_protocol(settings.read_timeout_s),
        timeout_graceful_shutdown=int(ABORTED_STREAMS_GRACE_S),  # the drain has already ended every request
    )
    DrainingServer(config, app).run()
    return 0


def _cluster_engines() -> object:
    try:
        from qadapter.server.cluster.launch import RayEngines
    except ImportError as exc:
        raise QAdapterError(
            f"cluster mode (--replicas) needs Ray Serve ({exc.name} is missing): pip install 'qadapter[cluster]'"
        ) from None
    return RayEngines()
