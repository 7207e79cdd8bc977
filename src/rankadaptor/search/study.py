"""The one search call: ``run_study(settings, objective, layer_costs, identity) -> StudyResult``.

The CLI (``rankadaptor search``), the demo and the search benchmarks all go through here, so a
search means the same thing everywhere: a ``SearchSpace`` of per-layer rank vectors at a parameter
budget, a sampler (RankAdaptor's performance model, random, TPE), a study in Optuna storage that
any number of workers share (``storage.py``), the trial loop until the budget or convergence
(``engine.run_search``) and, unless switched off, the final re-evaluation of the pick against the
uniform plan on fresh seeds (``engine.finalize``) with the plan and report written to disk.

``objective(ranks, seed=..., fidelity=...) -> float`` is any callable with a ``direction``
("maximize" or "minimize"); ``search/objective.py`` has the real one (recover + evaluate) and a
synthetic one whose optimum is known.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rankadaptor.errors import RankAdaptorError
from rankadaptor.search.space import PAPER_CANDIDATES, SearchSpace

log = logging.getLogger(__name__)

STRATEGIES = ("rankadaptor", "random", "tpe")
META_METHODS = ("reptile", "pooled")


@dataclass
class SearchSettings:
    """Everything a search needs besides its objective; validated on construction."""

    study: str
    trials: int | None = 40  # completed trials of the whole study (all workers); None only with create_only
    storage: str | None = None  # database URL; None = sqlite:///<study>.db in the working directory
    strategy: str = "rankadaptor"
    budget: str | float | None = "uniform:8"  # 'uniform:R' (uniform rank R's count), a count, or None
    budget_tolerance: float = 0.05
    candidates: tuple[int, ...] = PAPER_CANDIDATES
    fixed_first: int = 4  # RankAdaptor §4.1: the first 4 and last 2 layers are not pruned, rank 8 there
    fixed_last: int = 2
    fixed_rank: int = 8
    n_initial: int = 8
    pool: int = 10_000
    acquisition: str = "ucb"
    kappa: float = 1.0
    ensemble: int = 5
    hidden: tuple[int, ...] = (32, 32, 32)  # RankAdaptor §4.1's performance model 32-32-32-1
    epochs: int = 300
    patience: int = 8
    model_tolerance: float = 0.5
    meta: str | None = None  # rank-measurements JSON for offline meta-learning
    meta_method: str = "reptile"
    final_seeds: int = 3
    finalists: int = 1
    finalize: bool = True  # False: only search (extra worker processes)
    multi_fidelity: bool = False
    seed: int = 0
    heartbeat_interval: int = 30
    grace_period: int = 120
    max_retry: int = 2
    poll_interval: float = 5.0
    cv_every: int = 1
    create_only: bool = False  # create (or check) the study in storage and return
    out: str | None = None  # best plan JSON (RankPlan format)
    report: str | None = None  # summary + plots directory (default <out>.search)
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in the study identity (e.g. objective settings)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise RankAdaptorError(f"strategy {self.strategy!r} unknown; choose from {list(STRATEGIES)}")
        if self.meta_method not in META_METHODS:
            raise RankAdaptorError(f"meta method {self.meta_method!r} unknown; choose from {list(META_METHODS)}")
        self.candidates = tuple(int(c) for c in self.candidates)
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.create_only:
            return
        if self.trials is None:
            raise RankAdaptorError("--trials N is required (the study's total of completed trials) unless --create-only")
        if self.trials < 1:
            raise RankAdaptorError(f"--trials {self.trials} must be >= 1 (the study's total of completed trials)")
        if self.finalize and not self.out:
            raise RankAdaptorError("an output plan file (--out) is required unless the worker only searches "
                                   "(--no-finalize)")
        if self.out and Path(self.out).exists():
            raise RankAdaptorError(f"--out {self.out} already exists; choose a new file (results are never overwritten)")
        if self.out and self.finalize and self.report_dir().exists():  # found only after the whole search otherwise
            raise RankAdaptorError(f"report directory {self.report_dir()} already exists; choose another --out or "
                                   "--report (results are never overwritten)")
        if self.meta and not Path(self.meta).is_file():
            raise RankAdaptorError(f"--meta file {self.meta} not found")

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
    report: dict[str, Any] | None = None  # engine.finalize's report (None without finalize)
    paths: dict[str, Path] = field(default_factory=dict)  # plan, report directory


def make_space(settings: SearchSettings, layer_costs: Sequence[float]) -> SearchSpace:
    """The rank-vector space at the settings' budget; an unreachable budget fails here, before any study."""
    shape = dict(n_layers=len(layer_costs), layer_costs=tuple(float(c) for c in layer_costs),
                 candidates=settings.candidates, fixed_first=settings.fixed_first, fixed_last=settings.fixed_last,
                 fixed_rank=settings.fixed_rank)
    space = SearchSpace(**shape, budget=_budget(settings.budget, SearchSpace(**shape)),
                        tolerance=settings.budget_tolerance)
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


