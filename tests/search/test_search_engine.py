import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from rankadaptor.errors import RankAdaptorError
from rankadaptor.search import noise
from rankadaptor.search.engine import SearchConfig, convergence, finalize, open_study, run_search
from rankadaptor.search.perf_model import MLPConfig
from rankadaptor.search.sampler import RankAdaptorSampler, make_sampler
from rankadaptor.search.space import SearchSpace, plan_hash
from rankadaptor.search.storage import open_storage
from rankadaptor.search.synthetic import SyntheticObjective, additive

optuna.logging.set_verbosity(optuna.logging.WARNING)
FAST = MLPConfig(epochs=60, partial_epochs=20)


def _space(tol=0.1, n=10):
    kw = dict(n_layers=n, fixed_first=1, fixed_last=1)
    return SearchSpace(**kw, budget=SearchSpace(**kw).uniform_budget(8), tolerance=tol)


def _sampler(space, seed=0, **kw):
    args = dict(n_initial=4, pool_size=300, n_mutations=100, cv_every=4, seed=seed)
    args.update(kw)
    return RankAdaptorSampler(space, **args)


def _study(tmp_path, space, strategy, sampler, name="s", identity=None, seeds=()):
    """A study in memory (the SQLite path is covered by the resume test and test_search_storage.py)."""
    return open_study(name, optuna.storages.InMemoryStorage(), space, identity or {"o": name}, strategy,
                      "maximize", sampler, seeds=seeds)


class Recording:
    """A synthetic objective that records every (plan, seed, fidelity) it is asked for."""

    direction = "maximize"

    def __init__(self, space, noise=0.001, seed=0):
        self.inner = SyntheticObjective(space, noise=noise, seed=seed)
        self.calls = []

    def __call__(self, ranks, seed=0, fidelity="full"):
        self.calls.append((plan_hash(ranks), int(seed), fidelity))
        return self.inner(ranks, seed=seed, fidelity=fidelity)


def test_search_starts_with_uniform_never_repeats_and_respects_budget(tmp_path):
    space = _space()
    obj = SyntheticObjective(space, noise=0.001)
    study = _study(tmp_path, space, "rankadaptor", _sampler(space))
    run_search(study, space, obj, SearchConfig(n_trials=10, patience=50))
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 10
    assert done[0].user_attrs["ranks"] == space.uniform().tolist()
    hashes = [t.user_attrs["plan_hash"] for t in done]
    assert len(set(hashes)) == len(hashes)
    assert space.is_valid(np.array([t.user_attrs["ranks"] for t in done])).all()
    guided = [t for t in done if t.user_attrs.get("proposal") == "model"]
    assert guided and all("predicted" in t.user_attrs and t.user_attrs["surrogate"] == "hierarchical" for t in guided)
    assert any("cv_spearman" in t.user_attrs for t in guided)


def test_screening_trials_share_the_study_seed_repeats_and_finals_use_fresh_ones(tmp_path):
    space = _space()
    obj = Recording(space)
    study = _study(tmp_path, space, "random", make_sampler("random", space, seed=0))
    cfg = SearchConfig(n_trials=8, final_seeds=3, seed=5, noise_every=4)
    run_search(study, space, obj, cfg)
    trial_calls = obj.calls[:]
    screening = [c for c in trial_calls if c[1] == 5]
    assert len(screening) == 8 and {c[2] for c in screening} == {"full"}  # common random numbers
    repeats = [c for c in trial_calls if c[1] != 5]
    assert {c[1] for c in repeats} == {noise.repeat_seed(5, 1), noise.repeat_seed(5, 2)}
    assert plan_hash(space.uniform()) in {c[0] for c in repeats}
    finalize(study, space, obj, cfg)
    finals = obj.calls[len(trial_calls):]
    assert {c[2] for c in finals} == {"final"} and {c[1] for c in finals} == {10_000, 10_001, 10_002}
    assert not {c[1] for c in finals} & {c[1] for c in trial_calls}  # never a seed the search used


