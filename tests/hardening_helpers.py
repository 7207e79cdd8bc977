"""Shared pieces of the bad-input tests (tests/test_hardening*.py).

``base``: a module-scoped fixture of valid inputs. ``assert_refused`` runs one command through
``rankadaptor.cli.main`` and checks the contract for bad input: exit code 2, a one-line
``error:`` message matching ``message``, no traceback, and no file created, changed or removed
under any of the watched directories (names + sha256).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import re
from pathlib import Path

import pytest

from rankadaptor.cli import build_parser, main
from rankadaptor.models.artefact import save_pruned
from rankadaptor.prune.pruning import PruneConfig, prune_model
from tests.compress.para_helpers import make_adapter
from tests.tiny_models import TINY_TEXT, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Shared valid inputs: a saved tiny model, a corpus, a LoRA adapter and a pruned artefact."""
    root = tmp_path_factory.mktemp("inputs")
    tiny_llama().save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    (root / "corpus.txt").write_text("\n\n".join(TINY_TEXT * 20))
    make_adapter(root / "adapter", r=4, alpha=8)
    model, manifest = prune_model(tiny_llama(), tiny_tokenizer(), PruneConfig(ratio=0.1, layers=(1, 4), importance="l1"))
    save_pruned(model, tiny_tokenizer(), manifest, root / "pruned")
    return root


def snapshot(*dirs: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for d in dirs for p in sorted(d.rglob("*"))}


def write_file(tmp: Path, name: str, content) -> str:
    path = tmp / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return str(path)


def assert_refused(argv: list[str], message: str, capsys, *watched: Path) -> str:
    """Run ``rankadaptor --threads 1 ARGV``; assert the bad-input contract; return stderr.

    The contract: exit code 2, one ``error:`` line (argparse's own refusals, a bad choice or type,
    exit through ``SystemExit(2)`` after their usage lines; they count too), no traceback, every
    ``--flag`` the message names is one the command has, and nothing under ``watched`` changed.
    """
    before = snapshot(*watched)
    try:
        rc = main(["--threads", "1", *argv])
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error:" in err and "Traceback" not in err, err
    # argparse's usage block and progress bars (transformers' weight loading) aside
    ours = [line.strip() for line in re.split(r"[\r\n]", err) if line.strip() and not _PROGRESS.search(line)
            and not line.startswith("usage:") and not (line.startswith(" ") and "error:" not in line)]
    assert len(ours) == 1 and "error:" in ours[0], err
    assert re.search(message, err), err
    assert_flags_exist(next(a for a in argv if a in _commands()), ours[0])
    assert snapshot(*watched) == before
    return err


_PROGRESS = re.compile(r"\d+%\||\[\d\d:\d\d[<,]")  # tqdm bars: "40%|###", "[00:01<00:02" or "[00:00, ?"
GLOBAL_FLAGS = {"--threads", "--device", "--verbose", "--version", "--help"}
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_OTHER_COMMAND = re.compile(r"rankadaptor (\w+)((?: [^;`]*)?)")


@functools.lru_cache(maxsize=None)
def command_flags(command: str) -> frozenset[str]:
    """Every option string of ``rankadaptor COMMAND``'s parser."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return frozenset(s for action in sub.choices[command]._actions for s in action.option_strings)


def assert_flags_exist(command: str, text: str) -> None:
    """A hint must name flags the command has; a quoted ``rankadaptor OTHER ...`` is checked against OTHER."""
    for other, rest in _OTHER_COMMAND.findall(text):
        if other in _commands():
            bad = set(_FLAG.findall(rest)) - command_flags(other) - GLOBAL_FLAGS
            assert not bad, f"{text!r} names {sorted(bad)}, which `rankadaptor {other}` does not have"
        text = text.replace(f"rankadaptor {other}{rest}", "")
    bad = set(_FLAG.findall(text)) - command_flags(command) - GLOBAL_FLAGS
    assert not bad, f"{text!r} names {sorted(bad)}, which `rankadaptor {command}` does not have"


def _commands() -> set[str]:
    from rankadaptor.cli import COMMANDS

    return set(COMMANDS)
