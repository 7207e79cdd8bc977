import json

import numpy as np
import pytest

from rankadaptor.errors import RankAdaptorError
from rankadaptor.search.space import SearchSpace, plan_hash

MODULE_NAMES = tuple(tuple(f"model.layers.{i}.{m}" for m in ("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"))
                     for i in range(4))
MODULE_COSTS = tuple((1.0, 2.0, 3.0) for _ in range(4))


def test_defaults_fix_first_four_and_last_two_at_eight():
    s = SearchSpace(12)
    assert s.free_layers.tolist() == list(range(4, 10))
    u = s.uniform(4)
    assert u[:4].tolist() == [8] * 4 and u[-2:].tolist() == [8, 8] and u[4:10].tolist() == [4] * 6


def test_non_positive_candidates_rejected():
    with pytest.raises(RankAdaptorError, match="positive"):
        SearchSpace(12, candidates=(0, 2, 4))
    with pytest.raises(RankAdaptorError, match="positive"):
        SearchSpace(12, candidates=(-2, 4))


def test_unreachable_budget_says_which_bound_to_move():
    with pytest.raises(RankAdaptorError, match="unreachable.*lower --budget or raise the largest rank candidate"):
        SearchSpace(12, budget=1e9)
    with pytest.raises(RankAdaptorError, match="unreachable.*raise --budget or lower the smallest rank candidate"):
        SearchSpace(12, budget=1.0)


def test_module_spaces_allow_rank_zero_layer_spaces_do_not():
    s = SearchSpace(4, granularity="module", fixed_first=1, fixed_last=1, module_names=MODULE_NAMES,
                    module_costs=MODULE_COSTS)
    assert s.candidates == tuple(range(33)) and s.n_units == 4 * 3 and s.n_free == 2 * 3
    assert s.free_layers.tolist() == [1, 2]
    assert s.layer_costs == (6.0, 6.0, 6.0, 6.0)


def test_sampling_respects_budget_and_is_fast_enough_for_ten_thousand():
    costs = np.linspace(1.0, 3.0, 30)
    base = SearchSpace(30, layer_costs=tuple(costs))
    s = SearchSpace(30, layer_costs=tuple(costs), budget=base.uniform_budget(8), tolerance=0.01)
    x = s.sample(10_000, rng=0)
    assert x.shape == (10_000, 30)
    assert s.is_valid(x).all()
    lo, hi = s.budget_bounds()
    c = s.cost(x)
    assert (c >= lo - 1e-9).all() and (c <= hi + 1e-9).all()
    assert len({tuple(r) for r in x}) > 9_000
    assert not s.is_valid(np.full(30, 12))[0]


def test_repair_spreads_plans_over_the_band_instead_of_its_near_edge():
    s = SearchSpace(30, budget=SearchSpace(30).uniform_budget(8), tolerance=0.03)
    lo, hi = s.budget_bounds()
    for start in (2, 12):  # every row starts far below (above) the band
        rows = np.tile(s.uniform(start), (400, 1))
        rows[:, 4:28] = np.random.default_rng(start).permutation(rows[:, 4:28].T).T
        fixed = s.repair(rows, 0)
        assert len(fixed) == 400 and s.is_valid(fixed).all()
        position = (s.cost(fixed) - lo) / (hi - lo)  # 0 = lower edge, 1 = upper edge
        assert 0.3 < position.mean() < 0.7 and (position < 0.4).mean() > 0.2 and (position > 0.6).mean() > 0.2


def test_sampled_plans_are_spread_over_the_band():
    s = SearchSpace(30, layer_costs=tuple(np.linspace(1, 3, 30)), budget=SearchSpace(30).uniform_budget(8) * 2,
                    tolerance=0.02)
    lo, hi = s.budget_bounds()
    position = (s.cost(s.sample(4000, 1)) - lo) / (hi - lo)
    assert abs(position.mean() - 0.5) < 0.1 and np.histogram(position, bins=4, range=(0, 1))[0].min() > 600


def test_latin_hypercube_is_stratified_per_unit():
    s = SearchSpace(16, fixed_first=1, fixed_last=1)  # no budget: no repair moves the design
    lhs = s.latin_hypercube(12, rng=4)
    for j in s.free_units:
        assert sorted(np.unique(lhs[:, j], return_counts=True)[1].tolist()) == [2] * 6


