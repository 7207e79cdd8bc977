"""Optuna samplers over a ``SearchSpace``: RankAdaptor (surrogate + acquisition) and the baselines.

Each free unit (a layer, or a module) is one Optuna parameter. ``RankAdaptorSampler`` proposes
whole vectors through ``sample_relative``: first the initial design, i.e. the plans queued when
the study was made (the uniform plan, then any allocator's plan offered as a seed) and the rows
of ONE Latin hypercube drawn from the study's seed, taken in order; then every round it fits the
surrogate (``surrogates.py``) on the completed trials with the measured noise, scores a pool of
valid plans (``pool_size`` fresh ones plus mutations of the best measured ones), climbs from the
best of them by budget-keeping rank trades, and proposes the acquisition's maximiser. Plans held
by a trial of the study (any process) are never proposed. ``random`` proposes valid plans
uniformly over the budget band; ``tpe`` and ``gp`` are Optuna's samplers, whose proposals the
engine repairs into the budget (they learn only from the repaired, evaluated plan).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from scipy import stats

from rankadaptor.errors import RankAdaptorError
from rankadaptor.search.moves import unique_rows
from rankadaptor.search.space import SearchSpace, plan_hash
from rankadaptor.search.storage import ATTEMPT_FLAGS
from rankadaptor.search.surrogates import DEFAULT_SURROGATE, default_acquisition, make_surrogate

log = logging.getLogger(__name__)

HELD = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
STRATEGIES = ("rankadaptor", "random", "tpe", "gp")


def ucb(mean: np.ndarray, std: np.ndarray, best: float, kappa: float, noise: float = 0.0) -> np.ndarray:
    return mean + kappa * std


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, kappa: float,
                         noise: float = 0.0) -> np.ndarray:
    """EI over the incumbent's predicted value plus a minimum improvement of one noise sd."""
    sd = np.maximum(std, 1e-12)
    gain = mean - best - noise
    z = gain / sd
    return gain * stats.norm.cdf(z) + sd * stats.norm.pdf(z)


ACQUISITIONS: dict[str, Callable[..., np.ndarray]] = {"ucb": ucb, "ei": expected_improvement}
ACQUISITION_NAMES = (*ACQUISITIONS, "thompson")  # thompson: maximise one posterior draw (surrogate.sample_function)


def trial_ranks(space: SearchSpace, t: FrozenTrial) -> np.ndarray | None:
    """The vector a trial evaluated (the engine stores it as the ``ranks`` user attr)."""
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
        if h is None and t.state == TrialState.WAITING and "ranks" in t.user_attrs:
            h = plan_hash(t.user_attrs["ranks"])
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
        return np.zeros((0, space.n_units), np.int64), np.zeros(0), []
    return np.stack(rows), np.asarray(ys), trials


