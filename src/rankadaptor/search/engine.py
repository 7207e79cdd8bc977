"""Study lifecycle (RankAdaptor §3.3: Initialization, Iteration, Convergence) in Optuna storage.

``open_study`` creates or resumes a study and refuses one made for another model, space, objective
or strategy. ``run_search`` evaluates trials until the budget or convergence (the model's error on
newly evaluated trials under a tolerance AND no improvement for ``patience`` trials); several
processes, on one machine or many, may run it on one storage at once (``storage.py``: heartbeats,
crashed trials retried). Each trial claims its plan and a place in the budget before evaluating,
so that no plan is evaluated twice and the study stops at exactly ``n_trials`` completed trials;
a worker whose remaining budget is held by other workers' running trials waits, and takes over
the plan of one whose worker crashed. ``finalize`` re-evaluates the finalists and the
uniform baseline with several seeds at full fidelity and reports the paired difference with a 95 %
interval, plus the cross-validated Spearman of the performance model, saying plainly when either
is no better than chance.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
from optuna.trial import TrialState
from scipy import stats as st

from rankadaptor.errors import RankAdaptorError
from rankadaptor.search.perf_model import Ensemble, MLPConfig, PerformanceModel
from rankadaptor.search.sampler import completed_data
from rankadaptor.search.space import SearchSpace, plan_hash
from rankadaptor.search.storage import ATTEMPT_FLAGS
from rankadaptor.stats import mean_ci, paired_difference

log = logging.getLogger(__name__)

Objective = Callable[..., float]  # objective(ranks, seed=..., fidelity=...) -> float


@dataclass
class SearchConfig:
    n_trials: int = 40
    patience: int = 8
    tolerance: float = 0.5  # mean |pred - measured| / std(measured) over the last `patience` trials
    final_seeds: int = 3
    finalists: int = 1
    multi_fidelity: bool = False
    seed: int = 0
    poll_interval: float = 5.0  # seconds between looks at the study while other workers hold the budget

    def __post_init__(self) -> None:
        if self.n_trials < 1 or self.patience < 1 or self.final_seeds < 0 or self.finalists < 1:
            raise RankAdaptorError(
                f"n_trials={self.n_trials}, patience={self.patience}, finalists={self.finalists} must be >= 1 "
                f"and final_seeds={self.final_seeds} >= 0 (use >= 3 for a confidence interval)")
        if self.tolerance <= 0:
            raise RankAdaptorError(f"convergence tolerance {self.tolerance} must be > 0")
        if self.poll_interval <= 0:
            raise RankAdaptorError(f"poll interval {self.poll_interval} must be > 0 seconds")


def open_study(name: str, storage: optuna.storages.BaseStorage, space: SearchSpace,
               identity: dict[str, Any], strategy: str, direction: str,
               sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """Create or resume; a study made for a different model/space/objective/strategy is refused.

    ``storage`` is an opened Optuna storage (``storage.open_storage(url)``: the one door for URLs).
    """
    if isinstance(storage, (str, Path)):
        raise TypeError("open_study takes an opened storage; open a URL with rankadaptor.search.storage.open_storage")
    expected = {"rankadaptor_space": space.to_dict(), "rankadaptor_model": identity,
                "rankadaptor_strategy": strategy}
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    direction=direction, load_if_exists=True)
    attrs = study.user_attrs
    if not attrs.get("rankadaptor_space"):
        if study.trials:
            raise RankAdaptorError(f"study {name!r} has trials but was not made by rankadaptor search; "
                                   f"choose another --study name")
        for key, value in expected.items():
            study.set_user_attr(key, value)
        study.set_user_attr("rankadaptor_direction", direction)
        if strategy == "tpe":  # every strategy measures the uniform baseline first
            study.enqueue_trial(space.to_params(space.uniform()))
        return study
    for key, value in expected.items():
        if _canon(attrs.get(key)) != _canon(value):
            raise RankAdaptorError(
                f"study {name!r} was created for a different {key.removeprefix('rankadaptor_')}: stored "
                f"{attrs.get(key)!r}, requested {value!r}; use a new --study name (an existing study is "
                f"never overwritten)")
    if study.direction.name.lower() != direction:
        raise RankAdaptorError(f"study {name!r} optimises in direction {study.direction.name.lower()}, "
                               f"the objective needs {direction}; use a new --study name")
    return study


def _canon(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _wrap(space: SearchSpace, objective: Objective, fidelity: str, seed: int,
          n_trials: int) -> Callable[[optuna.Trial], float]:
    rng = np.random.default_rng(seed)

    def run_trial(trial: optuna.Trial) -> float:
        retry_of = trial.user_attrs.get("retry_of")
        if retry_of is not None and "ranks" in trial.user_attrs:  # a crashed trial's plan, exactly as claimed
            ranks = np.asarray(trial.user_attrs["ranks"], dtype=np.int64)
        else:
            ranks = _proposed_ranks(trial, space, rng)
        h = plan_hash(ranks)
        trial.set_user_attr("ranks", [int(r) for r in ranks])
        trial.set_user_attr("plan_hash", h)
        # claim the plan: after writing our hash, any other live holder of it means a race -> yield
        live = [t for t in trial.study.get_trials(deepcopy=False, states=LIVE)
                if t.number != trial.number and not _flagged(t)]
        holder = next((t for t in live if t.user_attrs.get("plan_hash") == h), None)
        if holder is not None:
            trial.set_user_attr("duplicate", True)
            raise optuna.TrialPruned(f"plan {h} already held by trial {holder.number}")
        # claim a place in the budget: trials ahead of this one (lower numbers) that may still complete.
        # Counting only those makes the claims race-free: of two racing trials the later one yields.
        ahead = sum(t.number < trial.number for t in live)
        if ahead >= n_trials:
            trial.set_user_attr("budget_full", True)
            raise optuna.TrialPruned(f"{ahead} trials ahead already fill the budget of {n_trials}")
        if retry_of is not None:
            log.info("trial %d retries the plan of trial %d, whose worker died", trial.number, retry_of)
        return float(objective(ranks, seed=trial.number, fidelity=fidelity))

    return run_trial


LIVE = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)


def _flagged(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial that yielded (duplicate plan, full budget, invalid plan): it will never complete."""
    return any(trial.user_attrs.get(flag) for flag in ATTEMPT_FLAGS)


