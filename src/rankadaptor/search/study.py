"""The one search call: ``run_study(settings, objective, costs, identity) -> StudyResult``.

The CLI (``rankadaptor search``), the demo and the search benchmarks all go through here, so a
search means the same thing everywhere: a ``SearchSpace`` of rank vectors (one rank per layer, or
per module) at a parameter budget, a strategy (RankAdaptor's surrogate-guided search, random,
TPE, a Gaussian process), a study in Optuna storage that any number of workers share
(``storage.py``), the initial design (uniform, any seed plans such as other allocators' plans, a
Latin hypercube), the trial loop on common random numbers with its own noise measurements until
the budget or convergence (``engine.run_search``) and, unless switched off, the re-evaluation of
the pick against the uniform plan on fresh seeds (``final.finalize``) with plan and report on disk.

``objective(ranks, seed=..., fidelity=...) -> float`` with a ``direction``: the contract is in
``search/objective.py`` (the real objective, recover + evaluate, is there; synthetic ones whose
optimum is known are in ``search/synthetic.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rankadaptor.errors import RankAdaptorError
from rankadaptor.fileio import check_output, require_file
from rankadaptor.search.sampler import STRATEGIES
from rankadaptor.search.space import SearchSpace
from rankadaptor.search.storage import check_study_name
from rankadaptor.search.surrogates import DEFAULT_SURROGATE, default_acquisition

log = logging.getLogger(__name__)

META_METHODS = ("reptile", "pooled")


@dataclass
class SearchSettings:
    """Everything a search needs besides its objective; validated on construction."""

    study: str
    trials: int | None = 40  # completed trials of the whole study (all workers); None only with create_only
    storage: str | None = None  # database URL; None = sqlite:///<study>.db in the working directory
    strategy: str = "rankadaptor"  # rankadaptor (surrogate-guided), random, tpe, gp
    surrogate: str = DEFAULT_SURROGATE  # the rankadaptor strategy's model: hierarchical (default), ridge, mlp
    granularity: str = "layer"  # one rank per decoder layer (the paper's) or per module (q, k, v, o, gate, up, down)
    budget: str | float | None = "uniform:8"  # 'uniform:R' (uniform rank R's count), a count, or None
    budget_tolerance: float = 0.01
    candidates: tuple[int, ...] | None = None  # None: {2,4,..,12} per layer, 0..32 per module
    fixed_first: int = 4  # RankAdaptor §4.1: the first 4 and last 2 layers are not pruned, rank 8 there
    fixed_last: int = 2
    fixed_rank: int = 8
    n_initial: int = 8  # initial design incl. the uniform plan and the seed plans
    pool: int = 10_000
    acquisition: str | None = None  # ucb, ei, thompson; None: the surrogate's own (thompson for hierarchical)
    kappa: float = 2.0  # UCB exploration weight (benchmarks/results/search_compare.md)
    ensemble: int = 5
    hidden: tuple[int, ...] = (32, 32, 32)  # RankAdaptor §4.1's performance model 32-32-32-1
    epochs: int = 300
    patience: int = 8
    model_tolerance: float = 0.5
    noise_every: int = 8  # re-measure uniform + incumbent on a fresh seed every N trials (0 = never)
    meta: str | None = None  # rank-measurements JSON for offline meta-learning (the mlp surrogate's prior)
    meta_method: str = "reptile"
    final_seeds: int = 3
    finalists: int = 1
    finalize: bool = True  # False: only search (extra worker processes)
    multi_fidelity: bool = False
    seed: int = 0  # the study's seed: every screening trial runs on it (common random numbers)
    seeds: Sequence[tuple[str, Any]] = ()  # (label, RankPlan or vector) offered to the initial design
    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 2
    poll_interval: float = 5.0
    cv_every: int = 1
    create_only: bool = False  # create (or check) the study in storage and return
    out: str | None = None  # best plan JSON (RankPlan format); None: the report is returned, nothing written
    report: str | None = None  # summary + plots directory (default <out>.search)
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in the study identity (e.g. objective settings)

    def __post_init__(self) -> None:
        from rankadaptor.search.space import GRANULARITIES
        from rankadaptor.search.surrogates import SURROGATES

        check_study_name(self.study)  # it names the default <study>.db: never a path
        if self.strategy not in STRATEGIES:
            raise RankAdaptorError(f"strategy {self.strategy!r} unknown; choose from {list(STRATEGIES)}")
        if self.surrogate not in SURROGATES:
            raise RankAdaptorError(f"surrogate {self.surrogate!r} unknown; choose from {sorted(SURROGATES)}")
        if self.acquisition is None:
            self.acquisition = default_acquisition(self.surrogate)
        if self.granularity not in GRANULARITIES:
            raise RankAdaptorError(f"granularity {self.granularity!r} unknown; choose from {list(GRANULARITIES)}")
        if self.meta_method not in META_METHODS:
            raise RankAdaptorError(f"meta method {self.meta_method!r} unknown; choose from {list(META_METHODS)}")
        if self.meta and (self.surrogate != "mlp" or self.granularity != "layer"):
            raise RankAdaptorError("--meta is a prior for the MLP surrogate of a per-layer search; add "
                                   "--surrogate mlp (and keep --granularity layer) or drop --meta")
        self.candidates = None if self.candidates is None else tuple(int(c) for c in self.candidates)
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.create_only:
            return
        if self.trials is None:
            raise RankAdaptorError("--trials N is required (the study's total of completed trials) unless --create-only")
        if self.trials < 1:
            raise RankAdaptorError(f"--trials {self.trials} must be >= 1 (the study's total of completed trials)")
        if self.meta:
            require_file(self.meta, "--meta file")
        if self.out and self.finalize:  # found only after the whole search otherwise
            check_output(self.out, inputs=[self.meta], size=1 << 20, hold=False)
            check_output(self.report_dir(), flag="--report", inputs=[self.meta], size=8 << 20, hold=False)

    def report_dir(self) -> Path:
        if self.report:
            return Path(self.report)
        out = Path(self.out)
        return out.with_name(out.stem + ".search")

    def storage_url(self) -> str:
        from rankadaptor.search.storage import default_storage_url

        return self.storage or default_storage_url(self.study)


@dataclass
class StudyResult:
    study: Any  # the optuna.Study
    space: SearchSpace
    state: dict[str, Any]  # convergence state after the trial loop
    report: dict[str, Any] | None = None  # final.finalize's report (None without finalize)
    paths: dict[str, Path] = field(default_factory=dict)  # plan, report directory


def make_space(settings: SearchSettings, costs: Sequence[float] | Sequence[Mapping[str, float]]) -> SearchSpace:
    """The rank-vector space at the settings' budget; an unreachable budget fails here, before any study.

    ``costs``: ``rankadaptor.lora.ranks.module_costs(model)`` (per layer {module name: cost}; both
    granularities) or per-layer costs (``layer_costs(model)``; per-layer search only)."""
    shape = dict(candidates=settings.candidates, fixed_first=settings.fixed_first, fixed_last=settings.fixed_last,
                 fixed_rank=settings.fixed_rank)
    unbounded = SearchSpace.for_model(costs, settings.granularity, **shape)
    space = SearchSpace.for_model(costs, settings.granularity, **shape,
                                  budget=_budget(settings.budget, unbounded), tolerance=settings.budget_tolerance)
    space.check_feasible()
    return space


def _budget(budget: str | float | None, space: SearchSpace) -> float | None:
    if budget is None or budget == "none":
        return None
    if isinstance(budget, str) and budget.startswith("uniform:"):
        try:
            return space.uniform_budget(int(budget.split(":", 1)[1]))
        except ValueError:
            raise RankAdaptorError(f"--budget {budget!r}: use uniform:R with an integer R") from None
    try:
        return float(budget)
    except (TypeError, ValueError):
        raise RankAdaptorError(f"--budget {budget!r} must be 'uniform:R', a parameter count or 'none'") from None


def seed_vectors(seeds: Sequence[tuple[str, Any]], space: SearchSpace,
                 costs: Sequence[float] | Sequence[Mapping[str, float]]) -> list[tuple[str, np.ndarray]]:
    """Seed plans as vectors of the space: snapped to its candidates and repaired into its budget.

    A per-module plan seeds a per-layer space with each layer's parameter-weighted mean rank (its
    share of the budget); a per-layer plan seeds a per-module space with every module at its
    layer's rank. A plan for another model (layer count, module names) is refused."""
    from rankadaptor.lora.ranks import RankPlan

    out = []
    modules = costs if len(costs) and isinstance(costs[0], Mapping) else None
    for label, plan in seeds:
        if isinstance(plan, RankPlan):
            if len(plan.ranks) != space.n_layers:
                raise RankAdaptorError(f"seed plan {label!r} has {len(plan.ranks)} layer ranks; the model has "
                                       f"{space.n_layers}")
            if modules is None:
                if plan.overrides:
                    raise RankAdaptorError(f"seed plan {label!r} has per-module ranks; pass module costs "
                                           "(rankadaptor.lora.ranks.module_costs) to use it")
                vec = np.asarray(plan.ranks, float)
            else:
                unknown = sorted(set(plan.overrides) - {n for layer in modules for n in layer})
                if unknown:
                    raise RankAdaptorError(f"seed plan {label!r} names modules the model lacks: {unknown[:3]}")
                ranks = [{n: plan.overrides.get(n, plan.ranks[i]) for n in layer} for i, layer in enumerate(modules)]
                if space.granularity == "module":
                    vec = np.asarray([r for layer in ranks for r in layer.values()], float)
                else:
                    vec = np.asarray([sum(r[n] * layer[n] for n in layer) / sum(layer.values())
                                      for r, layer in zip(ranks, modules)])
        else:
            vec = np.asarray(plan, float)
        projected = space.project(vec)
        if projected is None:
            raise RankAdaptorError(f"seed plan {label!r} could not be brought into the space's budget")
        if not np.array_equal(projected, vec):
            log.info("seed plan %r projected into the space (candidates, budget): %d unit(s) changed", label,
                     int(np.sum(projected != vec)))
        out.append((str(label), projected))
    return out


