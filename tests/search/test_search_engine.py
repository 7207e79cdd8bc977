import numpy as np
import optuna
import pytest

from rankadaptor.errors import RankAdaptorError
from rankadaptor.search.storage import open_storage
from rankadaptor.search.engine import SearchConfig, convergence, finalize, open_study, run_search
from rankadaptor.search.objective import SyntheticObjective
from rankadaptor.search.perf_model import MLPConfig
from rankadaptor.search.sampler import RankAdaptorSampler, make_sampler
from rankadaptor.search.space import SearchSpace, plan_hash

optuna.logging.set_verbosity(optuna.logging.WARNING)
FAST = MLPConfig(epochs=60, partial_epochs=20)


def _space(tol=0.1):
    kw = dict(n_layers=10, fixed_first=1, fixed_last=1)
    return SearchSpace(**kw, budget=SearchSpace(**kw).uniform_budget(8), tolerance=tol)


def _sampler(space, seed=0, **kw):
    args = dict(n_initial=4, pool_size=300, n_mutations=100, ensemble_size=2, mlp=FAST, cv_every=4, seed=seed)
    args.update(kw)
    return RankAdaptorSampler(space, **args)


def test_search_starts_with_uniform_never_repeats_and_respects_budget(tmp_path):
    space = _space()
    obj = SyntheticObjective(space, noise=0.001)
    study = open_study("s", open_storage(f"sqlite:///{tmp_path}/s.db"), space, obj.identity(), "rankadaptor", "maximize",
                       _sampler(space))
    run_search(study, space, obj, SearchConfig(n_trials=10, patience=50))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 10
    assert done[0].user_attrs["ranks"] == space.uniform().tolist()
    hashes = [t.user_attrs["plan_hash"] for t in done]
    assert len(set(hashes)) == len(hashes)
    assert space.is_valid(np.array([t.user_attrs["ranks"] for t in done])).all()
    guided = [t for t in done if t.user_attrs.get("proposal") == "model"]
    assert guided and all("predicted" in t.user_attrs for t in guided)
    assert any("cv_spearman" in t.user_attrs for t in guided)


def test_guided_search_beats_uniform_truth_on_a_low_noise_objective(tmp_path):
    space = _space()
    obj = SyntheticObjective(space, noise=0.0005, seed=3)
    study = open_study("g", open_storage(f"sqlite:///{tmp_path}/g.db"), space, obj.identity(), "rankadaptor", "maximize",
                       _sampler(space, seed=1))
    cfg = SearchConfig(n_trials=12, patience=50, final_seeds=3)
    run_search(study, space, obj, cfg)
    rep = finalize(study, space, obj, cfg, FAST)
    assert obj.truth(rep["best"]["ranks"])[0] > obj.truth(space.uniform())[0]
    assert rep["difference_vs_uniform"]["n"] == 3 and "ci_low" in rep["difference_vs_uniform"]
    assert rep["uniform"]["ranks"] == space.uniform().tolist()


def test_finalize_says_not_significant_and_chance_on_pure_noise(tmp_path):
    space = _space()

    def noise(ranks, seed=0, fidelity="full"):
        return float(np.random.default_rng([seed, int(np.sum(ranks) * 7 + ranks[3])]).normal())

    study = open_study("n", open_storage(f"sqlite:///{tmp_path}/n.db"), space, {"objective": "noise"}, "random", "maximize",
                       make_sampler("random", space, seed=0))
    cfg = SearchConfig(n_trials=8, final_seeds=3)
    run_search(study, space, noise, cfg)
    rep = finalize(study, space, noise, cfg, FAST)
    text = " ".join(rep["messages"])
    assert "NO better than chance" in text
    assert ("NOT significant" in text) == (not rep["difference_vs_uniform"]["significant"])


def test_resume_refuses_other_model_space_or_strategy(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    space = _space()
    obj = SyntheticObjective(space)
    study = open_study("r", open_storage(url), space, obj.identity(), "random", "maximize", make_sampler("random", space))
    run_search(study, space, obj, SearchConfig(n_trials=2))
    again = open_study("r", open_storage(url), space, obj.identity(), "random", "maximize", make_sampler("random", space))
    assert len(again.trials) == 2
    with pytest.raises(RankAdaptorError, match="different model"):
        open_study("r", open_storage(url), space, {"model": "other"}, "random", "maximize", make_sampler("random", space))
    with pytest.raises(RankAdaptorError, match="different space"):
        open_study("r", open_storage(url), _space(tol=0.2), obj.identity(), "random", "maximize", make_sampler("random", space))
    with pytest.raises(RankAdaptorError, match="different strategy"):
        open_study("r", open_storage(url), space, obj.identity(), "tpe", "maximize", make_sampler("tpe", space))


def test_tpe_proposals_are_repaired_into_the_budget_and_start_with_uniform(tmp_path):
    space = _space(tol=0.02)
    obj = SyntheticObjective(space)
    study = open_study("t", open_storage(f"sqlite:///{tmp_path}/t.db"), space, obj.identity(), "tpe", "maximize",
                       make_sampler("tpe", space, seed=0, n_initial=3))
    run_search(study, space, obj, SearchConfig(n_trials=6))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done[0].user_attrs["ranks"] == space.uniform().tolist()
    assert space.is_valid(np.array([t.user_attrs["ranks"] for t in done])).all()


def test_duplicate_plan_is_never_evaluated_twice(tmp_path):
    space = _space()
    calls = []

    def obj(ranks, seed=0, fidelity="full"):
        calls.append(plan_hash(ranks))
        return 0.0

    study = open_study("d", open_storage(f"sqlite:///{tmp_path}/d.db"), space, {"o": 1}, "random", "maximize",
                       make_sampler("random", space))
    uniform = space.to_params(space.uniform())
    study.enqueue_trial(uniform)
    study.enqueue_trial(uniform)  # the same plan twice, as a racing process would propose it
    run_search(study, space, obj, SearchConfig(n_trials=3))
    assert len(calls) == len(set(calls)) == 3
    assert any(t.user_attrs.get("duplicate") for t in study.trials)


def test_convergence_needs_small_model_error_and_no_improvement(tmp_path):
    space = _space()
    study = optuna.create_study(direction="maximize")
    for i, v in enumerate([1.0, 0.5, 0.6, 0.4, 0.55]):
        study.add_trial(optuna.trial.create_trial(
            value=v, params={}, distributions={},
            user_attrs={"ranks": space.uniform().tolist(), "predicted": v + 0.01}))
    assert convergence(space, study, SearchConfig(patience=4, tolerance=0.5))["converged"]
    assert not convergence(space, study, SearchConfig(patience=5, tolerance=0.5))["converged"]
    assert not convergence(space, study, SearchConfig(patience=4, tolerance=0.01))["converged"]


def test_failing_objective_stops_with_a_clear_error(tmp_path):
    space = _space()

    def broken(ranks, seed=0, fidelity="full"):
        raise RuntimeError("out of memory")

    study = open_study("f", open_storage(f"sqlite:///{tmp_path}/f.db"), space, {"o": 2}, "random", "maximize",
                       make_sampler("random", space))
    with pytest.raises(RankAdaptorError, match="3 trials in a row failed"):
        run_search(study, space, broken, SearchConfig(n_trials=5))
