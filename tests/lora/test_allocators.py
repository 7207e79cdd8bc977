"""Allocators: every one-shot plan lands within 1 % of the budget and records what its method chose."""

import copy

import pytest
import torch

from rankadaptor.data import load_recovery_data
from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora import allocators as A
from rankadaptor.lora.ranks import RankPlan, count_lora_params, module_costs
from rankadaptor.lora.recover import RecoveryConfig
from tests.tiny_models import TINY_TEXT, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    path = tmp_path_factory.mktemp("alloc") / "c.txt"
    path.write_text("\n\n".join(TINY_TEXT * 40))
    model, tok = tiny_llama(num_hidden_layers=6), tiny_tokenizer()
    data = load_recovery_data(path, tok, seq_len=32, max_val=4)
    return model, tok, data, count_lora_params(model, RankPlan.uniform(6, 4))


def test_fit_to_budget_keeps_proportions_and_zeros():
    costs = {"a": 10, "b": 20, "c": 30, "d": 15}
    ranks, factor = A.fit_to_budget({"a": 2, "b": 4, "c": 8, "d": 0}, costs, budget=1000)
    assert ranks["d"] == 0 and abs(sum(ranks[n] * costs[n] for n in costs) - 1000) <= 10
    assert factor == pytest.approx(1000 / 340) and ranks["a"] < ranks["b"] < ranks["c"]
    same, one = A.fit_to_budget({"a": 10, "b": 0, "c": 30, "d": 0}, costs, budget=1000)
    assert one == 1.0 and same == {"a": 10, "b": 0, "c": 30, "d": 0}  # already within 1 %: untouched
    with pytest.raises(RankAdaptorError, match="caps"):
        A.fit_to_budget({"a": 1, "b": 1, "c": 1, "d": 1}, costs, budget=1000, caps={n: 2 for n in costs})


def test_module_plan_round_trips_and_refuses_unknown_modules(setting):
    model = setting[0]
    names = [n for layer in module_costs(model) for n in layer]
    ranks = {n: (i % 5) for i, n in enumerate(names)}
    assert A.module_plan(model, ranks).module_ranks(model) == ranks
    with pytest.raises(RankAdaptorError, match="unknown"):
        A.module_plan(model, {**ranks, "model.layers.9.mlp.up_proj": 2})


def test_one_shot_allocators_land_on_the_budget(setting):
    model, _, data, budget = setting
    for alloc in (A.uniform(model, budget), A.lora_star(model, budget),
                  A.eva(copy.deepcopy(model), budget, A.eva_batches(data, 0, 4, 4), r=4)):
        assert abs(alloc.params / budget - 1) <= 0.01, alloc.name
        assert alloc.params == count_lora_params(model, alloc.plan)
    star = A.lora_star(model, budget)
    assert "scaled by" in star.note and star.raw_params != budget
    assert star.plan.ranks[0] < star.plan.ranks[-1]  # LoRA*'s rising shape survives the scaling


def test_eva_records_its_own_ranks_and_initialises_from_its_components(setting):
    model, _, data, budget = setting
    alloc = A.eva(copy.deepcopy(model), budget, A.eva_batches(data, 0, 4, 4), r=4)
    assert set(alloc.raw_ranks) == {n for layer in module_costs(model) for n in layer}
    assert len(set(alloc.raw_ranks.values())) > 1  # EVA moved rank between modules
    comps = alloc.extra["components"]
    peft_model, _, info = A.EvaMethod(alloc.plan, comps).prepare(copy.deepcopy(model), None, 1)
    assert info["eva_rows_initialised"] > 0
    name = next(n for n, r in alloc.plan.module_ranks(model).items() if r > 0)
    A_w = peft_model.get_base_model().get_submodule(name).lora_A["default"].weight
    k = min(A_w.shape[0], comps[name].shape[0])
    assert torch.allclose(A_w[:k], comps[name][:k].to(A_w.dtype))  # lr 0: still EVA's start


def test_para_and_prunedlora_allocations_from_short_runs(setting):
    from rankadaptor.experiment_methods import prunedlora_at_budget

    model, tok, data, budget = setting
    para = A.para(copy.deepcopy(model), tok, data, budget, RecoveryConfig(max_steps=2, batch_size=2, seq_len=32),
                  high_rank=8)
    assert abs(para.params / budget - 1) <= 0.01 and max(para.raw_ranks.values()) <= 8
    method = prunedlora_at_budget(model, 8, budget, 8)
    pl = A.prunedlora(copy.deepcopy(model), tok, data, budget,
                      RecoveryConfig(max_steps=8, batch_size=2, seq_len=32, lr=1e-3), method)
    assert abs(pl.params / budget - 1) <= 0.01 and pl.raw_params <= budget


def test_unknown_allocator_lists_the_valid_ones():
    with pytest.raises(RankAdaptorError, match="valid:.*eva.*para"):
        A.get_allocator("magic")