def run_study(settings: SearchSettings, objective, costs: Sequence[float] | Sequence[Mapping[str, float]],
              identity: dict[str, Any] | None = None, storage=None) -> StudyResult:
    """Create or resume the study, run trials until its budget or convergence, then finalise.

    ``costs`` is ``rankadaptor.lora.ranks.module_costs(model)`` (or per-layer ``layer_costs(model)``
    for a per-layer search); ``objective`` follows the contract in ``search/objective.py``;
    ``identity`` says which model and objective the study is for (a study made for another is
    refused). ``storage`` is an opened Optuna storage; by default the settings' URL is opened.
    """
    import optuna

    from rankadaptor.search import engine
    from rankadaptor.search.perf_model import MLPConfig
    from rankadaptor.search.sampler import make_sampler
    from rankadaptor.search.storage import HeartbeatConfig, check_storage_url, open_storage

    # every input is checked before the storage is touched: a bad input leaves nothing on disk
    url = settings.storage_url()
    heartbeat = HeartbeatConfig(settings.heartbeat_interval, settings.grace_period, settings.max_retry)
    if storage is None:
        check_storage_url(url)
    if getattr(objective, "direction", None) not in ("maximize", "minimize"):
        raise RankAdaptorError("the objective needs a direction attribute: 'maximize' or 'minimize'")
    if settings.multi_fidelity and getattr(objective, "has_screen", True) is False:
        raise RankAdaptorError("--multi-fidelity needs a cheaper screening fidelity: give --screen-steps and/or "
                               "--screen-limit (without them every trial would run at full cost)")
    space = make_space(settings, costs)
    seeds = seed_vectors(settings.seeds, space, costs)
    identity = {**(identity or {}), **settings.extra}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mlp = MLPConfig(hidden=settings.hidden, epochs=settings.epochs, partial_epochs=max(1, settings.epochs // 3))
    surrogate_options = {"mlp": mlp, "ensemble_size": settings.ensemble,
                         "init_state": _meta_prior(settings, space, mlp, objective)}
    sampler_seed = settings.seed
    if not settings.finalize:  # extra workers must not all propose the same plans
        import random

        sampler_seed = settings.seed + random.SystemRandom().randrange(1 << 30)
    sampler = make_sampler(settings.strategy, space, seed=sampler_seed, n_initial=settings.n_initial,
                           pool_size=settings.pool, acquisition=settings.acquisition, kappa=settings.kappa,
                           surrogate=settings.surrogate, surrogate_options=surrogate_options,
                           cv_every=settings.cv_every, design_seed=settings.seed)
    storage = storage or open_storage(url, heartbeat)
    study = engine.open_study(settings.study, storage, space, identity, settings.strategy, objective.direction,
                              sampler, seeds=seeds, study_seed=settings.seed)
    if settings.create_only:
        return StudyResult(study, space, {"n_complete": engine.n_complete(study), "created_only": True})
    config = engine.SearchConfig(
        n_trials=settings.trials, patience=settings.patience, tolerance=settings.model_tolerance,
        final_seeds=settings.final_seeds, finalists=settings.finalists, multi_fidelity=settings.multi_fidelity,
        seed=settings.seed, poll_interval=settings.poll_interval, noise_every=settings.noise_every,
        surrogate=settings.surrogate, model_finalist=settings.strategy == "rankadaptor")
    state = engine.run_search(study, space, objective, config)
    result = StudyResult(study, space, state)
    if not settings.finalize:
        return result
    from rankadaptor.search.final import finalize
    from rankadaptor.search.outputs import write_outputs

    result.report = finalize(study, space, objective, config, surrogate_options)
    if settings.out:
        result.paths = write_outputs(study, space, result.report, settings.out, settings.report_dir(), config, identity)
    return result


def _meta_prior(settings: SearchSettings, space: SearchSpace, mlp, objective) -> dict | None:
    """RankAdaptor §3.2's offline meta-learning: a prior for the MLP surrogate from other settings."""
    if not settings.meta or settings.strategy != "rankadaptor":
        return None
    from rankadaptor.search import meta

    target = getattr(objective, "target", "average")
    target = "average" if target in ("synthetic", "loss") else target
    tasks = list(meta.load_measurements(settings.meta, target).values())
    log.info("meta-learning (%s) on %d source settings from %s", settings.meta_method, len(tasks), settings.meta)
    fn = meta.reptile if settings.meta_method == "reptile" else meta.pooled_pretrain
    return fn(tasks, space.n_free, mlp, seed=settings.seed)
