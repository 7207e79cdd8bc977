"""RankAdaptor on the super-adapter: hundreds of cheap evaluations, in batches, in Optuna storage.

``run_super_search(settings, objective, layer_costs, identity)`` is ``run_study`` for the cheap
fidelity (``search/super_fidelity.py``), with RankAdaptor §3.3's three phases:

* Initialization: the performance model (the paper's MLP, as an ensemble for its spread) is
  pre-trained by meta-learning (``search/meta.py``: Reptile or pooled) on data-free source tasks,
  the discarded singular-value energy of random plans, plus the ``--meta`` measurements if given.
  The initial design: uniform truncation (the space's uniform plan), PARA's global-threshold plan and
  PEFT's energy rule (all from the same super-adapter), then a Latin hypercube.
* Iteration: each round refits the ensemble incrementally on every score so far, scores a pool
  (``--pool`` fresh valid plans plus mutations of the five best) and lets the acquisition pick the
  next ``batch`` plans, which are scored and written to the study together.
* Convergence: ``engine.convergence`` (model error on new trials, no improvement for ``patience``).

Why batches, and not ``engine.run_search``: there a trial is one ``study.optimize`` call (a dozen
SQLite transactions) plus a full model refit and cross-validation, which is nothing next to a
minute-long recovery and far more than a cheap score. Here a round costs one refit and one
transaction per trial (finished trials added with ``study.add_trials``); the time each part takes
is in the returned state (``benchmarks/super_sweep.py`` reports it). One worker per study.

The end is every search's: ``engine.finalize`` (finalists and uniform at fidelity "full" with seeds;
out-of-fold validity of the model) and ``search.outputs.write_outputs``; then the validity of the
cheap score against the high fidelity on ``validate`` plans spread over the cheap ranking, and the
super-adapter cut to the best plan (``compress.cut.cut_to_plan``) beside the plan file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rankadaptor.errors import RankAdaptorError
from rankadaptor.search.space import SearchSpace, plan_hash

log = logging.getLogger(__name__)

# rank candidates of a search over cuts: dense where budgets put most modules, up to the usual R = 32
SUPER_CANDIDATES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
# what differs from a recovery search's defaults: every layer free (the super-adapter covers all of them),
# the budget exact to ±1 %, and a patience that matches hundreds of cheap trials
SUPER_DEFAULTS = {"fixed_first": 0, "fixed_last": 0, "budget_tolerance": 0.01, "patience": 48, "n_initial": 16}


def super_settings(rank: int = 32, **kwargs):
    """``SearchSettings`` with the super-adapter search's defaults (candidates capped at the adapter's rank;
    the space's uniform plan, the baseline every search re-measures, is the budget's uniform rank)."""
    from rankadaptor.search.study import SearchSettings

    budget = kwargs.get("budget", "uniform:8")
    uniform = int(budget.split(":", 1)[1]) if isinstance(budget, str) and budget.startswith("uniform:") \
        and budget.split(":", 1)[1].isdigit() else 8
    defaults = {**SUPER_DEFAULTS, "candidates": tuple(c for c in SUPER_CANDIDATES if c <= rank),
                "fixed_rank": min(uniform, rank)}
    return SearchSettings(**{**defaults, **{k: v for k, v in kwargs.items() if v is not None}})


def below_budget(budget: float, tolerance: float = 0.01) -> tuple[float, float]:
    """(centre, tolerance) of a space whose window is [budget·(1 − tolerance), budget]: a pick compared with
    rules that fill a budget from below must not win by spending up to 1 % more."""
    return budget * (1 - tolerance / 2), (tolerance / 2) / (1 - tolerance / 2)


def adapter_out(plan_out) -> Path:
    """Where the cut adapter goes: ``best.json`` -> ``best.adapter/``."""
    plan_out = Path(plan_out)
    return plan_out.with_name(plan_out.stem + ".adapter")


def check_rank_bound(candidates, fixed_rank: int, adapter) -> None:
    """No rank of the space above the super-adapter's (checked from the settings, before any model loads)."""
    bound = min(m.r for m in adapter.modules.values())
    top = max(max(candidates), fixed_rank)
    if top > bound:
        raise RankAdaptorError(f"the search space reaches rank {top} but the super-adapter has rank {bound} (the "
                               f"bound); use --candidates and --fixed-rank <= {bound}")