def _proposed_ranks(trial: optuna.Trial, space: SearchSpace, rng: np.random.Generator) -> np.ndarray:
    params = {n: trial.suggest_categorical(n, list(space.candidates)) for n in space.param_names()}
    ranks = space.from_params(params)
    if not space.is_valid(ranks)[0]:  # TPE/random per-layer proposals may break the budget
        repaired = space.repair(ranks[None], rng)
        if not len(repaired):
            trial.set_user_attr("invalid", True)
            raise optuna.TrialPruned("proposal violates the budget and could not be repaired")
        ranks = repaired[0]
        trial.set_user_attr("repaired", True)
    return ranks


def n_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def convergence(space: SearchSpace, study: optuna.Study, config: SearchConfig) -> dict[str, Any]:
    """Model error on newly evaluated trials and rounds since the best improved (larger is better)."""
    X, y, trials = completed_data(space, study)
    out: dict[str, Any] = {"n_complete": len(y), "converged": False}
    if len(y) == 0:
        return out
    best_at = int(np.argmax(y))
    out["trials_since_best"] = len(y) - 1 - best_at
    errs = [abs((1 if study.direction.name == "MAXIMIZE" else -1) * t.value - t.user_attrs["predicted"])
            for t in trials[-config.patience:] if "predicted" in t.user_attrs]
    scale = float(np.std(y)) or 1.0
    out["recent_model_error"] = float(np.mean(errs) / scale) if errs else None
    out["converged"] = bool(len(errs) >= config.patience and out["recent_model_error"] < config.tolerance
                            and out["trials_since_best"] >= config.patience)
    return out


