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
import math
import sys
from typing import Callable

from rankadaptor import __version__
from rankadaptor.errors import RankAdaptorError

# the commands that compute on tensors, so the ones --device / --dtype apply to (and are checked for)
MODEL_COMMANDS = {"allocate", "compress", "demo", "eval", "prune", "recover", "search"}
TRAINING_COMMANDS = {"allocate", "demo", "prune", "recover", "search"}  # they run backward passes (Taylor importance, LoRA)

# command name -> module; the order is the order `--help` lists them in.
COMMANDS: dict[str, str] = {
    "allocate": "rankadaptor.cli.allocate",
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


def at_least(low: float, kind: type = int, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` number >= ``low`` (> ``low`` with ``above``), checked at parse
    time, so that a flag out of range fails before anything is loaded and never becomes a default."""
    word = {int: "an integer", float: "a number"}[kind]
    bound = f"{'>' if above else '>='} {low:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {word}") from None
        if not math.isfinite(value) or value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"must be {word} {bound}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} {bound}"  # argparse names the type in some messages
    return parse


SEED = at_least(0)  # seeds go to numpy, which refuses negative ones (after the model has loaded)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rankadaptor",
        description="Per-layer LoRA rank allocation for recovering structurally pruned LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"rankadaptor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=at_least(1), default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help="where models (and compress's SVDs) run: auto (default: cuda when present, else cpu), "
                             "cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"),
                        help="precision of the (frozen) model weights: auto (default: bfloat16 on a GPU that "
                             "supports it, else float32); LoRA weights and optimizer state stay float32")
    parser.add_argument("--no-memory-check", action="store_true",
                        help="run even when the memory estimate printed before a long run says it will not fit")
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
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from rankadaptor.errors import describe_io_error
    from rankadaptor.fileio import release_claims

    try:
        from rankadaptor.device import default_device, default_dtype

        # checked here, before any work; every load_model in the command then follows them
        model_command = args.command in MODEL_COMMANDS
        with default_device(args.device if model_command else None), \
                default_dtype(args.dtype if model_command else None, training=args.command in TRAINING_COMMANDS):
            return int(args.func(args) or 0)
    except RankAdaptorError as exc:
        return _fail(args, str(exc))
    except Exception as exc:  # disk full, read-only filesystem, permissions: the environment, not a bug
        problem = describe_io_error(exc)
        if problem is None:
            raise  # anything else is a bug: its traceback is the report
        return _fail(args, problem)
    except KeyboardInterrupt:
        print(f"rankadaptor {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        release_claims()


def _fail(args, message: str) -> int:
    """One line on stderr and exit code 2; with ``-v`` the traceback too (anything else is a bug and
    keeps its traceback without ``-v``)."""
    if args.verbose:
        import traceback

        traceback.print_exc()
    print(f"rankadaptor {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2