def test_mutations_and_latin_hypercube_are_valid_and_local():
    s = SearchSpace(16, budget=SearchSpace(16).uniform_budget(8), tolerance=0.1)
    lhs = s.latin_hypercube(12, rng=1)
    assert len(lhs) > 0 and s.is_valid(lhs).all()
    base = s.uniform()
    muts = s.mutate(base, 200, rng=2)
    assert len(muts) > 50 and s.is_valid(muts).all()
    steps = np.abs(np.searchsorted(s.candidates, muts) - np.searchsorted(s.candidates, base)).sum(1)
    assert steps.max() <= 3


def test_swaps_keep_the_budget_and_trade_one_step():
    s = SearchSpace(12, budget=SearchSpace(12).uniform_budget(8), tolerance=0.01)
    nb = s.swaps(s.uniform())
    assert len(nb) == 6 * 5 and s.is_valid(nb).all()  # every up-one/down-one pair of the 6 free layers
    assert (np.abs(nb - s.uniform()).sum(1) == 4).all()


def test_project_snaps_to_candidates_and_budget():
    s = SearchSpace(12, budget=SearchSpace(12).uniform_budget(8), tolerance=0.01)
    vec = np.array([8, 8, 8, 8, 3, 13, 7.4, 9, 8, 8, 8, 8])
    p = s.project(vec)
    assert s.is_valid(p)[0] and p[:4].tolist() == [8] * 4 and p[4] in (2, 4)


def test_features_normalised_and_dict_roundtrip():
    s = SearchSpace(10, candidates=(2, 12, 4), fixed_first=1, fixed_last=1, budget=80.0, tolerance=0.5)
    f = s.features(s.uniform(12))
    assert f.shape == (1, 8) and np.allclose(f, 1.0)
    s2 = SearchSpace.from_dict(json.loads(json.dumps(s.to_dict())))
    assert s2 == s and s2.candidates == (2, 4, 12)
    vec = s.uniform(4)
    assert (s.from_params(s.to_params(vec)) == vec).all()
    assert plan_hash(vec) == plan_hash(vec.tolist()) != plan_hash(s.uniform(2))
    with pytest.raises(RankAdaptorError, match="not in the space"):
        s.validate([3] * 10)


def test_rank_plan_json_roundtrip(tmp_path):
    from rankadaptor.lora.ranks import RankPlan
    from rankadaptor.search.space import to_rank_plan

    s = SearchSpace(8, fixed_first=1, fixed_last=1)
    vec = s.uniform(4)
    to_rank_plan(vec, {"model": "toy"}).to_json(tmp_path / "p.json")
    assert RankPlan.from_json(tmp_path / "p.json").ranks == vec.tolist()


def test_module_space_dict_roundtrip_params_and_plan():
    s = SearchSpace(4, granularity="module", fixed_first=1, fixed_last=1, module_names=MODULE_NAMES,
                    module_costs=MODULE_COSTS, budget=192.0)
    s2 = SearchSpace.from_dict(json.loads(json.dumps(s.to_dict())))
    assert s2 == s
    assert s.param_names()[:3] == ["r001_q_proj", "r001_k_proj", "r001_down_proj"]
    vec = s.sample(1, 0)[0]
    assert (s.from_params(s.to_params(vec)) == vec).all()
    plan = s.to_rank_plan(vec)
    assert plan.target_modules == ("q_proj", "k_proj", "down_proj")
    for i, names in enumerate(MODULE_NAMES):
        for k, name in enumerate(names):
            assert plan.overrides.get(name, plan.ranks[i]) == vec[3 * i + k]
    assert (s.from_module_ranks({n: plan.overrides.get(n, plan.ranks[i]) for i, layer in enumerate(MODULE_NAMES)
                                 for n in layer}) == vec).all()
    with pytest.raises(RankAdaptorError, match="unknown"):
        s.from_module_ranks({"model.layers.9.mlp.up_proj": 4})


def test_budget_is_exact_to_one_percent_in_both_granularities():
    from rankadaptor.lora.ranks import count_lora_params, module_costs
    from tests.tiny_models import tiny_llama

    model = tiny_llama(num_hidden_layers=6)
    costs = module_costs(model)
    for granularity in ("layer", "module"):
        base = SearchSpace.for_model(costs, granularity, fixed_first=1, fixed_last=1)
        s = SearchSpace.for_model(costs, granularity, fixed_first=1, fixed_last=1, budget=base.uniform_budget(8))
        assert s.tolerance == 0.01
        for vec in s.sample(50, 0):
            params = count_lora_params(model, s.to_rank_plan(vec))
            assert params == s.cost(vec) and abs(params / s.budget - 1) <= 0.01