def run_search(study: optuna.Study, space: SearchSpace, objective: Objective, config: SearchConfig) -> dict:
    """Evaluate trials one at a time until the shared budget is reached or the search converged."""
    fidelity = "screen" if config.multi_fidelity else "full"
    run_trial = _wrap(space, objective, fidelity, config.seed, config.n_trials)
    mine: list[optuna.trial.FrozenTrial] = []  # this worker's trials (study.trials[-1] may be another's)
    state: dict[str, Any] = {}
    failed = idle = 0
    while n_complete(study) < config.n_trials and not study.user_attrs.get("converged"):
        if _budget_held_by_others(study, config.n_trials):
            # the rest of the budget is being evaluated elsewhere; wait, and take over a crashed worker's plan
            _fail_stale_trials(study)
            time.sleep(config.poll_interval)
            continue
        before = n_complete(study)
        study.optimize(run_trial, n_trials=1, catch=(RuntimeError,), gc_after_trial=False,
                       callbacks=[lambda _study, frozen: mine.append(frozen)])
        last = mine[-1] if mine else None
        failed = failed + 1 if last is not None and last.state == TrialState.FAIL else 0
        if last is not None and last.user_attrs.get("budget_full"):
            continue  # lost a race for the last places; the next round waits for them
        idle = 0 if n_complete(study) > before else idle + 1
        if failed >= 3:
            raise RankAdaptorError("3 trials in a row failed (see the log for the error); fix the objective "
                                   "(model, data, memory) and run the same command again to resume")
        if idle >= 50:  # e.g. TPE proposing only plans that are already held: stop instead of spinning
            log.warning("50 proposals in a row were duplicates or invalid; stopping the search early")
            return {**convergence(space, study, config), "stopped": "no new plans proposed"}
        state = convergence(space, study, config)
        if state["converged"]:
            study.set_user_attr("converged", True)
            log.info("converged after %d trials: %s", state["n_complete"], state)
    return state or convergence(space, study, config)


def _budget_held_by_others(study: optuna.Study, n_trials: int) -> bool:
    """True when completed plus running trials fill the budget and no queued (e.g. retried) trial waits."""
    live = [t for t in study.get_trials(deepcopy=False, states=LIVE) if not _flagged(t)]
    if any(t.state == TrialState.WAITING for t in live):
        return False
    return len(live) >= n_trials


