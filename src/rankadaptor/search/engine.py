"""Study lifecycle (RankAdaptor §3.3: Initialization, Iteration, Convergence) in Optuna storage.

``open_study`` creates or resumes a study (queueing the uniform plan and any seed plans first) and
refuses one made for another model, space, objective or strategy. ``run_search`` evaluates trials
until the budget or convergence; several processes, on one machine or many, may run it on one
storage at once (``storage.py``: heartbeats, crashed trials retried). Each trial claims its plan and
a place in the budget before evaluating, so that no plan is evaluated twice and the study stops
at exactly ``n_trials`` completed trials.

Every trial runs on the study's seed (common random numbers: the same batches, dropout masks and,
through ``RecoveryConfig.paired_init``, the same LoRA start for a module of the same rank), so two
plans differ by their ranks and not by their luck; every ``noise_every`` trials the uniform plan
and the incumbent are re-measured on a fresh seed (``noise.py``) so the search knows how large the
remaining noise is. A proposal outside the budget (TPE, GP) is never evaluated: the trial that
carried it ends FAILED, which samplers ignore, and the repaired plan is queued as a trial of its
own, so a sampler learns only from plans that were evaluated. ``finalize`` (``final.py``)
re-evaluates the pick against uniform on fresh seeds.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from rankadaptor.errors import RankAdaptorError
from rankadaptor.search import noise
from rankadaptor.search.sampler import completed_data
from rankadaptor.search.space import SearchSpace, plan_hash
from rankadaptor.search.storage import ATTEMPT_FLAGS
from rankadaptor.search.surrogates import DEFAULT_SURROGATE

log = logging.getLogger(__name__)

Objective = Callable[..., float]  # objective(ranks, seed=..., fidelity=...) -> float
LIVE = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)


@dataclass
class SearchConfig:
    n_trials: int = 40
    patience: int = 8
    tolerance: float = 0.5  # mean |pred - measured| / std(measured) over the last `patience` trials
    final_seeds: int = 3
    finalists: int = 1
    multi_fidelity: bool = False
    seed: int = 0  # the study's seed: every screening trial runs on it
    poll_interval: float = 5.0  # seconds between looks at the study while other workers hold the budget
    noise_every: int = 8  # re-measure uniform + incumbent on a fresh seed every N completed trials (0 = never)
    surrogate: str = DEFAULT_SURROGATE  # the surrogate whose cross-validated predictions the final report states
    # the surrogate's own optimum joins the finalists: RankAdaptor's strategy only; a baseline strategy (random,
    # TPE, GP) picks among the plans it measured, so a comparison of strategies compares their proposals
    model_finalist: bool = True

    def __post_init__(self) -> None:
        if self.n_trials < 1 or self.patience < 1 or self.final_seeds < 0 or self.finalists < 1:
            raise RankAdaptorError(
                f"n_trials={self.n_trials}, patience={self.patience}, finalists={self.finalists} must be >= 1 "
                f"and final_seeds={self.final_seeds} >= 0 (use >= 3 for a confidence interval)")
        if self.tolerance <= 0:
            raise RankAdaptorError(f"convergence tolerance {self.tolerance} must be > 0")
        if self.poll_interval <= 0:
            raise RankAdaptorError(f"poll interval {self.poll_interval} must be > 0 seconds")
        if self.noise_every < 0:
            raise RankAdaptorError(f"--noise-every {self.noise_every} must be >= 0 (0 = never re-measure)")

    @property
    def fidelity(self) -> str:
        return "screen" if self.multi_fidelity else "full"


def open_study(name: str, storage: optuna.storages.BaseStorage, space: SearchSpace,
               identity: dict[str, Any], strategy: str, direction: str,
               sampler: optuna.samplers.BaseSampler,
               seeds: Sequence[tuple[str, Sequence[int]]] = (), study_seed: int = 0) -> optuna.Study:
    """Create or resume; a study made for a different model/space/objective/strategy/seed is refused.

    ``storage`` is an opened Optuna storage (``storage.open_storage(url)``: the one door for URLs).
    A new study queues the uniform plan, then ``seeds`` ((label, vector of this space) pairs, e.g.
    allocators' plans), as its first trials, whatever the strategy. ``study_seed`` is the seed every
    screening trial runs on: a worker with another one would break the pairing, so it is refused.
    """
    if isinstance(storage, (str, Path)):
        raise TypeError("open_study takes an opened storage; open a URL with rankadaptor.search.storage.open_storage")
    expected = {"rankadaptor_space": space.to_dict(), "rankadaptor_model": identity,
                "rankadaptor_strategy": strategy, "rankadaptor_seed": int(study_seed)}
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
        queued = {plan_hash(space.uniform())}
        study.enqueue_trial(space.to_params(space.uniform()),
                            user_attrs={"seeded_from": "uniform", "ranks": space.uniform().tolist()})
        for label, vec in seeds:
            vec = space.validate(vec)
            if plan_hash(vec) not in queued:
                queued.add(plan_hash(vec))
                study.enqueue_trial(space.to_params(vec), user_attrs={"seeded_from": str(label), "ranks": vec.tolist()})
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


class _Yield(Exception):
    """A trial that gives way without an evaluation (duplicate plan, full budget, out-of-budget proposal).

    It ends FAILED, not PRUNED: TPE learns from pruned trials' parameters, and these were never evaluated.
    """


class _QuietYields(logging.Filter):
    """Drop Optuna's two warnings about a yielded trial (its error, then "Trial N failed with value None.")."""

    def __init__(self) -> None:
        super().__init__()
        self.yielded: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "_Yield(" in msg:
            self.yielded.add(msg.split(" failed", 1)[0])  # "Trial N"
            return False
        head = msg.split(" failed with value", 1)[0]
        if head in self.yielded:
            self.yielded.discard(head)
            return False
        return True


logging.getLogger("optuna.study._optimize").addFilter(_QuietYields())  # a yield is logged by us, once


def _wrap(space: SearchSpace, objective: Objective, config: SearchConfig) -> Callable[[optuna.Trial], float]:
    rng = np.random.default_rng(config.seed)

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
            raise _Yield(f"plan {h} already held by trial {holder.number}")
        # claim a place in the budget: trials ahead of this one (lower numbers) that may still complete.
        # Counting only those makes the claims race-free: of two racing trials the later one yields.
        ahead = sum(t.number < trial.number for t in live)
        if ahead >= config.n_trials:
            trial.set_user_attr("budget_full", True)
            raise _Yield(f"{ahead} trials ahead already fill the budget of {config.n_trials}")
        if retry_of is not None:
            log.info("trial %d retries the plan of trial %d, whose worker died", trial.number, retry_of)
        trial.set_user_attr("seed", int(config.seed))
        return float(objective(ranks, seed=config.seed, fidelity=config.fidelity))

    return run_trial


def _flagged(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial that yielded (duplicate plan, full budget, invalid plan): it will never complete."""
    return any(trial.user_attrs.get(flag) for flag in ATTEMPT_FLAGS)


def _proposed_ranks(trial: optuna.Trial, space: SearchSpace, rng: np.random.Generator) -> np.ndarray:
    dist = space.distribution()
    params = {}
    for name in space.param_names():
        if isinstance(dist, optuna.distributions.IntDistribution):
            params[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step)
        else:
            params[name] = trial.suggest_categorical(name, dist.choices)
    ranks = space.from_params(params)
    if space.is_valid(ranks)[0]:
        return ranks
    # TPE/GP per-unit proposals may break the budget: this trial yields and the repaired plan is queued
    trial.set_user_attr("invalid", True)
    repaired = space.repair(ranks[None], rng)
    if len(repaired):
        trial.study.enqueue_trial(space.to_params(repaired[0]),
                                  user_attrs={"repaired_from": trial.number, "ranks": repaired[0].tolist()})
        trial.set_user_attr("repaired_plan", plan_hash(repaired[0]))
        raise _Yield("proposal outside the budget; its repaired plan is queued as the next trial")
    raise _Yield("proposal outside the budget could not be repaired")


def n_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def convergence(space: SearchSpace, study: optuna.Study, config: SearchConfig) -> dict[str, Any]:
    """Converged when the model predicts new trials about as well as the noise allows AND no trial has
    beaten the best by more than the noise for ``patience`` trials (values oriented larger-is-better)."""
    X, y, trials = completed_data(space, study)
    out: dict[str, Any] = {"n_complete": len(y), "converged": False}
    if len(y) == 0:
        return out
    noise_sd = noise.estimate(study)["noise_sd"] or 0.0
    best, best_at = -np.inf, 0
    for i, v in enumerate(y):  # an improvement counts only when it exceeds the measured noise
        if v > best + noise_sd:
            best, best_at = v, i
    out["trials_since_best"] = len(y) - 1 - best_at
    out["noise_sd"] = noise_sd or None
    sign = 1 if study.direction.name == "MAXIMIZE" else -1
    errs = [abs(sign * t.value - t.user_attrs["predicted"])
            for t in trials[-config.patience:] if "predicted" in t.user_attrs]
    scale = max(config.tolerance * (float(np.std(y)) or 1.0), 2 * noise_sd)
    out["recent_model_error"] = float(np.mean(errs)) if errs else None
    out["converged"] = bool(len(errs) >= config.patience and out["recent_model_error"] <= scale
                            and out["trials_since_best"] >= config.patience)
    return out


def run_search(study: optuna.Study, space: SearchSpace, objective: Objective, config: SearchConfig) -> dict:
    """Evaluate trials one at a time until the shared budget is reached or the search converged."""
    run_trial = _wrap(space, objective, config)
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
        study.optimize(run_trial, n_trials=1, catch=(RuntimeError, _Yield), gc_after_trial=False,
                       callbacks=[lambda _study, frozen: mine.append(frozen)])
        last = mine[-1] if mine else None
        failed = failed + 1 if last is not None and last.state == TrialState.FAIL and not _flagged(last) else 0
        if last is not None and last.user_attrs.get("budget_full"):
            continue  # lost a race for the last places; the next round waits for them
        idle = 0 if n_complete(study) > before else idle + 1
        if failed >= 3:
            raise RankAdaptorError("3 trials in a row failed (see the log for the error); fix the objective "
                                   "(model, data, memory) and run the same command again to resume")
        if idle >= 50:  # e.g. TPE proposing only plans that are already held: stop instead of spinning
            log.warning("50 proposals in a row were duplicates or invalid; stopping the search early")
            return {**convergence(space, study, config), "stopped": "no new plans proposed"}
        if n_complete(study) > before:
            noise.measure_due(study, space, objective, config.noise_every, config.seed, config.fidelity)
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


def history(study: optuna.Study, space: SearchSpace) -> list[dict[str, Any]]:
    """One row per trial in order, for plots and the summary."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = t.user_attrs.get("seconds")  # measured by a batched search; else the trial's own clock
        if duration is None and t.datetime_complete and t.datetime_start:
            duration = (t.datetime_complete - t.datetime_start).total_seconds()
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "duration_s": duration,
                     "ranks": t.user_attrs.get("ranks"), "predicted": t.user_attrs.get("predicted"),
                     "predicted_std": t.user_attrs.get("predicted_std"),
                     "cv_spearman": t.user_attrs.get("cv_spearman"), "proposal": t.user_attrs.get("proposal"),
                     "seeded_from": t.user_attrs.get("seeded_from"), "repaired_from": t.user_attrs.get("repaired_from"),
                     "duplicate": bool(t.user_attrs.get("duplicate")), "invalid": bool(t.user_attrs.get("invalid")),
                     "retry_of": t.user_attrs.get("retry_of"),
                     "is_uniform": t.user_attrs.get("ranks") == space.uniform().tolist()})
    return rows


def finalize(*args, **kwargs):
    """``final.finalize`` (kept here so ``engine.finalize`` keeps working)."""
    from rankadaptor.search.final import finalize as _finalize

    return _finalize(*args, **kwargs)