@pytest.mark.parametrize("strategy", ["tpe", "gp"])
def test_optuna_samplers_learn_only_from_evaluated_plans(tmp_path, strategy):
    space = _space(tol=0.01)
    obj = Recording(space)
    study = _study(tmp_path, space, strategy, make_sampler(strategy, space, seed=0, n_initial=3))
    run_search(study, space, obj, SearchConfig(n_trials=8, noise_every=0))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 8 and done[0].user_attrs["ranks"] == space.uniform().tolist()
    for t in done:  # what the sampler sees (params) is exactly what was evaluated (ranks)
        assert space.from_params(t.params).tolist() == t.user_attrs["ranks"]
    rejected = [t for t in study.trials if t.user_attrs.get("invalid")]
    assert rejected, "a 1 % band should make the sampler propose out-of-budget plans"
    assert all(t.state == TrialState.FAIL for t in rejected)  # ignored by TPE and GP (they read COMPLETE/PRUNED)
    assert not study.get_trials(states=(TrialState.PRUNED,))
    assert len(obj.calls) == 8  # no rejected proposal was evaluated
    repaired = [t for t in done if t.user_attrs.get("repaired_from") is not None]
    assert repaired and {t.user_attrs["repaired_from"] for t in repaired} <= {t.number for t in rejected}


def test_seed_plans_are_queued_right_after_uniform(tmp_path):
    space = _space()
    seed_plan = space.project(np.array([8, 4, 4, 6, 8, 10, 12, 12, 6, 8]))
    study = _study(tmp_path, space, "rankadaptor", _sampler(space), seeds=[("lora-star", seed_plan)])
    run_search(study, space, SyntheticObjective(space), SearchConfig(n_trials=3, noise_every=0))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.user_attrs.get("seeded_from") for t in done[:2]] == ["uniform", "lora-star"]
    assert done[1].user_attrs["ranks"] == seed_plan.tolist()
    assert done[2].user_attrs["proposal"] == "initial"


def test_initial_design_is_one_latin_hypercube_taken_row_by_row(tmp_path):
    space = _space(n=12)
    sampler = _sampler(space, n_initial=7, seed=3)
    study = _study(tmp_path, space, "rankadaptor", sampler)
    run_search(study, space, SyntheticObjective(space), SearchConfig(n_trials=6, noise_every=0))
    design = sampler.design()
    assert design is sampler.design()  # drawn once
    initial = [t.user_attrs["ranks"] for t in study.get_trials(states=(TrialState.COMPLETE,))
               if t.user_attrs.get("proposal") == "initial"]
    assert len(initial) == 5 and initial == design[:5].tolist()


def test_guided_search_beats_uniform_truth_on_a_low_noise_objective(tmp_path):
    space = _space()
    obj = SyntheticObjective(space, noise=0.0005, seed=3)
    study = _study(tmp_path, space, "rankadaptor", _sampler(space, seed=1))
    cfg = SearchConfig(n_trials=12, patience=50, final_seeds=3)
    run_search(study, space, obj, cfg)
    rep = finalize(study, space, obj, cfg)
    assert obj.truth(rep["best"]["ranks"])[0] > obj.truth(space.uniform())[0]
    assert rep["difference_vs_uniform"]["n"] == 3 and "ci_low" in rep["difference_vs_uniform"]
    assert rep["uniform"]["ranks"] == space.uniform().tolist()
    assert rep["messages"][0].startswith("plans differ by more than noise: YES")


def test_mlp_surrogate_still_drives_the_search(tmp_path):
    space = _space()
    sampler = _sampler(space, surrogate="mlp", surrogate_options={"mlp": FAST, "ensemble_size": 2})
    study = _study(tmp_path, space, "rankadaptor", sampler)
    run_search(study, space, SyntheticObjective(space), SearchConfig(n_trials=7, noise_every=0))
    guided = [t for t in study.trials if t.user_attrs.get("proposal") == "model"]
    assert guided and all(t.user_attrs["surrogate"] == "mlp" for t in guided)


