"""Shared pieces of the bad-input tests (tests/test_hardening*.py).

``base``: a module-scoped fixture of valid inputs. ``assert_refused`` runs one command through
``rankadaptor.cli.main`` and checks the contract for bad input: exit code 2, a one-line
``error:`` message matching ``message``, no traceback, and no file created, changed or removed
under any of the watched directories (names + sha256).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from rankadaptor.cli import main
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

    argparse's own refusals (a bad choice or type) exit through ``SystemExit(2)``; they count too.
    """
    before = snapshot(*watched)
    try:
        rc = main(["--threads", "1", *argv])
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error:" in err and "Traceback" not in err, err
    assert re.search(message, err), err
    assert snapshot(*watched) == before
    return err
