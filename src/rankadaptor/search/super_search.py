"""RankAdaptor on the super-adapter: hundreds of cheap evaluations, in batches, in Optuna storage.

``run_super_search(settings, objective, costs, identity)`` is ``study.run_study`` for the cheap
fidelity (``search/super_fidelity.py``), per layer or per module, with RankAdaptor §3.3's phases:

* Initialization: the surrogate (by default the paper's MLP ensemble) is pre-trained by
  meta-learning (``search/meta.py``: Reptile or pooled) on data-free source tasks, the discarded
  singular-value energy of random plans, plus the ``--meta`` measurements if given. The initial
  design: uniform truncation (the space's uniform plan), PARA's global-threshold plan and PEFT's
  energy rule cut from the same super-adapter, any ``--seed-plan``, then a Latin hypercube.
* Iteration: each round refits the surrogate (the MLP incrementally) on every score so far, scores a
  pool (``--pool`` fresh valid plans plus mutations of the five best) and lets the acquisition pick
  the next ``batch`` plans, which are scored and written to the study together.
* Convergence: ``engine.convergence`` (model error on new trials, no improvement for ``patience``).

Why batches, and not ``engine.run_search``: there a trial is one ``study.optimize`` call (a dozen
SQLite transactions) plus a surrogate refit, which is nothing next to a minute-long recovery and
far more than a cheap score. Here a round costs one refit and one transaction per trial (finished
trials added with ``study.add_trials``); where the time goes is in the returned state
(``benchmarks/super_sweep.py`` reports it). One worker per study.

The end is every search's: ``final.finalize`` (finalists and uniform at fidelity "final", the
surrogate's out-of-fold validity) and ``search.outputs.write_outputs``; then the validity of the
cheap score against the fine-tuned cut on ``validate`` plans spread over the cheap ranking, and the
super-adapter cut to the best plan (``compress.cut.cut_to_plan``) beside the plan file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rankadaptor.errors import RankAdaptorError
from rankadaptor.search.moves import unique_rows
from rankadaptor.search.space import SearchSpace, plan_hash

log = logging.getLogger(__name__)

# rank candidates of a per-layer search over cuts: dense where budgets put most layers, up to the usual R = 32
SUPER_CANDIDATES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
# what differs from a recovery search's defaults: every layer free (the super-adapter covers all of them),
# the paper's MLP with its meta-learned prior, and a patience that matches hundreds of cheap trials
SUPER_DEFAULTS = {"fixed_first": 0, "fixed_last": 0, "budget_tolerance": 0.01, "patience": 48, "n_initial": 16,
                  "surrogate": "mlp"}


def super_settings(rank: int = 32, costs: Sequence[Mapping[str, float]] | None = None, **kwargs):
    """``SearchSettings`` with the super-adapter search's defaults (``None`` values take them): candidates
    capped at the adapter's rank R (0..R per module); the space's uniform plan (the baseline every search
    measures) is uniform truncation at the budget: rank R' of ``uniform:R'``, or for a parameter count the
    largest uniform rank that fits it (``costs``: ``module_costs(model)``)."""
    from rankadaptor.search.study import SearchSettings

    given = {k: v for k, v in kwargs.items() if v is not None}
    budget = given.get("budget", "uniform:8")
    tail = budget.split(":", 1)[1] if isinstance(budget, str) and budget.startswith("uniform:") else ""
    uniform = int(tail) if tail.isdigit() else 8
    if not tail and costs is not None and budget not in (None, "none"):
        per_rank = sum(sum(layer.values()) for layer in costs)
        top = float(budget) * (1 + given.get("budget_tolerance", SUPER_DEFAULTS["budget_tolerance"]))
        uniform = int(top / per_rank + 1e-9)  # a window's top at exactly uniform:R's count must give R, not R - 1
    cands = tuple(range(0, rank + 1)) if given.get("granularity") == "module" else \
        tuple(c for c in SUPER_CANDIDATES if c <= rank)
    fixed = max([c for c in cands if 1 <= c <= min(uniform, rank)] or [1])  # the uniform plan is a candidate
    defaults = {**SUPER_DEFAULTS, "candidates": cands, "fixed_rank": fixed}
    return SearchSettings(**{**defaults, **given})


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
    top = max(max(candidates or (0,)), fixed_rank)
    if top > bound:
        raise RankAdaptorError(f"the search space reaches rank {top} but the super-adapter has rank {bound} (the "
                               f"bound); use --candidates and --fixed-rank <= {bound}")


def meta_prior(settings, space: SearchSpace, objective, mlp) -> tuple[dict | None, dict]:
    """RankAdaptor §3.2's offline meta-learning of the MLP surrogate on energy source tasks (and --meta)."""
    from rankadaptor.search import meta
    from rankadaptor.search.super_fidelity import energy_tasks

    if settings.strategy != "rankadaptor" or settings.surrogate != "mlp":
        return None, {}
    t0 = time.perf_counter()
    tasks = energy_tasks(space, objective, seed=settings.seed)
    if settings.meta:
        tasks += list(meta.load_measurements(settings.meta, "average").values())
    fn = meta.reptile if settings.meta_method == "reptile" else meta.pooled_pretrain
    state = fn(tasks, space.n_free, mlp, seed=settings.seed)
    return state, {"method": settings.meta_method, "tasks": [t.name for t in tasks],
                   "seconds": time.perf_counter() - t0}


