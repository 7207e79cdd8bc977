"""Rank plans: validation, JSON, exact PEFT patterns that survive save/reload, parameter counts."""

import json

import pytest
import torch
from peft import PeftModel

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.ranks import (
    RankPlan,
    apply_plan,
    count_lora_params,
    peft_pattern_key,
    verify_ranks,
    wrapped_ranks,
)
from tests.tiny_models import tiny_llama

DEEP = dict(num_hidden_layers=12, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1)


def deep_llama(seed=0):
    """12 layers so that layer 1 and layers 10/11 coexist (the classic suffix-overlap case)."""
    return tiny_llama(seed=seed, **DEEP)


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_uniform_and_lora_star():
    assert RankPlan.uniform(3, 8).ranks == [8, 8, 8]
    assert RankPlan.lora_star(8).ranks == [4, 4, 6, 6, 10, 10, 12, 12]
    assert RankPlan.lora_star(30).ranks[:8] == [4] * 8 and RankPlan.lora_star(30).ranks[-7:] == [12] * 7
    assert sorted(set(RankPlan.lora_star(30).ranks)) == [4, 6, 10, 12]


def test_nonuniform_plan_survives_save_and_reload(tmp_path):
    # layer 1 rank differs from layers 10 and 11: an unescaped short key would leak across them
    ranks = [2, 5, 3, 4, 0, 2, 3, 4, 1, 2, 7, 6]
    plan = RankPlan(ranks=ranks, overrides={"model.layers.1.mlp.down_proj": 8})
    model = apply_plan(deep_llama(), plan)
    expected = {n: r for n, r in plan.module_ranks(model).items() if r > 0}
    assert wrapped_ranks(model) == expected
    assert not any(".layers.4." in n for n in wrapped_ranks(model))  # rank 0 = not wrapped
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(deep_llama(), tmp_path)
    assert wrapped_ranks(reloaded) == expected
    verify_ranks(reloaded, plan)
    # alpha = 2r per module survives too (scale 2 everywhere)
    for name, mod in reloaded.get_base_model().named_modules():
        if name in expected:
            assert mod.scaling["default"] == pytest.approx(2.0)


def test_pattern_key_is_exact():
    import re

    key = peft_pattern_key("model.layers.1.self_attn.q_proj")
    match = lambda name: re.match(rf"(.*\.)?({key})$", name)  # PEFT's rule
    assert match("model.layers.1.self_attn.q_proj")
    assert match("base_model.model.model.layers.1.self_attn.q_proj")
    assert not match("model.layers.11.self_attn.q_proj")
    assert not match("model.layersX1.self_attn.q_proj")


def test_count_matches_peft_trainable_params():
    plan = RankPlan(ranks=[1, 2, 3, 4, 5, 6, 7, 8, 0, 2, 3, 1])
    model = deep_llama()
    n = count_lora_params(model, plan)
    assert n == trainable(apply_plan(model, plan))
    # by hand for one uniform layer: q,k,v,o,gate,up,down of hidden 16, kv 8, mlp 32
    one = RankPlan(ranks=[1] + [0] * 11)
    assert count_lora_params(deep_llama(), one) == (16 + 16) + (16 + 8) * 2 + (16 + 16) + 3 * (16 + 32)


def test_count_on_pruned_per_layer_widths():
    model = tiny_llama()
    layer = model.model.layers[1]
    layer.mlp.gate_proj = torch.nn.Linear(64, 40, bias=False)
    layer.mlp.up_proj = torch.nn.Linear(64, 40, bias=False)
    layer.mlp.down_proj = torch.nn.Linear(40, 64, bias=False)
    plan = RankPlan.uniform(4, 4)
    assert count_lora_params(model, plan) == trainable(apply_plan(model, plan))


def test_rslora_and_fixed_alpha():
    plan = RankPlan(ranks=[4, 8, 4, 4], alpha_rule="rslora", alpha=16)
    cfg = plan.to_lora_config(tiny_llama())
    assert cfg.use_rslora and cfg.lora_alpha == 16 and not cfg.alpha_pattern
    model = apply_plan(tiny_llama(), plan)
    q1 = model.get_base_model().model.layers[1].self_attn.q_proj
    assert q1.scaling["default"] == pytest.approx(16 / 8 ** 0.5)
    fixed = apply_plan(tiny_llama(), RankPlan(ranks=[4, 8, 4, 4], alpha_rule="fixed", alpha=16))
    assert fixed.get_base_model().model.layers[1].self_attn.q_proj.scaling["default"] == pytest.approx(2.0)