def check_space(space: SearchSpace, objective) -> None:
    """The space must fit the super-adapter: no rank above its rank, a budget of at least one component each."""
    from rankadaptor.compress.cut import check_budget

    check_rank_bound(space.candidates, space.fixed_rank, objective.adapter)
    if space.budget is not None:
        check_budget(objective.adapter, int(space.budget))


def meta_prior(settings, space: SearchSpace, objective, mlp) -> tuple[dict, dict]:
    """RankAdaptor §3.2's offline meta-learning on energy source tasks (and --meta measurements)."""
    from rankadaptor.search import meta
    from rankadaptor.search.super_fidelity import energy_tasks

    t0 = time.perf_counter()
    tasks = energy_tasks(space, objective, seed=settings.seed)
    if settings.meta:
        tasks += list(meta.load_measurements(settings.meta, "average").values())
    fn = meta.reptile if settings.meta_method == "reptile" else meta.pooled_pretrain
    state = fn(tasks, space.n_free, mlp, seed=settings.seed)
    return state, {"method": settings.meta_method, "tasks": [t.name for t in tasks],
                   "seconds": time.perf_counter() - t0}


def run_super_search(settings, objective, layer_costs: Sequence[float], identity: dict[str, Any] | None = None,
                     batch: int = 8, validate: int = 0, storage=None, design: dict | None = None,
                     adapter_path=None):
    """Create or resume the study, search in batches, finalise; returns a ``study.StudyResult``.

    The cut adapter is written to ``adapter_path`` (default: ``adapter_out(settings.out)``)."""
    import optuna

    from rankadaptor.search import engine
    from rankadaptor.search.perf_model import MLPConfig
    from rankadaptor.search.storage import HeartbeatConfig, check_storage_url, open_storage
    from rankadaptor.search.study import StudyResult, make_space

    if not isinstance(batch, int) or batch < 1 or not isinstance(validate, int) or validate < 0:
        raise RankAdaptorError(f"--batch {batch!r} must be >= 1 and --validate {validate!r} >= 0")
    url = settings.storage_url()
    if storage is None:
        check_storage_url(url)
    space = make_space(settings, layer_costs)
    check_space(space, objective)
    if settings.finalize and settings.out:
        adapter_path = Path(adapter_path or adapter_out(settings.out))
        if adapter_path.exists():
            raise RankAdaptorError(f"{adapter_path} already exists; choose another --out")
    identity = {**(identity or {}), **settings.extra}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage or open_storage(url, HeartbeatConfig(settings.heartbeat_interval, settings.grace_period,
                                                          settings.max_retry))
    study = engine.open_study(settings.study, storage, space, identity, settings.strategy, objective.direction,
                              optuna.samplers.RandomSampler(seed=settings.seed))
    if settings.create_only:
        return StudyResult(study, space, {"n_complete": engine.n_complete(study), "created_only": True})
    mlp = MLPConfig(hidden=settings.hidden, epochs=settings.epochs, partial_epochs=max(1, settings.epochs // 3))
    init_state, prior = meta_prior(settings, space, objective, mlp) if settings.strategy == "rankadaptor" else (None, {})
    if design is None:
        from rankadaptor.search.super_fidelity import allocator_plans

        design = allocator_plans(space, objective.adapter, objective.model)
    config = engine.SearchConfig(n_trials=settings.trials, patience=settings.patience,
                                 tolerance=settings.model_tolerance, final_seeds=settings.final_seeds,
                                 finalists=settings.finalists, seed=settings.seed)
    loop = BatchedSearch(study, space, objective, settings, mlp, init_state, batch)
    state = loop.run(design, config)
    state["meta_prior"] = prior
    result = StudyResult(study, space, state)
    if not settings.finalize:
        return result
    from rankadaptor.compress.cut import cut_to_plan
    from rankadaptor.search.outputs import write_outputs

    result.report = engine.finalize(study, space, objective, config, mlp, init_state)
    result.report["search_state"] = state
    result.report["validity"] = validity(study, space, objective, validate, settings.seed)
    if result.report["validity"].get("spearman") is not None:
        v = result.report["validity"]
        result.report["messages"].append(
            f"cheap score vs fine-tuned cut on {v['n']} plans: Spearman {v['spearman']:+.2f} "
            f"(95% bootstrap CI {v['ci_low']:+.2f} .. {v['ci_high']:+.2f})")
    result.paths = write_outputs(study, space, result.report, settings.out, settings.report_dir(), config, identity)
    best = objective.plan_of(result.report["best"]["ranks"])
    result.paths["adapter"] = adapter_path
    cut_to_plan(objective.adapter_dir, objective.model, best, result.paths["adapter"], how=objective.how)
    return result


class BatchedSearch:
    """The trial loop: initial design, then rounds of (refit, pool, acquisition, ``batch`` cheap scores)."""

    def __init__(self, study, space: SearchSpace, objective, settings, mlp, init_state, batch: int):
        from rankadaptor.search.sampler import completed_data

        self.study, self.space, self.objective, self.settings = study, space, objective, settings
        self.mlp, self.init_state, self.batch = mlp, init_state, batch
        self.rng = np.random.default_rng(settings.seed)
        X, y, _ = completed_data(space, study)  # a resumed study continues from what it has
        self.X, self.y = list(X), list(y)
        self.held = {plan_hash(r) for r in X}
        self.sign = 1.0 if objective.direction == "maximize" else -1.0
        self.ensemble = None
        self.times = {"evaluate": 0.0, "storage": 0.0, "model": 0.0, "pool": 0.0}
        self.rounds = 0

    def run(self, design: dict, config) -> dict:
        from rankadaptor.search import engine

        t0 = time.perf_counter()
        self._initial(design)
        state = engine.convergence(self.space, self.study, config)
        while len(self.y) < self.settings.trials and not state["converged"]:
            if not self._round():
                log.warning("every plan the pool can reach has been scored; stopping at %d", len(self.y))
                state["stopped"] = "space exhausted"
                break
            state = engine.convergence(self.space, self.study, config)
        if state["converged"]:
            self.study.set_user_attr("converged", True)
        seconds = time.perf_counter() - t0
        return {**state, "rounds": self.rounds, "seconds": seconds, "times": dict(self.times),
                "evaluations_per_minute": 60 * len(self.y) / seconds if seconds > 0 else None,
                "objective_stats": dict(getattr(self.objective, "stats", {}))}

    def _initial(self, design: dict) -> None:
        """Uniform truncation, the allocators' plans, then a Latin hypercube up to ``n_initial``."""
        picks = [("uniform", self.space.uniform())] + [(k, np.asarray(v)) for k, v in design.items()]
        n_fill = max(0, self.settings.n_initial - len(picks))
        picks += [("design", v) for v in self.space.latin_hypercube(max(4 * n_fill, 8), self.rng)][:n_fill]
        todo, seen = [], set(self.held)
        for label, vec in picks:
            h = plan_hash(vec)
            if h not in seen and self.space.is_valid(vec)[0]:
                seen.add(h)
                todo.append((vec, {"proposal": "initial", "design": label}))
        self._evaluate(todo[:max(0, self.settings.trials - len(self.y))])

    def _round(self) -> bool:
        """One round; False when the pool holds no unscored plan (a small space is exhausted)."""
        from rankadaptor.search.perf_model import Ensemble
        from rankadaptor.search.sampler import ACQUISITIONS

        k = min(self.batch, self.settings.trials - len(self.y))
        self.rounds += 1
        if self.settings.strategy == "random":  # the baseline: valid plans at random, no model
            pool = self.space.sample(max(4 * k, 64), self.rng)
            fresh = [r for r in pool if plan_hash(r) not in self.held]
            fresh = list({plan_hash(r): r for r in fresh}.values())[:k]
            self._evaluate([(r, {"proposal": "random", "round": self.rounds}) for r in fresh])
            return bool(fresh)
        t = time.perf_counter()
        X, y = np.asarray(self.X), np.asarray(self.y)
        feats = self.space.features(X)
        if self.ensemble is None:
            self.ensemble = Ensemble(self.space.n_free, self.settings.ensemble, self.mlp, self.settings.seed,
                                     self.init_state).fit(feats, y)
        else:
            self.ensemble.partial_fit(feats, y)
        self.times["model"] += time.perf_counter() - t
        t = time.perf_counter()
        top = X[np.argsort(-y)[:5]]
        pool = [self.space.sample(self.settings.pool, self.rng)]
        pool += [self.space.mutate(best, 400, self.rng) for best in top]
        pool = np.unique(np.concatenate(pool), axis=0)
        pool = pool[[plan_hash(r) not in self.held for r in pool]]
        if not len(pool):
            return False
        mean, std = self.ensemble.predict(self.space.features(pool))
        score = ACQUISITIONS[self.settings.acquisition](mean, std, float(y.max()), self.settings.kappa)
        order = np.argsort(-score)[:k]
        self.times["pool"] += time.perf_counter() - t
        self._evaluate([(pool[i], {"proposal": "model", "predicted": float(mean[i]), "predicted_std": float(std[i]),
                                   "pool_size": int(len(pool)), "round": self.rounds}) for i in order])
        return True

    def _evaluate(self, todo: list) -> None:
        """Score the plans, then write them to the study as finished trials in one go."""
        import optuna
        from optuna.distributions import CategoricalDistribution

        if not todo:
            return
        t = time.perf_counter()
        values = [float(self.objective(vec, seed=self.settings.seed, fidelity="screen")) for vec, _ in todo]
        self.times["evaluate"] += time.perf_counter() - t
        t = time.perf_counter()
        dist = {n: CategoricalDistribution(list(self.space.candidates)) for n in self.space.param_names()}
        trials = [optuna.trial.create_trial(
            params=self.space.to_params(vec), distributions=dist, value=v,
            user_attrs={"ranks": [int(r) for r in vec], "plan_hash": plan_hash(vec), "fidelity": "super", **attrs})
            for (vec, attrs), v in zip(todo, values)]
        self.study.add_trials(trials)
        self.times["storage"] += time.perf_counter() - t
        for (vec, _), v in zip(todo, values):
            self.X.append(np.asarray(vec))
            self.y.append(self.sign * v)
            self.held.add(plan_hash(vec))
        log.info("%d cheap scores (best %.4f of %d so far)", len(todo), self.sign * max(self.y), len(self.y))


def validity(study, space: SearchSpace, objective, k: int, seed: int = 0) -> dict:
    """The cheap score against the high fidelity on ``k`` scored plans spread over the cheap ranking."""
    from rankadaptor.search.sampler import completed_data
    from rankadaptor.search.super_fidelity import spearman_ci

    if k < 3 or not getattr(objective, "finetune_steps", 0):
        return {"spearman": None, "n": 0, "note": "not measured (needs --validate >= 3 and --finetune-steps >= 1)"}
    X, y, _ = completed_data(space, study)
    order = np.argsort(-y)
    pick = order[np.unique(np.round(np.linspace(0, len(order) - 1, min(k, len(order)))).astype(int))]
    cheap = [objective(X[i], seed=seed, fidelity="screen") for i in pick]
    real = [objective(X[i], seed=seed, fidelity="full") for i in pick]
    return {**spearman_ci(cheap, real), "plans": [X[i].tolist() for i in pick], "cheap": cheap, "real": real,
            "real_fidelity": f"cut fine-tuned {objective.finetune_steps} steps, scored on the search split"}


def search_budget(loaded, adapter_dir, budget: float, work, trials: int = 100, how: str = "svd", n_blocks: int = 4,
                  seq_len: int = 128, seed: int = 0, data=None, batch: int = 8, adapter_path=None) -> dict:
    """RankAdaptor on ``adapter_dir`` within 1 % below ``budget``, study and report under ``work``; the cut goes to
    ``adapter_path``. The one call behind the benchmarks' "super-search" (the CLI builds the same pieces)."""
    from rankadaptor.compress.adapter_io import read_adapter
    from rankadaptor.lora.ranks import layer_costs
    from rankadaptor.search.study import make_space
    from rankadaptor.search.super_fidelity import SuperFidelity, plan_of, search_split

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    rank = min(m.r for m in read_adapter(adapter_dir).modules.values())
    centre, tolerance = below_budget(float(budget))
    settings = super_settings(rank=rank, study="super", trials=trials, budget=centre, budget_tolerance=tolerance,
                              seed=seed, storage=f"sqlite:///{work / 'study.db'}", out=str(work / "plan.json"),
                              final_seeds=0)
    costs = layer_costs(loaded.model)
    space = make_space(settings, costs)
    split = search_split(loaded.tokenizer, n_blocks, seq_len, data=data)
    objective = SuperFidelity(loaded.model, loaded.tokenizer, adapter_dir, plan_of(space), split, how,
                              identity=loaded.identity)
    t0 = time.perf_counter()
    result = run_super_search(settings, objective, costs, {"model": loaded.identity, **objective.identity()},
                              batch=batch, adapter_path=adapter_path)
    return {"plan": objective.plan_of(result.report["best"]["ranks"]).to_dict(), "state": result.state,
            "seconds": time.perf_counter() - t0, "split_tokens": split.identity["tokens"],
            "evaluations": objective.stats["evaluations"], "report": str(result.paths["report"])}
