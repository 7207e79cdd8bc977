import json

import numpy as np
import pytest

from rankadaptor.errors import RankAdaptorError
from rankadaptor.search.space import SearchSpace, plan_hash


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


def test_unreachable_budget_is_a_clear_error():
    with pytest.raises(RankAdaptorError, match="unreachable"):
        SearchSpace(12, budget=1e9)
    with pytest.raises(RankAdaptorError, match="unreachable"):
        SearchSpace(12, budget=1.0)


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


def test_mutations_and_latin_hypercube_are_valid_and_local():
    s = SearchSpace(16, budget=SearchSpace(16).uniform_budget(8), tolerance=0.1)
    lhs = s.latin_hypercube(12, rng=1)
    assert len(lhs) > 0 and s.is_valid(lhs).all()
    base = s.uniform()
    muts = s.mutate(base, 200, rng=2)
    assert len(muts) > 50 and s.is_valid(muts).all()
    steps = np.abs(np.searchsorted(s.candidates, muts) - np.searchsorted(s.candidates, base)).sum(1)
    assert steps.max() <= 3


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