def test_json_round_trip(tmp_path):
    plan = RankPlan(ranks=[1, 2, 3, 4], overrides={"model.layers.0.mlp.up_proj": 3}, model={"name": "tiny"})
    plan.to_json(tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text())["n_layers"] == 4
    assert RankPlan.from_json(tmp_path / "p.json") == plan


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(ranks=[1, -1]), "ranks[1]"),
        (dict(ranks=[1, 2.5]), "ranks[1]"),
        (dict(ranks=[]), "at least one"),
        (dict(ranks=[0, 0]), "every rank"),
        (dict(ranks=[1], alpha_rule="3r"), "alpha_rule"),
        (dict(ranks=[1], overrides={"x": -2}), "override"),
    ],
)
def test_bad_plans(kwargs, words):
    with pytest.raises(RankAdaptorError, match=words.replace("[", r"\[").replace("]", r"\]")):
        RankPlan(**kwargs)


def test_bad_plan_against_model(tmp_path):
    model = tiny_llama()
    with pytest.raises(RankAdaptorError, match="3 layer ranks but the model has 4"):
        RankPlan.uniform(3, 2).module_ranks(model)
    with pytest.raises(RankAdaptorError, match="available: .*q_proj"):
        RankPlan(ranks=[1] * 4, target_modules=("qkv",)).module_ranks(model)
    with pytest.raises(RankAdaptorError, match=r"model.layers.0.self_attn.k_proj exceeds min\(d_in, d_out\)"):
        RankPlan.uniform(4, 40).module_ranks(model)  # k_proj is 64 -> 32
    with pytest.raises(RankAdaptorError, match="name no targeted module"):
        RankPlan(ranks=[1] * 4, overrides={"layers.0.mlp.up_proj": 2}).module_ranks(model)
    (tmp_path / "bad.json").write_text(json.dumps({"n_layers": 5, "ranks": [1, 2]}))
    with pytest.raises(RankAdaptorError, match="n_layers=5 but lists 2"):
        RankPlan.from_json(tmp_path / "bad.json")


def test_verify_catches_a_mismatch():
    plan = RankPlan.uniform(4, 2)
    model = apply_plan(tiny_llama(), plan)
    with pytest.raises(RankAdaptorError, match="wrong LoRA rank"):
        verify_ranks(model, RankPlan(ranks=[2, 2, 3, 2]))


def test_module_costs_are_the_exact_price_of_one_rank_per_module():
    from rankadaptor.lora.ranks import layer_costs, module_costs

    model = deep_llama()
    costs = module_costs(model)
    assert len(costs) == 12 and list(costs[0])[0] == "model.layers.0.self_attn.q_proj"
    assert [k.rsplit(".", 1)[-1] for k in costs[3]] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"]
    assert [sum(c.values()) for c in costs] == layer_costs(model)
    plan = RankPlan(ranks=[2] * 12, overrides={"model.layers.3.mlp.down_proj": 5, "model.layers.4.self_attn.k_proj": 0})
    expected = sum(2 * c for layer in costs for c in layer.values()) + 3 * costs[3]["model.layers.3.mlp.down_proj"] \
        - 2 * costs[4]["model.layers.4.self_attn.k_proj"]
    assert count_lora_params(model, plan) == expected


def _lora_A(peft_model, name):
    from rankadaptor.lora.ranks import base_model_of

    return base_model_of(peft_model).get_submodule(name).lora_A["default"].weight.detach().clone()


def test_paired_init_depends_only_on_seed_module_and_rank():
    from rankadaptor.lora.ranks import paired_lora_init

    q3, k5 = "model.layers.3.self_attn.q_proj", "model.layers.5.self_attn.k_proj"
    a = apply_plan(deep_llama(), RankPlan(ranks=[4] * 12))
    b = apply_plan(deep_llama(), RankPlan(ranks=[8] * 3 + [4] + [2] * 8))  # layer 3 at rank 4 in both
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    assert paired_lora_init(a, seed=7) == 12 * 7 and paired_lora_init(b, seed=7) == 12 * 7
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG (dropout masks) untouched
    assert torch.equal(_lora_A(a, q3), _lora_A(b, q3))  # same rank, same start
    assert torch.equal(_lora_A(a, k5)[:2], _lora_A(b, k5))  # a lower rank starts from the first rows
    assert not torch.equal(_lora_A(a, q3), _lora_A(a, "model.layers.4.self_attn.q_proj"))
    bound = 1 / _lora_A(a, q3).shape[1] ** 0.5
    assert _lora_A(a, q3).abs().max() <= bound and _lora_A(a, q3).abs().max() > 0.5 * bound
    c = apply_plan(deep_llama(), RankPlan(ranks=[4] * 12))
    paired_lora_init(c, seed=8)
    assert not torch.equal(_lora_A(a, q3), _lora_A(c, q3))  # another seed, another start