def run_super_search(settings, objective, costs: Sequence[Mapping[str, float]], identity: dict[str, Any] | None = None,
                     batch: int = 8, validate: int = 0, storage=None, adapter_path=None):
    """Create or resume the study, search in batches, finalise; returns a ``study.StudyResult``.

    ``costs`` is ``rankadaptor.lora.ranks.module_costs(model)``; the cut adapter is written to
    ``adapter_path`` (default: ``adapter_out(settings.out)``)."""
    import optuna

    from rankadaptor.compress.cut import check_budget
    from rankadaptor.search import engine
    from rankadaptor.search.perf_model import MLPConfig
    from rankadaptor.search.storage import HeartbeatConfig, check_storage_url, open_storage
    from rankadaptor.search.study import StudyResult, make_space, seed_vectors
    from rankadaptor.search.super_fidelity import allocator_plans

    if not isinstance(batch, int) or batch < 1 or not isinstance(validate, int) or validate < 0:
        raise RankAdaptorError(f"--batch {batch!r} must be >= 1 and --validate {validate!r} >= 0")
    if settings.strategy not in ("rankadaptor", "random"):
        raise RankAdaptorError(f"the super-adapter search runs strategy rankadaptor or random, not {settings.strategy!r}")
    url = settings.storage_url()
    if storage is None:
        check_storage_url(url)
    space = make_space(settings, costs)
    check_rank_bound(space.candidates, space.fixed_rank, objective.adapter)
    if space.budget is not None:
        check_budget(objective.adapter, int(space.budget))
    if settings.finalize and settings.out:
        adapter_path = Path(adapter_path or adapter_out(settings.out))
        if adapter_path.exists():
            raise RankAdaptorError(f"{adapter_path} already exists; choose another --out")
    identity = {**(identity or {}), **settings.extra}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    allocators = allocator_plans(objective.adapter, objective.model, int(space.budget)) if space.budget else []
    seeds = seed_vectors([*allocators, *settings.seeds], space, costs)
    storage = storage or open_storage(url, HeartbeatConfig(settings.heartbeat_interval, settings.grace_period,
                                                          settings.max_retry))
    study = engine.open_study(settings.study, storage, space, identity, settings.strategy, objective.direction,
                              optuna.samplers.RandomSampler(seed=settings.seed), seeds=seeds,
                              study_seed=settings.seed)
    if settings.create_only:
        return StudyResult(study, space, {"n_complete": engine.n_complete(study), "created_only": True})
    mlp = MLPConfig(hidden=settings.hidden, epochs=settings.epochs, partial_epochs=max(1, settings.epochs // 3))
    init_state, prior = meta_prior(settings, space, objective, mlp)
    options = {"mlp": mlp, "ensemble_size": settings.ensemble, "init_state": init_state}
    config = engine.SearchConfig(n_trials=settings.trials, patience=settings.patience,
                                 tolerance=settings.model_tolerance, final_seeds=settings.final_seeds,
                                 finalists=settings.finalists, seed=settings.seed, noise_every=settings.noise_every,
                                 surrogate=settings.surrogate)
    state = BatchedSearch(study, space, objective, settings, options, batch).run(config)
    state["meta_prior"] = prior
    result = StudyResult(study, space, state)
    if not settings.finalize:
        return result
    from rankadaptor.compress.cut import cut_to_plan
    from rankadaptor.search.final import finalize
    from rankadaptor.search.outputs import write_outputs

    result.report = finalize(study, space, objective, config, options)
    result.report["search_state"] = state
    result.report["validity"] = validity(study, space, objective, validate, settings.seed)
    if result.report["validity"].get("spearman") is not None:
        v = result.report["validity"]
        result.report["messages"].append(
            f"cheap score vs fine-tuned cut on {v['n']} plans: Spearman {v['spearman']:+.2f} "
            f"(95% bootstrap CI {v['ci_low']:+.2f} .. {v['ci_high']:+.2f})")
    result.paths = write_outputs(study, space, result.report, settings.out, settings.report_dir(), config, identity)
    result.paths["adapter"] = adapter_path
    cut_to_plan(objective.adapter_dir, objective.model, space.to_rank_plan(result.report["best"]["ranks"]),
                adapter_path, how=objective.how)
    return result


class BatchedSearch:
    """The trial loop: the queued design, a Latin hypercube, then rounds of (refit, pool, acquisition,
    ``batch`` cheap scores)."""

    def __init__(self, study, space: SearchSpace, objective, settings, options: dict, batch: int):
        from rankadaptor.search.sampler import completed_data
        from rankadaptor.search.surrogates import make_surrogate

        self.study, self.space, self.objective, self.settings = study, space, objective, settings
        self.batch = batch
        self.surrogate = make_surrogate(settings.surrogate, space, settings.seed, **options)
        self.rng = np.random.default_rng(settings.seed)
        X, y, _ = completed_data(space, study)  # a resumed study continues from what it has
        self.X, self.y = list(X), list(y)
        self.held = {plan_hash(r) for r in X}
        self.sign = 1.0 if objective.direction == "maximize" else -1.0
        self.times = {"evaluate": 0.0, "storage": 0.0, "model": 0.0, "pool": 0.0}
        self.rounds = 0

    def run(self, config) -> dict:
        from rankadaptor.search import engine, noise

        t0 = time.perf_counter()
        self._queued()
        self._design()
        state = engine.convergence(self.space, self.study, config)
        while len(self.y) < self.settings.trials and not state["converged"]:
            if not self._round():
                log.warning("every plan the pool can reach has been scored; stopping at %d", len(self.y))
                state["stopped"] = "space exhausted"
                break
            # the search's own noise measurement: repeats of uniform and the incumbent on fresh seeds (a
            # deterministic cheap score repeats exactly, and the report says so)
            noise.measure_due(self.study, self.space, self.objective, self.settings.noise_every, self.settings.seed,
                              "screen")
            state = engine.convergence(self.space, self.study, config)
        if state["converged"]:
            self.study.set_user_attr("converged", True)
        seconds = time.perf_counter() - t0
        return {**state, "rounds": self.rounds, "seconds": seconds, "times": dict(self.times),
                "evaluations_per_minute": 60 * len(self.y) / seconds if seconds > 0 else None,
                "objective_stats": dict(getattr(self.objective, "stats", {}))}

    def _queued(self) -> None:
        """The plans ``open_study`` queued (uniform, the allocators', seed plans): asked and told one by one."""
        from optuna.trial import TrialState

        dist = {n: self.space.distribution() for n in self.space.param_names()}
        while len(self.y) < self.settings.trials and \
                self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial = self.study.ask(dist)
            vec = np.asarray(trial.user_attrs.get("ranks") or self.space.from_params(trial.params), dtype=np.int64)
            if not self.space.is_valid(vec)[0]:  # e.g. uniform truncation below the budget's window: not scored
                trial.set_user_attr("invalid", True)
                self.study.tell(trial, state=TrialState.FAIL)
                self.held.add(plan_hash(vec))
                continue
            t = time.perf_counter()
            value = float(self.objective(vec, seed=self.settings.seed, fidelity="screen"))
            self.times["evaluate"] += time.perf_counter() - t
            for key, val in {"ranks": [int(r) for r in vec], "plan_hash": plan_hash(vec), "fidelity": "super",
                             "seed": int(self.settings.seed)}.items():
                trial.set_user_attr(key, val)
            self.study.tell(trial, value)
            self._remember(vec, value)

    def _design(self) -> None:
        """A Latin hypercube (drawn once from the study's seed) fills the initial design up to ``n_initial``."""
        n_fill = min(self.settings.n_initial, self.settings.trials) - len(self.y)
        if n_fill <= 0:
            return
        rows = self.space.latin_hypercube(max(4 * n_fill, 8), np.random.default_rng(self.settings.seed))
        fresh = list({plan_hash(r): r for r in rows if plan_hash(r) not in self.held}.values())[:n_fill]
        self._evaluate([(r, {"proposal": "initial", "design": "latin-hypercube"}) for r in fresh])

    def _round(self) -> bool:
        """One round; False when the pool holds no unscored plan (a small space is exhausted)."""
        from rankadaptor.search import noise
        from rankadaptor.search.sampler import ACQUISITIONS

        k = min(self.batch, self.settings.trials - len(self.y))
        self.rounds += 1
        if self.settings.strategy == "random":  # the baseline: valid plans at random, no model
            fresh = [r for r in self.space.sample(max(4 * k, 64), self.rng) if plan_hash(r) not in self.held]
            fresh = list({plan_hash(r): r for r in fresh}.values())[:k]
            self._evaluate([(r, {"proposal": "random", "round": self.rounds}) for r in fresh])
            return bool(fresh)
        t = time.perf_counter()
        X, y = np.asarray(self.X), np.asarray(self.y)
        noise_sd = noise.estimate(self.study)["noise_sd"]
        self.surrogate.fit(X, y, noise_sd)
        self.times["model"] += time.perf_counter() - t
        t = time.perf_counter()
        pool = [self.space.sample(self.settings.pool, self.rng)]
        pool += [self.space.mutate(best, 400, self.rng) for best in X[np.argsort(-y)[:5]]]
        pool = unique_rows(np.concatenate(pool))
        pool = pool[[plan_hash(r) not in self.held for r in pool]]
        if not len(pool):
            return False
        mean, std = self.surrogate.predict(pool)
        score = ACQUISITIONS[self.settings.acquisition](mean, std, float(y.max()), self.settings.kappa,
                                                        noise_sd or 0.0)
        order = np.argsort(-score)[:k]
        self.times["pool"] += time.perf_counter() - t
        self._evaluate([(pool[i], {"proposal": "model", "predicted": float(mean[i]), "predicted_std": float(std[i]),
                                   "pool_size": int(len(pool)), "round": self.rounds}) for i in order])
        return True

    def _evaluate(self, todo: list) -> None:
        """Score the plans, then write them to the study as finished trials in one go."""
        import optuna

        if not todo:
            return
        values, seconds = [], []
        for vec, _ in todo:  # each score timed on its own: a batch's trials are written at once
            t = time.perf_counter()
            values.append(float(self.objective(vec, seed=self.settings.seed, fidelity="screen")))
            seconds.append(time.perf_counter() - t)
        self.times["evaluate"] += sum(seconds)
        t = time.perf_counter()
        dist = {n: self.space.distribution() for n in self.space.param_names()}
        self.study.add_trials([optuna.trial.create_trial(
            params=self.space.to_params(vec), distributions=dist, value=v,
            user_attrs={"ranks": [int(r) for r in vec], "plan_hash": plan_hash(vec), "fidelity": "super",
                        "seed": int(self.settings.seed), "seconds": sec, **attrs})
            for (vec, attrs), v, sec in zip(todo, values, seconds)])
        self.times["storage"] += time.perf_counter() - t
        for (vec, _), v in zip(todo, values):
            self._remember(vec, v)
        log.info("%d cheap scores (best %.4f of %d so far)", len(todo), self.sign * max(self.y), len(self.y))

    def _remember(self, vec, value: float) -> None:
        self.X.append(np.asarray(vec))
        self.y.append(self.sign * value)
        self.held.add(plan_hash(vec))


def validity(study, space: SearchSpace, objective, k: int, seed: int = 0) -> dict:
    """The cheap score against the fine-tuned cut on ``k`` scored plans spread over the cheap ranking."""
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
                  seq_len: int = 128, seed: int = 0, data=None, batch: int = 8, adapter_path=None,
                  granularity: str = "layer") -> dict:
    """RankAdaptor on ``adapter_dir`` within 1 % below ``budget``, study and report under ``work``; the cut goes to
    ``adapter_path``. The one call behind the benchmarks' "super-search" (the CLI builds the same pieces)."""
    from rankadaptor.compress.adapter_io import read_adapter
    from rankadaptor.lora.ranks import module_costs
    from rankadaptor.search.study import make_space
    from rankadaptor.search.super_fidelity import SuperFidelity, search_split

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    rank = min(m.r for m in read_adapter(adapter_dir).modules.values())
    centre, tolerance = below_budget(float(budget))
    costs = module_costs(loaded.model)
    settings = super_settings(rank=rank, costs=costs, study="super", trials=trials, budget=centre,
                              budget_tolerance=tolerance, granularity=granularity, seed=seed,
                              storage=f"sqlite:///{work / 'study.db'}", out=str(work / "plan.json"), final_seeds=0)
    space = make_space(settings, costs)
    split = search_split(loaded.tokenizer, n_blocks, seq_len, data=data)
    t0 = time.perf_counter()
    # the cut's hooks come off the model when the search ends: the caller measures the written adapter on it
    with SuperFidelity(loaded.model, loaded.tokenizer, adapter_dir, space, split, how,
                       identity=loaded.identity) as objective:
        result = run_super_search(settings, objective, costs, {"model": loaded.identity, **objective.identity()},
                                  batch=batch, adapter_path=adapter_path)
    return {"plan": space.to_rank_plan(result.report["best"]["ranks"]).to_dict(), "state": result.state,
            "seconds": time.perf_counter() - t0, "split_tokens": split.identity["tokens"],
            "evaluations": objective.stats["evaluations"], "report": str(result.paths["report"])}
