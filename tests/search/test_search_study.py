"""run_study's inputs: seed plans of either granularity brought into the space, module costs required per module."""

import numpy as np
import optuna
import pytest

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.ranks import DEFAULT_TARGETS, RankPlan
from rankadaptor.search.study import SearchSettings, make_space, run_study, seed_vectors
from rankadaptor.search.synthetic import additive

LAYERS = 8
# per layer {module: cost}; attention modules cheaper than MLP ones, as in a real model
COSTS = [{f"model.layers.{i}.{t}": (1.0 if t in ("k_proj", "v_proj") else 3.0) for t in DEFAULT_TARGETS}
         for i in range(LAYERS)]


def _settings(**kw):
    return SearchSettings(study="s", trials=4, fixed_first=1, fixed_last=1, n_initial=3, noise_every=0, **kw)


def test_a_per_module_plan_seeds_a_per_layer_space_with_its_layer_budget_shares():
    space = make_space(_settings(), COSTS)
    heavy = {f"model.layers.3.{t}": 12 for t in DEFAULT_TARGETS}  # layer 3 takes rank, layer 4 gives it
    light = {f"model.layers.4.{t}": 4 for t in DEFAULT_TARGETS}
    plan = RankPlan(ranks=[8] * LAYERS, overrides={**heavy, **light})
    ((label, vec),) = seed_vectors([("pl", plan)], space, COSTS)
    assert label == "pl" and space.is_valid(vec)[0]
    assert vec[3] == 12 and vec[4] == 4 and vec[0] == 8


def test_a_per_layer_plan_seeds_a_per_module_space_module_by_module():
    space = make_space(_settings(granularity="module"), COSTS)
    plan = RankPlan(ranks=[8, 8, 6, 10, 8, 8, 8, 8])
    ((_, vec),) = seed_vectors([("layers", plan)], space, COSTS)
    per_layer = vec.reshape(LAYERS, len(DEFAULT_TARGETS))
    assert (per_layer[2] == 6).all() and (per_layer[3] == 10).all() and space.is_valid(vec)[0]


def test_seed_plans_for_another_model_are_refused():
    space = make_space(_settings(), COSTS)
    with pytest.raises(RankAdaptorError, match="has 3 layer ranks"):
        seed_vectors([("short", RankPlan(ranks=[8, 8, 8]))], space, COSTS)
    with pytest.raises(RankAdaptorError, match="lacks"):
        seed_vectors([("x", RankPlan(ranks=[8] * LAYERS, overrides={"model.layers.99.mlp.up_proj": 4}))],
                     space, COSTS)
    with pytest.raises(RankAdaptorError, match="module_costs"):
        make_space(_settings(granularity="module"), [1.0] * LAYERS)


def test_run_study_queues_seed_plans_and_returns_a_report_without_writing():
    settings = _settings(seeds=[("lora-star", RankPlan.lora_star(LAYERS))], final_seeds=3)
    space = make_space(settings, COSTS)
    obj = additive(space, noise=0.001, seed=1)
    result = run_study(settings, obj, COSTS, obj.identity(), storage=optuna.storages.InMemoryStorage())
    done = [t for t in result.study.trials if t.state.name == "COMPLETE"]
    assert [t.user_attrs.get("seeded_from") for t in done[:2]] == ["uniform", "lora-star"]
    assert result.report["best"]["ranks"] and result.paths == {}
    assert np.isclose(space.cost(np.asarray(done[1].user_attrs["ranks"])) / space.budget, 1, atol=0.01)


@pytest.mark.parametrize("strategy", ["rankadaptor", "random"])
def test_only_rankadaptor_adds_its_surrogates_optimum_to_the_finalists(strategy):
    # a baseline strategy is compared by what it proposed: its pick comes from the plans it measured
    settings = SearchSettings(study="s", trials=8, fixed_first=1, fixed_last=1, n_initial=3, noise_every=0,
                              strategy=strategy, final_seeds=2)
    space = make_space(settings, COSTS)
    obj = additive(space, noise=0.001, seed=1)
    result = run_study(settings, obj, COSTS, obj.identity(), storage=optuna.storages.InMemoryStorage())
    sources = {f["source"] for f in result.report["finalists"]}
    measured = {tuple(t.user_attrs["ranks"]) for t in result.study.trials if t.state.name == "COMPLETE"}
    if strategy == "random":
        assert "model" not in sources
        assert all(tuple(f["ranks"]) in measured for f in result.report["finalists"])
    else:
        assert "model" in sources


def test_the_final_model_weighs_the_measured_noise_by_its_repeats_and_proposals_take_it_as_known(monkeypatch):
    # the pick's model pools the repeats' noise with its fit (a noise measured from 1-3 repeats can be 10x off);
    # proposals take it as known (on development seeds pooling there made Thompson sampling over-explore)
    from rankadaptor.search import final, surrogates

    calls, phase = [], ["search"]
    fit, finalize = surrogates.HierarchicalSurrogate.fit, final.finalize

    def spy(self, X, y, noise_sd=None, noise_dof=None):
        calls.append((phase[0], noise_sd, noise_dof))
        return fit(self, X, y, noise_sd, noise_dof)

    def finalize_spy(*args, **kwargs):
        phase[0] = "final"
        return finalize(*args, **kwargs)

    monkeypatch.setattr(surrogates.HierarchicalSurrogate, "fit", spy)
    monkeypatch.setattr(final, "finalize", finalize_spy)
    settings = SearchSettings(study="s", trials=12, fixed_first=1, fixed_last=1, n_initial=3, noise_every=3,
                              final_seeds=2, cv_every=100)
    space = make_space(settings, COSTS)
    obj = additive(space, noise=0.002, seed=1)
    run_study(settings, obj, COSTS, obj.identity(), storage=optuna.storages.InMemoryStorage())
    measured = [c for c in calls if c[1] is not None]  # fits after the first noise repeat
    at_end = [dof for stage, _, dof in measured if stage == "final"]
    proposals = [dof for stage, _, dof in measured if stage == "search"]
    assert at_end and all(dof is not None and dof >= 1 for dof in at_end)
    assert proposals and all(dof is None for dof in proposals)