def run_study(settings: SearchSettings, objective, layer_costs: Sequence[float],
              identity: dict[str, Any] | None = None, storage=None) -> StudyResult:
    """Create or resume the study, run trials until its budget or convergence, then finalise.

    ``layer_costs[i]`` is the LoRA parameter count per unit rank of decoder layer i
    (``rankadaptor.lora.ranks.layer_costs``); ``identity`` says which model and objective the study
    is for (a study made for another is refused). ``storage`` is an opened Optuna storage; by
    default the settings' URL is opened with its heartbeats.
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
    space = make_space(settings, layer_costs)
    identity = {**(identity or {}), **settings.extra}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mlp = MLPConfig(hidden=settings.hidden, epochs=settings.epochs, partial_epochs=max(1, settings.epochs // 3))
    init_state = _meta_prior(settings, space, mlp, objective)
    sampler_seed = settings.seed
    if not settings.finalize:  # extra workers must not all propose the same plans
        import random

        sampler_seed = settings.seed + random.SystemRandom().randrange(1 << 30)
    sampler = make_sampler(settings.strategy, space, seed=sampler_seed, n_initial=settings.n_initial,
                           pool_size=settings.pool, acquisition=settings.acquisition, kappa=settings.kappa,
                           ensemble_size=settings.ensemble, mlp=mlp, init_state=init_state,
                           cv_every=settings.cv_every)
    storage = storage or open_storage(url, heartbeat)
    study = engine.open_study(settings.study, storage, space, identity, settings.strategy, objective.direction,
                              sampler)
    if settings.create_only:
        return StudyResult(study, space, {"n_complete": engine.n_complete(study), "created_only": True})
    config = engine.SearchConfig(
        n_trials=settings.trials, patience=settings.patience, tolerance=settings.model_tolerance,
        final_seeds=settings.final_seeds, finalists=settings.finalists, multi_fidelity=settings.multi_fidelity,
        seed=settings.seed, poll_interval=settings.poll_interval)
    state = engine.run_search(study, space, objective, config)
    result = StudyResult(study, space, state)
    if not settings.finalize:
        return result
    from rankadaptor.search.outputs import write_outputs

    result.report = engine.finalize(study, space, objective, config, mlp, init_state)
    result.paths = write_outputs(study, space, result.report, settings.out, settings.report_dir(), config, identity)
    return result


def _meta_prior(settings: SearchSettings, space: SearchSpace, mlp, objective) -> dict | None:
    """RankAdaptor §3.2's offline meta-learning: a prior for the performance model from other settings."""
    if not settings.meta or settings.strategy != "rankadaptor":
        return None
    from rankadaptor.search import meta

    target = getattr(objective, "target", "average")
    target = "average" if target in ("synthetic", "loss") else target
    tasks = list(meta.load_measurements(settings.meta, target).values())
    log.info("meta-learning (%s) on %d source settings from %s", settings.meta_method, len(tasks), settings.meta)
    fn = meta.reptile if settings.meta_method == "reptile" else meta.pooled_pretrain
    return fn(tasks, space.n_free, mlp, seed=settings.seed)