class RankAdaptorSampler(optuna.samplers.BaseSampler):
    """Surrogate-guided proposals (``guided=True``) or uniform valid proposals (random search)."""

    def __init__(self, space: SearchSpace, guided: bool = True, surrogate: str = DEFAULT_SURROGATE,
                 surrogate_options: dict | None = None, n_initial: int = 8, pool_size: int = 10_000,
                 n_mutations: int = 2_000, acquisition: str | None = None, kappa: float = 2.0, cv_every: int = 1,
                 climb_starts: int = 1, seed: int | None = None, design_seed: int | None = None):
        if acquisition is None:
            acquisition = default_acquisition(surrogate)
        if acquisition not in ACQUISITION_NAMES:
            raise RankAdaptorError(f"acquisition {acquisition!r} unknown; choose from {list(ACQUISITION_NAMES)}")
        if n_initial < 1 or pool_size < 1 or n_mutations < 0:
            raise RankAdaptorError(f"n_initial={n_initial}, pool_size={pool_size} must be >= 1 and "
                                   f"n_mutations={n_mutations} >= 0")
        self.space, self.guided = space, guided
        self.n_initial, self.pool_size, self.n_mutations = n_initial, pool_size, n_mutations
        self.acquisition, self.kappa, self.climb_starts = acquisition, kappa, climb_starts
        self.cv_every = max(1, cv_every)
        self.rng = np.random.default_rng(seed)
        self.seed = 0 if seed is None else int(seed)
        self.surrogate_name, self.surrogate_options = surrogate, dict(surrogate_options or {})
        self.model = make_surrogate(surrogate, space, self.seed, **self.surrogate_options) if guided else None
        # ONE design per study (from the study's seed, the same in every worker), taken row by row
        self._design_seed = self.seed if design_seed is None else int(design_seed)
        self._design: np.ndarray | None = None
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self.last_info: dict[str, Any] = {}

    # ---- Optuna interface
    def infer_relative_search_space(self, study, trial) -> dict[str, Any]:
        dist = self.space.distribution()
        return {name: dist for name in self.space.param_names()}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        if not search_space or trial.system_attrs.get("fixed_params"):
            return {}  # a queued plan (uniform, an allocator's seed, a repaired proposal) is taken as it is
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
        if not self.guided:
            return self._fresh(held, self.space.sample(1024, self.rng)), {"proposal": "random"}
        if len(held) < self.n_initial or len(y) < 2:
            return self._fresh(held, self.design()), {"proposal": "initial"}
        from rankadaptor.search.noise import estimate

        return self._guided(X, y, held, estimate(study)["noise_sd"])

    def design(self) -> np.ndarray:
        """The study's Latin hypercube (the uniform plan and queued seeds come before it)."""
        if self._design is None:
            self._design = self.space.latin_hypercube(max(self.n_initial, 2) + 16, self._design_seed)
        return self._design

    def _fresh(self, held: set[str], rows: np.ndarray) -> np.ndarray:
        for cand in list(rows) + list(self.space.sample(1024, self.rng)):
            if plan_hash(cand) not in held:
                return cand
        raise RankAdaptorError("could not find a rank vector not already evaluated; the space is exhausted")

    def _guided(self, X: np.ndarray, y: np.ndarray, held: set[str],
                noise_sd: float | None) -> tuple[np.ndarray, dict[str, Any]]:
        t0 = time.perf_counter()
        # Proposals take the measured noise as known, unlike the final model, which weighs it by its degrees
        # of freedom: on development seeds pooling it here made Thompson sampling's draws wider and the search
        # worse (benchmarks/results/search_compare.md)
        self.model.fit(X, y, noise_sd)
        t_fit = time.perf_counter() - t0
        cands, s, mean, std = maximise(self.space, self.model, X, y, self.rng, self.acquisition, self.kappa,
                                       float(noise_sd or 0.0), self.pool_size, self.n_mutations, self.climb_starts)
        pick = next((i for i in np.argsort(-s) if plan_hash(cands[i]) not in held), None)
        if pick is None:
            raise RankAdaptorError("every scored candidate was already evaluated; raise --pool or stop the study")
        info: dict[str, Any] = {"proposal": "model", "surrogate": self.surrogate_name,
                                "predicted": float(mean[pick]), "predicted_std": float(std[pick]),
                                "pool_size": int(len(cands)), "fit_seconds": t_fit,
                                "propose_seconds": time.perf_counter() - t0}
        if len(y) % self.cv_every == 0:
            info["cv_spearman"] = self._cv(X, y, noise_sd)
        log.info("proposal from %d candidates: predicted %.4f ± %.4f (best measured %.4f)",
                 len(cands), mean[pick], std[pick], y.max())
        return cands[pick], info

    def _cv(self, X: np.ndarray, y: np.ndarray, noise_sd: float | None) -> float | None:
        from rankadaptor.search.surrogates import oof_predictions

        if len(y) < 6 or np.std(y) == 0:
            return None
        pred = oof_predictions(self.surrogate_name, self.space, X, y, seed=self.seed, noise_sd=noise_sd,
                               **self.surrogate_options)
        rho = stats.spearmanr(pred, y).statistic if np.std(pred) > 0 else 0.0
        return None if np.isnan(rho) else float(rho)


