"""The `helios` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from cli.cache import add_cache_command
from cli.certs import add_certs_command
from cli.estimate import add_estimate_command
from cli.pull import add_pull_command
from cli.status import add_status_command
from cli.up import up_command
from cli.up_options import add_up_arguments


def _model_build_command(args: argparse.Namespace) -> int:
    from models.tinymodel import build_tiny_model

    path = build_tiny_model(args.out, seed=args.seed, name=args.name)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helios", description="Helios: serverless LLM inference on a gRPC mesh"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start the local mesh (Envoy, proxy, worker, ...)")
    add_up_arguments(up)
    up.set_defaults(handler=up_command)

    model = commands.add_parser("make-model", help="create the tiny random-weight chat model")
    model.add_argument("out", type=Path, help="directory to write (HF layout, safetensors)")
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--name", default="helios-tiny-chat")
    model.set_defaults(handler=_model_build_command)

    add_cache_command(commands)
    add_certs_command(commands)
    add_estimate_command(commands)
    add_pull_command(commands)
    add_status_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    sys.exit(args.handler(args))


if __name__ == "__main__":
    main()
