"""PARA compression: exactness, budgets, PEFT round trips."""

from __future__ import annotations

import json

import pytest
import torch

from rankadaptor.errors import RankAdaptorError
from rankadaptor.compress.adapter_io import pattern_value, read_adapter
from rankadaptor.compress.para import CompressConfig, compress, decompose
from tests.compress.para_helpers import load_peft, make_adapter, merged_deltas, tree_hash
from tests.tiny_models import tiny_llama


def _delta(m) -> torch.Tensor:
    return m.scale * m.B.double() @ m.A.double()


def _dense_truncation(delta: torch.Tensor, rank: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    return (U[:, :rank] * S[:rank]) @ Vh[:rank]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("a") / "adapter", r=8, alpha=16)


def test_decompose_matches_dense_svd():
    torch.manual_seed(1)
    B, A = torch.randn(40, 6), torch.randn(6, 30)
    spec = decompose(B, A, 0.7)
    dense = torch.linalg.svdvals(0.7 * B.double() @ A.double())
    assert torch.allclose(spec.S, dense[:6], atol=1e-10)
    assert torch.allclose((spec.U * spec.S) @ spec.V.T, 0.7 * B.double() @ A.double(), atol=1e-10)


def test_full_rank_reproduces_delta_and_logits(adapter, tmp_path):
    out = tmp_path / "full"
    report = compress(adapter, out, CompressConfig(threshold=0.0))
    assert report["totals"]["params_after"] == report["totals"]["params_before"]
    old, new = read_adapter(adapter), read_adapter(out)
    assert set(old.modules) == set(new.modules)
    for name, m in old.modules.items():
        assert new.modules[name].scale == 1.0
        assert torch.allclose(_delta(new.modules[name]), _delta(m), atol=1e-5)
    ids = torch.randint(3, 256, (2, 12))
    with torch.no_grad():
        a, b = load_peft(adapter)(ids).logits, load_peft(out)(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, tiny_llama()(ids).logits, atol=1e-3)  # the adapter does something


def test_merged_delta_equals_truncated_svd(adapter, tmp_path):
    out = tmp_path / "half"
    report = compress(adapter, out, CompressConfig(keep_fraction=0.5))
    ranks = {r["module"]: r["new_rank"] for r in report["modules"]}
    assert len(set(ranks.values())) > 1  # non-uniform allocation
    original = {n: _delta(m) for n, m in read_adapter(adapter).modules.items()}
    merged = merged_deltas(out)
    kept = {n for n, r in ranks.items() if r > 0}
    assert set(merged) == kept
    for name in kept:
        expected = _dense_truncation(original[name], ranks[name])
        assert torch.allclose(merged[name], expected, atol=1e-5), name
        err = torch.linalg.matrix_norm(original[name] - merged[name])
        row = next(r for r in report["modules"] if r["module"] == name)
        assert err.item() ** 2 == pytest.approx(row["discarded_energy"], rel=1e-3, abs=1e-8)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(use_rslora=True),
        dict(rank_pattern={"q_proj": 4, "layers.1.mlp.down_proj": 6}, alpha_pattern={"v_proj": 3.0}),
    ],
    ids=["rslora", "rank_pattern"],
)
def test_rslora_and_patterns_full_rank(tmp_path, kwargs):
    src = make_adapter(tmp_path / "in", r=8, alpha=12, **kwargs)
    old = read_adapter(src)
    if "rank_pattern" in kwargs:
        assert old.modules["model.layers.0.self_attn.q_proj"].r == 4
        assert old.modules["model.layers.1.mlp.down_proj"].r == 6
        assert old.modules["model.layers.0.mlp.down_proj"].r == 8
        assert old.modules["model.layers.2.self_attn.v_proj"].alpha == 3.0
    else:
        assert old.modules["model.layers.0.self_attn.q_proj"].scale == pytest.approx(12 / 8**0.5)
    compress(src, tmp_path / "out", CompressConfig(threshold=0.0))
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert cfg["use_rslora"] is False and cfg["rank_pattern"] == cfg["alpha_pattern"]
    ids = torch.randint(3, 256, (1, 10))
    with torch.no_grad():
        assert torch.allclose(load_peft(src)(ids).logits, load_peft(tmp_path / "out")(ids).logits, atol=1e-4)
    # PEFT assigns every module exactly the rank written in rank_pattern.
    peft_model = load_peft(tmp_path / "out")
    for name, module in peft_model.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            assert module.r["default"] == pattern_value(cfg["rank_pattern"], name, None)
            assert module.scaling["default"] == 1.0


@pytest.mark.parametrize("target", [900, 5000, 12345])
def test_budget_exactly_respected(adapter, tmp_path, target):
    out = tmp_path / f"b{target}"
    report = compress(adapter, out, CompressConfig(target_params=target, normalize="fro"))
    t, cut = report["totals"], report["cut"]
    assert t["params_after"] <= target and cut["budget_used"] == t["params_after"]
    from safetensors.torch import load_file

    written = sum(v.numel() for v in load_file(out / "adapter_model.safetensors").values())
    assert written == t["params_after"]
    # Single global threshold: every kept module's weakest kept score >= every dropped score.
    old = read_adapter(adapter)
    kept_min, dropped_max = float("inf"), 0.0
    for row in report["modules"]:
        S = decompose(old.modules[row["module"]].B, old.modules[row["module"]].A, old.modules[row["module"]].scale).S
        sc = S / torch.linalg.vector_norm(S)
        if row["new_rank"]:
            kept_min = min(kept_min, float(sc[row["new_rank"] - 1]))
        if row["new_rank"] < S.numel():
            dropped_max = max(dropped_max, float(sc[row["new_rank"]]))
    assert kept_min >= dropped_max
    assert cut["budget_unused"] < max(r["d_in"] + r["d_out"] for r in report["modules"])


