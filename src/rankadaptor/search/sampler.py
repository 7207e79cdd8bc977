"""Optuna samplers over a ``SearchSpace``: RankAdaptor (performance model + acquisition) and baselines.

Each free layer is one categorical parameter ``rNNN``. ``RankAdaptorSampler`` proposes whole
vectors through ``sample_relative``: an initial design (the uniform baseline first, then a
stratified valid design), then every round it refits the ensemble incrementally on the study's
completed trials, scores a pool (``pool_size`` fresh valid vectors plus mutations of the best
measured ones) and takes the acquisition maximiser. Plans already held by a trial of the study
(complete, running or waiting; all processes share the storage) are never proposed; the engine
additionally claims each plan by a ``plan_hash`` user attr so that a race between processes cannot
evaluate one plan twice.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from scipy import stats

from rankadaptor.errors import RankAdaptorError
from rankadaptor.search.perf_model import Ensemble, MLPConfig, cv_spearman
from rankadaptor.search.space import SearchSpace, plan_hash
from rankadaptor.search.storage import ATTEMPT_FLAGS

log = logging.getLogger(__name__)

HELD = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)


def ucb(mean: np.ndarray, std: np.ndarray, best: float, kappa: float) -> np.ndarray:
    return mean + kappa * std


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, kappa: float) -> np.ndarray:
    sd = np.maximum(std, 1e-12)
    z = (mean - best) / sd
    return (mean - best) * stats.norm.cdf(z) + sd * stats.norm.pdf(z)


ACQUISITIONS: dict[str, Callable[..., np.ndarray]] = {"ucb": ucb, "ei": expected_improvement}


def trial_ranks(space: SearchSpace, t: FrozenTrial) -> np.ndarray | None:
    """The vector a trial evaluated (the engine stores it; params can differ after a budget repair)."""
    if "ranks" in t.user_attrs:
        return np.asarray(t.user_attrs["ranks"], dtype=np.int64)
    if all(n in t.params for n in space.param_names()):
        return space.from_params(t.params)
    return None


def held_hashes(study: optuna.Study) -> set[str]:
    """Plans evaluated, being evaluated or queued by any process (trials that yielded excluded)."""
    out = set()
    for t in study.get_trials(deepcopy=False, states=HELD):
        h = t.user_attrs.get("plan_hash")
        if h and not any(t.user_attrs.get(flag) for flag in ATTEMPT_FLAGS):
            out.add(h)
    return out


def completed_data(space: SearchSpace, study: optuna.Study) -> tuple[np.ndarray, np.ndarray, list[FrozenTrial]]:
    """(ranks, sign-adjusted values so that larger is better, trials) of finished non-duplicate trials."""
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    rows, ys, trials = [], [], []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        r = trial_ranks(space, t)
        if r is None or t.value is None or not np.isfinite(t.value):
            continue
        rows.append(r)
        ys.append(sign * t.value)
        trials.append(t)
    if not rows:
        return np.zeros((0, space.n_layers), np.int64), np.zeros(0), []
    return np.stack(rows), np.asarray(ys), trials


class RankAdaptorSampler(optuna.samplers.BaseSampler):
    """Performance-model-guided proposals (``guided=True``) or uniform valid proposals (random search)."""

    def __init__(self, space: SearchSpace, guided: bool = True, n_initial: int = 8, pool_size: int = 10_000,
                 n_mutations: int = 2_000, acquisition: str = "ucb", kappa: float = 1.0,
                 ensemble_size: int = 5, mlp: MLPConfig | None = None, init_state: dict | None = None,
                 cv_every: int = 1, seed: int | None = None):
        if acquisition not in ACQUISITIONS:
            raise RankAdaptorError(f"acquisition {acquisition!r} unknown; choose from {sorted(ACQUISITIONS)}")
        if n_initial < 1 or pool_size < 1 or n_mutations < 0 or ensemble_size < 1:
            raise RankAdaptorError(f"n_initial={n_initial}, pool_size={pool_size}, ensemble_size={ensemble_size} "
                                   f"must be >= 1 and n_mutations={n_mutations} >= 0")
        self.space, self.guided = space, guided
        self.n_initial, self.pool_size, self.n_mutations = n_initial, pool_size, n_mutations
        self.acquisition, self.kappa = acquisition, kappa
        self.ensemble_size, self.mlp, self.init_state = ensemble_size, mlp or MLPConfig(), init_state
        self.cv_every = max(1, cv_every)
        self.rng = np.random.default_rng(seed)
        self.seed = 0 if seed is None else int(seed)
        self.ensemble: Ensemble | None = None
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self.last_info: dict[str, Any] = {}

    # ---- Optuna interface
    def infer_relative_search_space(self, study, trial) -> dict[str, CategoricalDistribution]:
        dist = CategoricalDistribution(list(self.space.candidates))
        return {name: dist for name in self.space.param_names()}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        if not search_space:
            return {}
        ranks, info = self.propose(study)
        for key, value in info.items():
            study._storage.set_trial_user_attr(trial._trial_id, key, value)
        self.last_info = info
        return self.space.to_params(ranks)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    # ---- proposal logic
    def propose(self, study: optuna.Study) -> tuple[np.ndarray, dict[str, Any]]:
        held = held_hashes(study)
        X, y, _ = completed_data(self.space, study)
        n_held = len(held)
        if n_held < self.n_initial or not self.guided or len(y) < 2:
            return self._initial(held, n_held), {"proposal": "initial" if self.guided else "random"}
        return self._guided(X, y, held)

    def _initial(self, held: set[str], n_held: int) -> np.ndarray:
        base = self.space.uniform()
        if plan_hash(base) not in held and self.space.is_valid(base)[0]:
            return base
        design = self.space.latin_hypercube(max(4 * self.n_initial, 32), self.rng) if self.guided \
            else self.space.sample(256, self.rng)
        for cand in list(design) + list(self.space.sample(1024, self.rng)):
            if plan_hash(cand) not in held:
                return cand
        raise RankAdaptorError("could not find a rank vector not already evaluated; the space is exhausted")

    def _guided(self, X: np.ndarray, y: np.ndarray, held: set[str]) -> tuple[np.ndarray, dict[str, Any]]:
        feats = self.space.features(X)
        if self.ensemble is None:
            self.ensemble = Ensemble(feats.shape[1], self.ensemble_size, self.mlp, self.seed, self.init_state)
            self.ensemble.fit(feats, y)
        else:
            self.ensemble.partial_fit(feats, y)
        pool = [self.space.sample(self.pool_size, self.rng)]
        top = X[np.argsort(-y)[:5]]
        for best in top:
            pool.append(self.space.mutate(best, max(1, self.n_mutations // len(top)), self.rng))
        pool = np.unique(np.concatenate(pool), axis=0)
        hashes = np.array([plan_hash(r) for r in pool])
        pool = pool[~np.isin(hashes, list(held))]
        if len(pool) == 0:
            raise RankAdaptorError("every pooled candidate was already evaluated; raise --pool or stop the study")
        mean, std = self.ensemble.predict(self.space.features(pool))
        score = ACQUISITIONS[self.acquisition](mean, std, float(y.max()), self.kappa)
        i = int(np.argmax(score))
        info: dict[str, Any] = {"proposal": "model", "predicted": float(mean[i]), "predicted_std": float(std[i]),
                                "pool_size": int(len(pool))}
        if len(y) % self.cv_every == 0:
            cv = cv_spearman(feats, y, config=self.mlp, seed=self.seed, init_state=self.init_state)
            info["cv_spearman"] = None if np.isnan(cv) else cv
        log.info("proposal from %d candidates: predicted %.4f ± %.4f (best measured %.4f)",
                 len(pool), mean[i], std[i], y.max())
        return pool[i], info


def make_sampler(strategy: str, space: SearchSpace, seed: int | None = None, **kwargs) -> optuna.samplers.BaseSampler:
    """Strategy registry: the same engine runs RankAdaptor, random search and TPE."""
    if strategy == "rankadaptor":
        return RankAdaptorSampler(space, guided=True, seed=seed, **kwargs)
    if strategy == "random":
        return RankAdaptorSampler(space, guided=False, seed=seed)
    if strategy == "tpe":
        n_startup = kwargs.get("n_initial", 8)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True)
    raise RankAdaptorError(f"strategy {strategy!r} unknown; choose from {list(STRATEGIES)}")


STRATEGIES = ("rankadaptor", "random", "tpe")