def maximise(space: SearchSpace, model, X: np.ndarray, y: np.ndarray, rng: np.random.Generator,
             acquisition: str = "ucb", kappa: float = 1.0, noise: float = 0.0, pool_size: int = 10_000,
             n_mutations: int = 2_000, climb_starts: int = 1) -> tuple[np.ndarray, ...]:
    """Candidates and their (acquisition, mean, std) under a fitted surrogate: ``pool_size`` valid plans
    plus mutations of the best measured ones, then a climb by budget-keeping rank trades from the best
    few of them and from the best measured plan (a random pool alone rarely holds the model's optimum
    in 24 or more dimensions). ``kappa=0`` with UCB maximises the predicted mean."""
    best = float(np.max(model.predict(X)[0]))  # the incumbent as the model sees it (noise-free)
    if acquisition == "thompson":  # one draw of the surrogate's posterior, maximised as if it were the truth
        score = model.sample_function(rng)
    else:
        acq = ACQUISITIONS[acquisition]

        def score(rows: np.ndarray) -> np.ndarray:
            return acq(*model.predict(rows), best, kappa, noise)

    pool = [space.sample(pool_size, rng)]
    for top in X[np.argsort(-y)[:5]]:
        pool.append(space.mutate(top, max(1, n_mutations // 5), rng))
    pool = unique_rows(np.concatenate(pool))
    s = score(pool)
    starts = list(pool[np.argsort(-s)[:climb_starts]]) + [X[int(np.argmax(y))]]
    climbed = [_climb(space, start, score, rng) for start in starts]
    cands = unique_rows(np.concatenate([pool, np.stack(climbed)]))
    mean, std = model.predict(cands)
    return cands, score(cands), mean, std


def _climb(space: SearchSpace, cur: np.ndarray, score, rng: np.random.Generator, max_steps: int = 50) -> np.ndarray:
    """Hill climb by rank trades. Each step takes the best trade and, when it scores higher, the best
    trades on disjoint units all at once (with an additive surrogate their gains add up, so a climb over
    ~200 module units needs a few steps instead of hundreds)."""
    cur_s = score(cur[None])[0]
    for _ in range(max_steps):
        nb, up, down = space.swaps(cur, max_pairs=4000, rng=rng, return_moves=True)
        if not len(nb):
            break
        gain = score(nb) - cur_s
        order = np.argsort(-gain)
        if gain[order[0]] <= 1e-12:
            break
        best, best_s = nb[order[0]], cur_s + gain[order[0]]
        used: set[int] = set()
        combined = cur.copy()
        lo, hi = space.budget_bounds()
        cost, deltas = float(space.cost(cur)), space.cost(nb) - float(space.cost(cur))
        for i in order[:len(order) // 4 + 1]:
            if gain[i] <= 1e-12:
                break
            units = {int(u) for u in (up[i], down[i]) if u >= 0}
            if units & used or not lo - 1e-9 <= cost + deltas[i] <= hi + 1e-9:
                continue
            used |= units
            cost += deltas[i]
            free = space.free_units[list(units)]
            combined[free] = nb[i][free]
        if space.is_valid(combined)[0] and not np.array_equal(combined, best):
            c_s = score(combined[None])[0]
            if c_s > best_s:
                best, best_s = combined, c_s
        cur, cur_s = best, best_s
    return cur


def make_sampler(strategy: str, space: SearchSpace, seed: int | None = None, **kwargs) -> optuna.samplers.BaseSampler:
    """Strategy registry: the same engine runs RankAdaptor, random search, TPE and a Gaussian process."""
    n_startup = kwargs.get("n_initial", 8)
    if strategy == "rankadaptor":
        return RankAdaptorSampler(space, guided=True, seed=seed, **kwargs)
    if strategy == "random":
        return RankAdaptorSampler(space, guided=False, seed=seed)
    if strategy == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True)
    if strategy == "gp":
        import warnings

        with warnings.catch_warnings():  # GPSampler is "experimental" in Optuna 5; we test it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup, warn_independent_sampling=False)
    raise RankAdaptorError(f"strategy {strategy!r} unknown; choose from {list(STRATEGIES)}")