def test_energy_and_normalisations(adapter, tmp_path):
    rep = compress(adapter, tmp_path / "e", CompressConfig(energy=0.9))
    assert rep["cut"]["energy_kept"] >= 0.9 - 1e-9
    assert 1 - rep["totals"]["discarded_energy_fraction"] == pytest.approx(rep["cut"]["energy_kept"])
    rep = compress(adapter, tmp_path / "s", CompressConfig(threshold=1.0, normalize="scale"))
    assert all(r["new_rank"] == 1 for r in rep["modules"])  # each module's top component scores exactly 1
    rep = compress(adapter, tmp_path / "m", CompressConfig(threshold=1e9, min_rank=2))
    assert all(r["new_rank"] == 2 for r in rep["modules"])


def test_weak_modules_are_dropped(tmp_path):
    src = make_adapter(tmp_path / "in", r=4)
    from safetensors.torch import load_file, save_file

    weights = load_file(src / "adapter_model.safetensors")
    weak = [k for k in weights if ".layers.3." in k and "lora_B" in k]
    for k in weak:
        weights[k] = weights[k] * 1e-6
    save_file(weights, src / "adapter_model.safetensors", metadata={"format": "pt"})
    rep = compress(src, tmp_path / "out", CompressConfig(threshold=1e-3))
    dropped = set(rep["totals"]["modules_dropped"])
    assert dropped == {k.split(".lora_B")[0].removeprefix("base_model.model.") for k in weak}
    cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert not dropped & set(cfg["target_modules"])
    assert all(pattern_value(cfg["rank_pattern"], n, None) is None for n in dropped)
    model = load_peft(tmp_path / "out")
    lora_names = {n for n, m in model.base_model.model.named_modules() if hasattr(m, "lora_A")}
    assert lora_names and not lora_names & dropped
    ids = torch.randint(3, 256, (1, 8))
    with torch.no_grad():  # dropping updates of size 1e-6 changes nothing visible
        assert torch.allclose(load_peft(src)(ids).logits, model(ids).logits, atol=1e-3)


def test_input_never_modified_and_output_atomic(adapter, tmp_path, monkeypatch):
    before = tree_hash(adapter)
    compress(adapter, tmp_path / "ok", CompressConfig(keep_fraction=0.3))
    assert tree_hash(adapter) == before
    report = json.loads((tmp_path / "ok" / "compress.json").read_text())
    assert report["provenance"]["versions"]["torch"] and report["settings"] == {"keep_fraction": 0.3, "normalize": "none", "min_rank": 0}

    import rankadaptor.compress.para as para

    def boom(tmp, adapter):
        (tmp / "adapter_model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(para, "write_adapter", boom)
    with pytest.raises(OSError):
        compress(adapter, tmp_path / "bad", CompressConfig(keep_fraction=0.3))
    assert not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]
    with pytest.raises(RankAdaptorError, match="already exists"):
        compress(adapter, tmp_path / "ok", CompressConfig(keep_fraction=0.3))
    with pytest.raises(RankAdaptorError, match="input itself"):
        compress(adapter, adapter, CompressConfig(keep_fraction=0.3))
    assert tree_hash(adapter) == before


def test_baseline_allocations_fit_budget(adapter):
    from rankadaptor.compress.para import (compress_to_ranks, decompose_adapter, energy_rule_ranks_for_budget,
                                       uniform_ranks_for_budget)

    old = read_adapter(adapter)
    spectra, costs = decompose_adapter(old)
    budget = old.params // 2 + 1000
    uni = uniform_ranks_for_budget(spectra, costs, budget)
    assert len(set(uni.values())) == 1 and sum(uni[n] * costs[n] for n in uni) <= budget
    assert sum((uni[n] + 1) * costs[n] for n in uni) > budget  # the largest uniform rank that fits
    ene, tau = energy_rule_ranks_for_budget(spectra, costs, budget)
    assert 0 < tau < 1 and sum(ene[n] * costs[n] for n in ene) <= budget
    for name, s in spectra.items():  # PEFT's rule: smallest k reaching tau of the module's energy
        k = ene[name]
        e = s.S.pow(2).cumsum(0) / s.S.pow(2).sum()
        assert e[k - 1] >= tau - 1e-12 and (k == 1 or e[k - 2] < tau)
    new, rep = compress_to_ranks(old, uni, spectra)
    assert rep["totals"]["params_after"] == sum(uni[n] * costs[n] for n in uni)
    for name, m in new.modules.items():
        assert torch.allclose(_delta(m), _dense_truncation(_delta(old.modules[name]), uni[name]), atol=1e-5)


def test_embedding_target_and_extra_tensors_carried(tmp_path):
    import warnings

    from safetensors.torch import load_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = make_adapter(tmp_path / "in", r=4, target_modules=["embed_tokens", "q_proj"])
    compress(src, tmp_path / "out", CompressConfig(threshold=0.0))
    old, new = load_file(src / "adapter_model.safetensors"), load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert set(old) == set(new)  # lora_embedding_A/B names and the saved embedding base layer
    assert torch.equal(old["base_model.model.model.embed_tokens.base_layer.weight"],
                       new["base_model.model.model.embed_tokens.base_layer.weight"])
    ids = torch.randint(3, 256, (1, 9))
    with torch.no_grad():
        assert torch.allclose(load_peft(src)(ids).logits, load_peft(tmp_path / "out")(ids).logits, atol=1e-4)
