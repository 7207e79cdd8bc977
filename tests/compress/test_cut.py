"""Cutting an adapter to a rank plan: exact SVD and prefix cuts, written as standard PEFT adapters at the
plan's parameter count, identical to the in-memory fast path, and bad plans refused before any work."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from rankadaptor.compress import cut as cut_mod
from rankadaptor.compress.adapter_io import read_adapter
from rankadaptor.compress.cut import InMemoryCut, check_budget, cut, cut_to_plan, rule_ranks
from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.ranks import RankPlan, count_lora_params, wrapped_ranks
from rankadaptor.lora.recover import RecoveryConfig
from rankadaptor.lora.super_adapter import StartFromAdapter
from tests.compress.para_helpers import make_adapter, tree_hash
from tests.tiny_models import tiny_llama, tiny_tokenizer

DOWN1 = "model.layers.1.mlp.down_proj"


@pytest.fixture
def wide(tmp_path):
    return make_adapter(tmp_path / "wide", r=8, alpha=16)


def _ids():
    return torch.tensor([tiny_tokenizer()("The quick brown fox jumps over the lazy dog.")["input_ids"]])


def _delta(adapter, name):
    m = adapter.modules[name]
    return (m.scale * m.B.double() @ m.A.double())


@pytest.mark.parametrize("how", ["svd", "prefix"])
def test_cut_to_plan_is_a_peft_adapter_equal_to_the_in_memory_cut(tmp_path, wide, how):
    model = tiny_llama()
    plan = RankPlan(ranks=[1, 3, 0, 8], overrides={DOWN1: 2})
    report = cut_to_plan(wide, model, plan, tmp_path / "cut", how=how)
    assert report["totals"]["params_after"] == count_lora_params(model, plan) == report["totals"]["plan_params"]
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "cut").eval()
    expected = {n: r for n, r in plan.module_ranks(model).items() if r}
    assert wrapped_ranks(loaded) == expected and expected[DOWN1] == 2
    with InMemoryCut(model, read_adapter(wide), how) as fast, torch.no_grad():
        fast.set_ranks(plan.module_ranks(model))
        assert fast.params() == count_lora_params(model, plan)
        torch.testing.assert_close(model(_ids()).logits, loaded(_ids()).logits, atol=1e-5, rtol=0)
        fast.set_ranks({n: 0 for n in fast.ranks} | {DOWN1: 1})  # another plan: only a rank per module changes
        other = model(_ids()).logits
    assert not torch.allclose(other, loaded(_ids()).logits, atol=1e-3)
    with torch.no_grad():  # the hooks are gone after the block: the base model again
        torch.testing.assert_close(model(_ids()).logits, tiny_llama()(_ids()).logits)


def test_one_live_in_memory_cut_per_model(wide):
    model = tiny_llama()
    first = InMemoryCut(model, read_adapter(wide))
    with torch.no_grad():
        once = model(_ids()).logits
    with pytest.raises(RankAdaptorError, match="already carries another in-memory cut's hooks"):
        InMemoryCut(model, read_adapter(wide))  # its update would be added to the first one's
    first.remove()
    with InMemoryCut(model, read_adapter(wide)), torch.no_grad():  # the model is free again: one update, not two
        torch.testing.assert_close(model(_ids()).logits, once)
    first.attach()
    first.remove()


def test_svd_cut_is_the_best_rank_b_approximation_and_prefix_the_trained_components(wide):
    adapter = read_adapter(wide)
    name = "model.layers.2.self_attn.q_proj"
    ranks = {n: 3 for n in adapter.modules}
    svd, _ = cut(adapter, ranks, "svd")
    pre, _ = cut(adapter, ranks, "prefix")
    full = _delta(adapter, name)
    S = torch.linalg.svdvals(full)
    err = torch.linalg.matrix_norm(full - _delta(svd, name)) ** 2
    assert abs(float(err) - float(S[3:].pow(2).sum())) < 1e-8 * float(S.pow(2).sum())  # Eckart-Young
    m = adapter.modules[name]
    torch.testing.assert_close(_delta(pre, name), m.scale * m.B[:, :3].double() @ m.A[:3].double())
    assert float(torch.linalg.matrix_norm(full - _delta(pre, name))) > float(err.sqrt()) + 1e-6
    whole, _ = cut(adapter, {n: m.r for n, m in adapter.modules.items()}, "svd")  # full rank: the same update
    torch.testing.assert_close(_delta(whole, name), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rule", ["para", "uniform", "energy"])
def test_rules_fit_the_budget(wide, rule):
    adapter = read_adapter(wide)
    budget = adapter.params // 4 + 100  # uniform rank 2 fits exactly, with a little to spare
    ranks = rule_ranks(rule, adapter, budget)
    used = sum(b * (adapter.modules[n].d_in + adapter.modules[n].d_out) for n, b in ranks.items())
    assert 0 < used <= budget and used > budget * 0.8


def test_bad_plans_fail_before_any_work(tmp_path, wide, monkeypatch):
    adapter = read_adapter(wide)
    model = tiny_llama()
    before = tree_hash(tmp_path)

    def no_work(*a, **k):
        raise AssertionError("decomposed before the input was checked")

    monkeypatch.setattr(cut_mod, "compress_to_ranks", no_work)
    monkeypatch.setattr(cut_mod, "decompose_adapter", no_work)
    with pytest.raises(RankAdaptorError, match=r"rank 9, but the adapter has rank 8 there \(the bound\)"):
        cut_to_plan(wide, model, RankPlan(ranks=[8, 8, 8, 8], overrides={DOWN1: 9}), tmp_path / "o")
    with pytest.raises(RankAdaptorError, match="trained on another model"):
        cut_to_plan(wide, tiny_llama(intermediate_size=96), RankPlan.uniform(4, 2), tmp_path / "o")
    with pytest.raises(RankAdaptorError, match="trained on another model"):
        InMemoryCut(tiny_llama(num_hidden_layers=5, hidden_size=48), adapter)
    floor = sum(m.d_in + m.d_out for m in adapter.modules.values())
    with pytest.raises(RankAdaptorError, match=f"below one component per kept module.*at least {floor:,}"):
        rule_ranks("uniform", adapter, floor - 1)
    with pytest.raises(RankAdaptorError, match="above the adapter"):
        check_budget(adapter, adapter.params + 1)
    with pytest.raises(RankAdaptorError, match="unknown"):
        rule_ranks("knapsack", adapter, floor)
    with pytest.raises(RankAdaptorError, match="every module rank 0"):
        cut(adapter, {}, "prefix")
    with pytest.raises(RankAdaptorError, match="does not adapt"):
        cut(adapter, {"model.layers.0.mlp.nope": 1}, "prefix")
    assert tree_hash(tmp_path) == before  # nothing written


def test_fine_tuning_starts_exactly_at_the_cut(tmp_path, wide):
    adapter = read_adapter(wide)
    sub, _ = cut(adapter, {n: 2 for n in adapter.modules}, "svd")
    method = StartFromAdapter(sub, dropout=0.0)
    method.validate(tiny_llama())
    peft_model, _, info = method.prepare(tiny_llama(), RecoveryConfig(max_steps=1), 1)
    assert info["final_params"] == sub.params
    cut_to_plan(wide, tiny_llama(), {n: 2 for n in adapter.modules}, tmp_path / "c2")
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "c2").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model.eval()(_ids()).logits, loaded(_ids()).logits, atol=1e-5, rtol=0)
    with pytest.raises(RankAdaptorError, match="trained on another model"):
        StartFromAdapter(sub).validate(tiny_llama(intermediate_size=96))
