"""Command-line entry point: ``rankadaptor <command> ...``.

Each subcommand lives in its own small module under ``rankadaptor.cli`` with two functions:
``add_parser(subparsers)`` registers its arguments and ``run(args) -> int`` does the work by
calling the library. Heavy imports (torch, transformers) happen inside ``run`` so that
``rankadaptor --help`` stays instant. Only the CLI prints; the library logs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rankadaptor import __version__
from rankadaptor.errors import RankAdaptorError

# the commands that load a model, so the ones --device applies to (and is checked for)
MODEL_COMMANDS = {"demo", "eval", "prune", "recover", "search"}

# command name -> module; the order is the order `--help` lists them in.
COMMANDS: dict[str, str] = {
    "assets": "rankadaptor.cli.assets",
    "compare": "rankadaptor.cli.compare",
    "compress": "rankadaptor.cli.compress",
    "demo": "rankadaptor.cli.demo",
    "eval": "rankadaptor.cli.eval",
    "export": "rankadaptor.cli.export",
    "prune": "rankadaptor.cli.prune",
    "recover": "rankadaptor.cli.recover",
    "search": "rankadaptor.cli.search",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rankadaptor",
        description="Per-layer LoRA rank allocation for recovering structurally pruned LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"rankadaptor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help="where models run: auto (default: cuda when present, else cpu), cpu, cuda, cuda:N, mps")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        from rankadaptor.device import default_device

        # checked here, before any work; every load_model in the command then follows it
        with default_device(args.device if args.command in MODEL_COMMANDS else None):
            return int(args.func(args) or 0)
    except RankAdaptorError as exc:
        print(f"rankadaptor {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rankadaptor {args.command}: interrupted", file=sys.stderr)
        return 130
