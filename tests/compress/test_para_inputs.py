"""PARA: bad inputs fail early with clear messages; the CLI; a property test of the SVD cut."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankadaptor.cli import main
from rankadaptor.errors import RankAdaptorError
from rankadaptor.compress.para import CompressConfig, compress, decompose, truncate
from tests.compress.para_helpers import make_adapter, tree_hash


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("a") / "adapter", r=4, alpha=8)


def _copy(adapter, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(adapter, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(cfg))


def test_not_an_adapter(tmp_path):
    with pytest.raises(RankAdaptorError, match="does not exist"):
        compress(tmp_path / "nope", tmp_path / "out", CompressConfig(threshold=0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RankAdaptorError, match="no adapter_config.json"):
        compress(tmp_path / "empty", tmp_path / "out", CompressConfig(threshold=0))


@pytest.mark.parametrize("peft_type,word", [("ADALORA", "AdaLoRA"), ("IA3", "IA3"), ("LOHA", "LOHA")])
def test_other_peft_types_refused(adapter, tmp_path, peft_type, word):
    bad = _copy(adapter, tmp_path)
    _edit_config(bad, peft_type=peft_type)
    with pytest.raises(RankAdaptorError, match=f"(?s){word}.*not a LoRA adapter"):
        compress(bad, tmp_path / "out", CompressConfig(threshold=0))
    assert not (tmp_path / "out").exists()


def test_dora_refused(adapter, tmp_path):
    bad = _copy(adapter, tmp_path)
    _edit_config(bad, use_dora=True)
    with pytest.raises(RankAdaptorError, match="DoRA"):
        compress(bad, tmp_path / "out", CompressConfig(threshold=0))


def test_missing_corrupt_and_pickle_weights(adapter, tmp_path):
    bad = _copy(adapter, tmp_path)
    data = (bad / "adapter_model.safetensors").read_bytes()
    (bad / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RankAdaptorError, match="corrupt or truncated"):
        compress(bad, tmp_path / "out", CompressConfig(threshold=0))
    (bad / "adapter_model.safetensors").unlink()
    with pytest.raises(RankAdaptorError, match="no adapter_model.safetensors"):
        compress(bad, tmp_path / "out", CompressConfig(threshold=0))
    (bad / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(RankAdaptorError, match="safe_serialization=True"):
        compress(bad, tmp_path / "out", CompressConfig(threshold=0))


def test_shapes_inconsistent_with_config(adapter, tmp_path):
    bad = _copy(adapter, tmp_path)
    _edit_config(bad, r=6)
    with pytest.raises(RankAdaptorError, match="config gives it rank 6"):
        compress(bad, tmp_path / "out", CompressConfig(threshold=0))


def test_budget_errors(adapter, tmp_path):
    report = compress(adapter, tmp_path / "full", CompressConfig(threshold=0))
    total = report["totals"]["params_before"]
    smallest = min(r["d_in"] + r["d_out"] for r in report["modules"])
    with pytest.raises(RankAdaptorError, match="larger than the adapter"):
        compress(adapter, tmp_path / "o1", CompressConfig(target_params=total + 1))
    with pytest.raises(RankAdaptorError, match="below one rank"):
        compress(adapter, tmp_path / "o2", CompressConfig(target_params=smallest - 1))
    with pytest.raises(RankAdaptorError, match="min-rank 2 floor"):
        compress(adapter, tmp_path / "o3", CompressConfig(target_params=total // 3, min_rank=2))
    floor1 = sum(r["d_in"] + r["d_out"] for r in report["modules"])
    rep = compress(adapter, tmp_path / "o3b", CompressConfig(target_params=floor1, min_rank=1))
    assert rep["totals"]["params_after"] == floor1 and all(r["new_rank"] == 1 for r in rep["modules"])
    rep = compress(adapter, tmp_path / "o4", CompressConfig(target_params=total))
    assert rep["totals"]["params_after"] == total
    top = max(report["modules"], key=lambda r: r["top_singular_value"])
    one_rank = top["d_in"] + top["d_out"]
    with pytest.raises(RankAdaptorError, match=f"at least {one_rank}"):
        compress(adapter, tmp_path / "o2b", CompressConfig(target_params=one_rank - 1))
    rep = compress(adapter, tmp_path / "o5", CompressConfig(target_params=one_rank))
    assert rep["totals"]["params_after"] == one_rank and rep["totals"]["modules_after"] == 1
    assert rep["modules"][[r["module"] for r in rep["modules"]].index(top["module"])]["new_rank"] == 1
    with pytest.raises(RankAdaptorError, match="no LoRA module keeps"):
        compress(adapter, tmp_path / "o6", CompressConfig(threshold=1e12))
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3, 6))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(), "exactly one"),
        (dict(energy=0.9, threshold=1.0), "exactly one"),
        (dict(keep_fraction=1.5), r"\(0, 1\]"),
        (dict(energy=0.0), r"\(0, 1\]"),
        (dict(threshold=-1.0), ">= 0"),
        (dict(target_params=0), "positive integer"),
        (dict(threshold=0.0, normalize="max"), "none, scale, fro"),
        (dict(threshold=0.0, min_rank=-1), "min_rank"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(RankAdaptorError, match=match):
        CompressConfig(**kwargs)


def test_cli_compress(adapter, tmp_path, capsys):
    before = tree_hash(adapter)
    rc = main(["compress", str(adapter), "--keep-fraction", "0.25", "--normalize", "scale", "--out", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert rc == 0 and "model.layers.0.self_attn.q_proj" in out and "total:" in out
    assert (tmp_path / "c" / "compress.json").is_file() and tree_hash(adapter) == before
    rc = main(["compress", str(adapter), "--target-params", "1", "--out", str(tmp_path / "d")])
    assert rc == 2 and "below one rank" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@settings(max_examples=40, deadline=None)
@given(
    d=st.integers(1, 24), k=st.integers(1, 24), r=st.integers(1, 8),
    keep=st.integers(0, 8), scale=st.floats(0.1, 4.0), seed=st.integers(0, 10_000),
)
def test_truncation_error_equals_discarded_singular_values(d, k, r, keep, scale, seed):
    g = torch.Generator().manual_seed(seed)
    B, A = torch.randn(d, r, generator=g, dtype=torch.float64), torch.randn(r, k, generator=g, dtype=torch.float64)
    delta = scale * B @ A
    spec = decompose(B, A, scale)
    keep = min(keep, spec.S.numel())
    Bk, Ak = truncate(spec, keep, torch.float64)
    err = torch.linalg.matrix_norm(delta - Bk @ Ak)
    assert err.item() == pytest.approx(spec.S[keep:].norm().item(), rel=1e-7, abs=1e-9)
    assert torch.allclose(spec.S, torch.linalg.svdvals(delta)[: spec.S.numel()], atol=1e-9)
    assert torch.allclose(decompose(B, A, scale, vectors=False).S, spec.S, atol=1e-9)