def test_finalize_says_no_difference_on_pure_noise(tmp_path):
    space = _space()

    def pure_noise(ranks, seed=0, fidelity="full"):
        return float(np.random.default_rng([seed, int(plan_hash(ranks), 16) % 10 ** 9]).normal())

    pure_noise.direction = "maximize"
    study = _study(tmp_path, space, "random", make_sampler("random", space, seed=0))
    cfg = SearchConfig(n_trials=12, final_seeds=3, noise_every=3)
    run_search(study, space, pure_noise, cfg)
    rep = finalize(study, space, pure_noise, cfg)
    text = " ".join(rep["messages"])
    assert "NO better than chance" in text
    assert rep["noise"]["n_repeats"] >= 4 and rep["noise"]["noise_sd"] > 0.3
    assert rep["messages"][0].startswith("plans differ by more than noise: NO")


def test_two_final_seeds_are_no_test(tmp_path):
    space = _space()
    obj = SyntheticObjective(space, noise=0.0)
    study = _study(tmp_path, space, "random", make_sampler("random", space, seed=0))
    cfg = SearchConfig(n_trials=4, final_seeds=2, noise_every=0)
    run_search(study, space, obj, cfg)
    rep = finalize(study, space, obj, cfg)
    assert rep["difference_vs_uniform"]["verdict"] == "no test"
    assert not rep["difference_vs_uniform"]["significant"]
    assert any(m.startswith("NO TEST") for m in rep["messages"])


def test_resume_refuses_other_model_space_or_strategy(tmp_path):
    url = f"sqlite:///{tmp_path}/r.db"
    space = _space()
    obj = SyntheticObjective(space)
    study = open_study("r", open_storage(url), space, obj.identity(), "random", "maximize", make_sampler("random", space))
    run_search(study, space, obj, SearchConfig(n_trials=2, noise_every=0))
    again = open_study("r", open_storage(url), space, obj.identity(), "random", "maximize", make_sampler("random", space))
    assert len(again.trials) == 2
    with pytest.raises(RankAdaptorError, match="different model"):
        open_study("r", open_storage(url), space, {"model": "other"}, "random", "maximize", make_sampler("random", space))
    with pytest.raises(RankAdaptorError, match="different space"):
        open_study("r", open_storage(url), _space(tol=0.2), obj.identity(), "random", "maximize", make_sampler("random", space))
    with pytest.raises(RankAdaptorError, match="different strategy"):
        open_study("r", open_storage(url), space, obj.identity(), "tpe", "maximize", make_sampler("tpe", space))


def test_duplicate_plan_is_never_evaluated_twice(tmp_path):
    space = _space()
    calls = []

    def obj(ranks, seed=0, fidelity="full"):
        calls.append(plan_hash(ranks))
        return 0.0

    study = _study(tmp_path, space, "random", make_sampler("random", space), name="d")
    uniform = space.to_params(space.uniform())
    study.enqueue_trial(uniform)  # the uniform plan again, as a racing process would propose it
    run_search(study, space, obj, SearchConfig(n_trials=3, noise_every=0))
    assert len(calls) == len(set(calls)) == 3
    dup = [t for t in study.trials if t.user_attrs.get("duplicate")]
    assert dup and all(t.state == TrialState.FAIL for t in dup)


def _with_trials(values, noise_sd=None, predicted_offset=0.01):
    space = _space()
    study = optuna.create_study(direction="maximize")
    for v in values:
        study.add_trial(optuna.trial.create_trial(
            value=v, params={}, distributions={},
            user_attrs={"ranks": space.uniform().tolist(), "predicted": v + predicted_offset}))
    if noise_sd is not None:  # one repeat pair whose difference moved by 2 * noise_sd -> pair_sd = noise_sd
        study.set_user_attr("noise:001:uniform", {"seed": 1, "value": 0.0, "plan_hash": "u", "at_study_seed": 0.0})
        study.set_user_attr("noise:001:incumbent", {
            "seed": 1, "value": 2 * noise_sd, "plan_hash": "i", "at_study_seed": 0.0, "uniform_value": 0.0,
            "uniform_at_study_seed": 0.0})
    return space, study