def test_tilted_draws_aim_at_the_budget():
    costs = tuple(np.linspace(1, 3, 30))
    s = SearchSpace(30, layer_costs=costs, budget=SearchSpace(30, layer_costs=costs).uniform_budget(10),
                    tolerance=0.01)
    p = s._tilted_probs()
    cands = np.asarray(s.candidates, float)
    fixed_cost = (sum(costs) - s.unit_costs[s.free_units].sum()) * s.fixed_rank
    expected = fixed_cost + float(((p * cands).sum(1) * s.unit_costs[s.free_units]).sum())
    assert abs(expected / s.budget - 1) < 1e-3  # untilted draws (mean rank 7) would land 25 % below
    accepted = s.is_valid(s._tilted_batch(4000, np.random.default_rng(0))).mean()
    assert accepted > 0.05


def _module_space(budget_rank=8, candidates=None):
    costs = tuple(tuple(float(c) for c in np.linspace(1, 4, 7) * (1 + i / 10)) for i in range(12))
    names = tuple(tuple(f"model.layers.{i}.m{j}" for j in range(7)) for i in range(12))
    probe = SearchSpace(12, granularity="module", module_names=names, module_costs=costs)
    return SearchSpace(12, granularity="module", module_names=names, module_costs=costs, candidates=candidates,
                       budget=probe.uniform_budget(budget_rank))


def test_tilted_draws_are_the_inverse_cdf_of_the_tilted_probabilities():
    # the lookup-table draw must give, for the same uniforms, the index a direct inverse-CDF count gives
    s = _module_space()
    u = np.random.default_rng(5).random((3000, s.n_free))
    cum = np.cumsum(s._tilted_probs(), axis=1)
    cum[:, -1] = 1.0
    want = np.minimum((cum[None] <= u[:, :, None]).sum(2), len(s.candidates) - 1)
    got = s._tilted_batch(3000, np.random.default_rng(5))[:, s.free_units]
    assert np.array_equal(got, np.asarray(s.candidates)[want])
    kept = s._tilted_batch(3000, np.random.default_rng(5), only_valid=True)
    assert np.array_equal(kept, s._tilted_batch(3000, np.random.default_rng(5))[s.is_valid(got, free_only=True)])
    assert 0 < len(kept) < 3000 and s.is_valid(kept).all()


def test_validity_of_free_ranks_alone_matches_whole_plans():
    s = _module_space(candidates=tuple(range(0, 33, 2)))
    plans = np.concatenate([s.sample(200, 0), s.mutate(s.uniform(), 200, 1, max_changes=6)])
    plans = np.concatenate([plans, plans + 1, np.where(plans == 4, 34, plans), -plans])  # odd, 34: not candidates
    plans[:, s.free_units[0]] = np.arange(len(plans)) % 40
    assert np.array_equal(s.is_valid(plans[:, s.free_units], free_only=True),
                          s.is_valid(np.where(np.isin(np.arange(s.n_units), s.free_units), plans, s.fixed_rank)))
    lo, hi = s.budget_bounds()
    fixed = np.setdiff1d(np.arange(s.n_units), s.free_units)
    want = (np.isin(plans[:, s.free_units], s.candidates).all(1) & (plans[:, fixed] == s.fixed_rank).all(1)
            & (plans @ s.unit_costs >= lo - 1e-9) & (plans @ s.unit_costs <= hi + 1e-9))
    assert np.array_equal(s.is_valid(plans), want) and 0 < want.sum() < len(want)
    assert not s.is_valid(plans.astype(float) + 0.5).any()  # fractional ranks are never candidates


def test_log_features_by_lookup_equal_the_computed_ones():
    s = _module_space()
    plans = s.sample(300, 2)
    assert np.array_equal(s.log_features(plans), s.log_features(plans.astype(float)))


def test_unique_rows_equals_numpy_unique_over_rows():
    from rankadaptor.search.moves import unique_rows

    rng = np.random.default_rng(0)
    plans = rng.integers(0, 4, (500, 6))
    plans[::3] = plans[1::3]  # duplicates
    assert np.array_equal(unique_rows(plans), np.unique(plans, axis=0))
    wide = plans * 100  # ranks above 255 take numpy's path
    assert np.array_equal(unique_rows(wide), np.unique(wide, axis=0))