def _fail_stale_trials(study: optuna.Study) -> None:
    """Mark trials of dead workers failed (and queue their retries); Optuna does this only on a new trial."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def retries(study: optuna.Study) -> dict[int, int]:
    """Trial number -> number of the crashed trial whose plan it re-evaluated."""
    return {t.number: int(t.user_attrs["retry_of"]) for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get("retry_of") is not None}


def oof_spearman(space: SearchSpace, study: optuna.Study, mlp: MLPConfig | None = None, folds: int = 5,
                 init_state: dict | None = None) -> dict[str, Any]:
    """Out-of-fold Spearman of the performance model on all completed trials, with its p-value."""
    X, y, _ = completed_data(space, study)
    if len(y) < max(folds, 6) or np.std(y) == 0:
        return {"spearman": None, "p_value": None, "n": int(len(y)), "better_than_chance": False}
    feats = space.features(X)
    order = np.random.default_rng(0).permutation(len(y))
    pred = np.empty(len(y))
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        pred[test] = PerformanceModel(feats.shape[1], mlp, k, init_state).fit(feats[train], y[train]).predict(feats[test])
    res = st.spearmanr(pred, y)
    rho, p = float(res.statistic), float(res.pvalue)
    rho = 0.0 if np.isnan(rho) else rho
    return {"spearman": rho, "p_value": p, "n": int(len(y)), "better_than_chance": bool(rho > 0 and p < 0.05),
            "pred_oof": pred.tolist(), "measured": y.tolist()}


def finalize(study: optuna.Study, space: SearchSpace, objective: Objective, config: SearchConfig,
             mlp: MLPConfig | None = None, init_state: dict | None = None) -> dict[str, Any]:
    """Re-evaluate finalists and the uniform baseline with seeds at full fidelity; say what it means."""
    X, y, trials = completed_data(space, study)
    if len(y) == 0:
        raise RankAdaptorError("the study has no completed trials to finalise; run more --trials")
    sign = 1.0 if study.direction.name == "MAXIMIZE" else -1.0
    order = np.argsort(-y)
    finalists = [X[i] for i in order[:config.finalists]]
    cv = oof_spearman(space, study, mlp, init_state=init_state)
    if cv["better_than_chance"] and len(y) >= 6:  # the model's own argmax joins the finalists
        ens = Ensemble(space.n_free, 3, mlp, config.seed, init_state).fit(space.features(X), y)
        pool = np.concatenate([space.sample(10_000, config.seed)] + [space.mutate(X[i], 500, config.seed)
                                                                      for i in order[:5]])
        mean, _ = ens.predict(space.features(pool))
        finalists.append(pool[int(np.argmax(mean))])
    uniq = {plan_hash(f): f for f in finalists}
    seeds = [10_000 + s for s in range(config.final_seeds)]
    uniform = space.uniform()
    base_scores = [objective(uniform, seed=s, fidelity="full") for s in seeds]
    evaluated = []
    for h, ranks in uniq.items():
        scores = [objective(ranks, seed=s, fidelity="full") for s in seeds]
        evaluated.append({"ranks": [int(r) for r in ranks], "plan_hash": h, "scores": scores,
                          "mean": float(np.mean(scores)) if scores else None})
    if seeds:
        best = max(evaluated, key=lambda e: sign * e["mean"])
    else:
        best = evaluated[0]
    report: dict[str, Any] = {
        "best": best, "finalists": evaluated,
        "uniform": {"ranks": uniform.tolist(), "scores": base_scores},
        "direction": study.direction.name.lower(), "seeds": seeds,
        "model_cv": {k: v for k, v in cv.items() if k not in ("pred_oof", "measured")},
        "search_best_value": float(sign * y[order[0]]), "search_best_trial": trials[order[0]].number,
        "retries": {str(k): v for k, v in retries(study).items()},
    }
    messages = []
    if len(seeds) >= 2:
        diff = paired_difference([sign * s for s in best["scores"]], [sign * s for s in base_scores])
        report["difference_vs_uniform"] = {**diff, "note": "best minus uniform, oriented so that > 0 is better"}
        if diff["verdict"] == "no test":
            messages.append(f"no test: best vs uniform differs by {diff['mean']:+.4f} on {len(seeds)} seeds "
                            "(fewer than 3 seeds or the same difference on each): no claim either way")
        elif not diff["significant"]:
            messages.append(f"NOT significant: best vs uniform differs by {diff['mean']:+.4f} "
                            f"(95% CI {diff['ci_low']:+.4f} .. {diff['ci_high']:+.4f}, {len(seeds)} seeds)")
        else:
            word = "better" if diff["mean"] > 0 else "WORSE"
            messages.append(f"best is {word} than uniform by {diff['mean']:+.4f} "
                            f"(95% CI {diff['ci_low']:+.4f} .. {diff['ci_high']:+.4f}, {len(seeds)} seeds)")
        report["uniform_ci"] = mean_ci(base_scores).to_dict()
        report["best_ci"] = mean_ci(best["scores"]).to_dict()
    else:
        messages.append("fewer than 2 re-evaluation seeds: no interval, the difference to uniform is unknown")
    if len(seeds) > 0 and len(uniq) > 1:
        messages.append(f"the best of {len(uniq)} finalists was picked on the same seeds: the difference "
                        "is optimistic (winner's curse)")
    if not cv["better_than_chance"]:
        messages.append(f"the performance model predicts held-out trials NO better than chance "
                        f"(CV Spearman {cv['spearman']}, p={cv['p_value']}, n={cv['n']}); the pick rests on "
                        "measured values, not on the model")
    report["messages"] = messages
    report["_cv_points"] = {"pred": cv.get("pred_oof"), "measured": cv.get("measured")}
    return report


def history(study: optuna.Study, space: SearchSpace) -> list[dict[str, Any]]:
    """One row per trial in order, for plots and the summary."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "ranks": t.user_attrs.get("ranks"), "predicted": t.user_attrs.get("predicted"),
                     "predicted_std": t.user_attrs.get("predicted_std"),
                     "cv_spearman": t.user_attrs.get("cv_spearman"), "proposal": t.user_attrs.get("proposal"),
                     "duplicate": bool(t.user_attrs.get("duplicate")), "retry_of": t.user_attrs.get("retry_of"),
                     "is_uniform": t.user_attrs.get("ranks") == space.uniform().tolist()})
    return rows