def test_convergence_needs_small_model_error_and_no_improvement():
    space, study = _with_trials([1.0, 0.5, 0.6, 0.4, 0.55])
    assert convergence(space, study, SearchConfig(patience=4, tolerance=0.5))["converged"]
    assert not convergence(space, study, SearchConfig(patience=5, tolerance=0.5))["converged"]
    assert not convergence(space, study, SearchConfig(patience=4, tolerance=0.01))["converged"]


def test_convergence_ignores_improvements_within_the_noise():
    values = [1.0, 1.001, 1.002, 0.9, 1.003]
    space, study = _with_trials(values)
    assert convergence(space, study, SearchConfig(patience=3))["trials_since_best"] == 0
    space, study = _with_trials(values, noise_sd=0.01)
    state = convergence(space, study, SearchConfig(patience=3))
    assert state["trials_since_best"] == 4 and state["noise_sd"] == pytest.approx(0.01)
    # the model error is judged against the noise too: an error of 1.5 noise sd is as good as it gets
    space, study = _with_trials(values, noise_sd=0.01, predicted_offset=0.015)
    assert convergence(space, study, SearchConfig(patience=3, tolerance=0.01))["converged"]


def test_noise_estimates_recover_the_synthetic_noise(tmp_path):
    space = _space()
    obj = additive(space, noise=0.01, seed=1)
    study = _study(tmp_path, space, "random", make_sampler("random", space, seed=2))
    run_search(study, space, obj, SearchConfig(n_trials=24, noise_every=2))
    est = noise.estimate(study)
    assert est["pair_dof"] >= 8 and 0.004 < est["pair_sd"] < 0.02
    assert 0.004 < est["seed_sd"] < 0.02


def test_failing_objective_stops_with_a_clear_error(tmp_path):
    space = _space()

    def broken(ranks, seed=0, fidelity="full"):
        raise RuntimeError("out of memory")

    study = _study(tmp_path, space, "random", make_sampler("random", space), name="f")
    with pytest.raises(RankAdaptorError, match="3 trials in a row failed"):
        run_search(study, space, broken, SearchConfig(n_trials=5))


def test_unknown_strategy_and_surrogate_list_the_valid_ones():
    space = _space()
    with pytest.raises(RankAdaptorError, match="rankadaptor.*random.*tpe.*gp"):
        make_sampler("bayes", space)
    with pytest.raises(RankAdaptorError, match="mlp.*ridge"):
        RankAdaptorSampler(space, surrogate="forest")


def test_a_lucky_plan_worse_than_uniform_on_fresh_seeds_is_not_handed_out(tmp_path):
    """On the study's seed every plan but uniform gets a random bonus (luck); on fresh seeds the truth shows:
    any departure from uniform costs. The final pick falls back to uniform."""
    space = _space()

    def lucky(ranks, seed=0, fidelity="full"):
        truth = -0.01 * float(np.abs(np.asarray(ranks) - 8).sum())
        luck = np.random.default_rng([seed, int(plan_hash(ranks), 16) % 10 ** 9]).random() if seed == 0 else 0.0
        return truth + (0.0 if np.array_equal(ranks, space.uniform()) else luck)

    lucky.direction = "maximize"
    study = _study(tmp_path, space, "random", make_sampler("random", space, seed=0))
    cfg = SearchConfig(n_trials=6, final_seeds=3, noise_every=0)
    run_search(study, space, lucky, cfg)
    rep = finalize(study, space, lucky, cfg)
    assert rep["search_best_value"] > 0  # a lucky plan led the search
    assert rep["best"]["source"] == "uniform" and rep["best"]["ranks"] == space.uniform().tolist()
    assert "the pick is the uniform plan" in " ".join(rep["messages"])


def test_multi_fidelity_without_a_screening_fidelity_is_refused():
    from rankadaptor.search.study import SearchSettings, run_study

    obj = SyntheticObjective(_space())
    obj.has_screen = False
    settings = SearchSettings(study="m", trials=2, multi_fidelity=True, fixed_first=1, fixed_last=1)
    with pytest.raises(RankAdaptorError, match="--screen-steps"):
        run_study(settings, obj, [1.0] * 10, storage=optuna.storages.InMemoryStorage())
