"""What one search trial measures, and the contract any objective follows.

THE OBJECTIVE CONTRACT (``run_study``, ``rankadaptor search --objective``, every benchmark)::

    value = objective(ranks, seed=<int>, fidelity="screen" | "full" | "final")   # -> float
    objective.direction == "maximize" or "minimize"

* ``ranks``: an integer numpy vector of the study's space (``space.n_units`` entries: one per
  layer, or one per module with ``granularity="module"``); ``space.to_rank_plan(ranks)`` is the
  ``RankPlan`` to train (``rankadaptor.lora.ranks``), ``space.module_names`` names the modules.
* ``seed``: every screening trial of a study gets the study's seed (common random numbers); the
  noise repeats and the final re-evaluations get other seeds. Use it for everything random
  (data order, initialisation, dropout). A deterministic objective returns the same value for the
  same (ranks, seed, fidelity), so caching by that key is allowed.
* ``fidelity``: ``"screen"`` for the cheap trials of ``--multi-fidelity``, ``"full"`` for trials
  without it, ``"final"`` for the re-evaluation of the pick against uniform on fresh seeds: measure
  on text the search never scored on if you have some, else treat it as ``"full"``.
* optional: ``objective.identity() -> dict`` (recorded in the study: a study made for another
  objective is refused), ``objective.has_screen`` (False: ``--multi-fidelity`` is refused).

``--objective package.module:NAME`` imports NAME, which is either such an objective or a
*factory*: a callable with a parameter named ``space``, called as
``NAME(space=space, settings=settings, **objective_args)`` (``settings``, the run's
``SearchSettings``, only if it takes that parameter) and returning an objective. The direction is
``--direction`` or else the objective's ``direction`` attribute (one is required; they must agree).
``rankadaptor.search.synthetic:additive`` is such a factory.

``RecoverEvalObjective`` is the built-in real objective: recover the pruned model with LoRA at the
plan (``rankadaptor.lora.recover``) and measure the recovery corpus's validation loss, one task's
accuracy or the seven-task average; "final" measures the loss on the Brown held-out split instead.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from rankadaptor.errors import RankAdaptorError
from rankadaptor.metrics import TASKS
from rankadaptor.search.space import SearchSpace
from rankadaptor.search.synthetic import SyntheticObjective  # noqa: F401  (re-exported: tests patch it here)

log = logging.getLogger(__name__)

FIDELITIES = ("screen", "full", "final")
DIRECTIONS = ("maximize", "minimize")


def load_objective(path: str, space: SearchSpace, settings=None, objective_args: dict | None = None,
                   direction: str | None = None):
    """The objective named by ``package.module:NAME`` (an objective, or a factory of one; see above)."""
    target = import_objective(path)
    args = dict(objective_args or {})
    params = _parameters(target)
    if "space" in params:  # a factory
        kwargs = {"space": space, **({"settings": settings} if "settings" in params else {}), **args}
        try:
            objective = target(**kwargs)
        except TypeError as exc:
            raise RankAdaptorError(f"--objective {path!r}: the factory refused its arguments ({exc}); "
                                   f"it takes {sorted(params)}") from None
    elif args:
        raise RankAdaptorError(f"--objective-arg given, but {path!r} is an objective, not a factory taking "
                               "space=...; drop --objective-arg or pass a factory")
    else:
        objective = target
    if not callable(objective):
        raise RankAdaptorError(f"--objective {path!r}: the factory returned {type(objective).__name__}, not a callable")
    return _with_direction(objective, direction, path)


def import_objective(path: str):
    """The callable at ``package.module:NAME``, or a clear error (checked before any model loads)."""
    module_name, sep, attr = str(path).partition(":")
    if not sep or not module_name or not attr:
        raise RankAdaptorError(f"--objective {path!r} must be an importable path package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise RankAdaptorError(f"--objective {path!r}: module {module_name!r} not found; check the name and "
                                   "that its package is on PYTHONPATH") from None
        raise  # an import error inside the user's module shows as itself
    target = getattr(module, attr, None)
    if target is None or not callable(target):
        raise RankAdaptorError(f"--objective {path!r}: {module_name} has no callable {attr!r}")
    return target


def _parameters(fn) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _with_direction(objective, direction: str | None, path: str):
    own = getattr(objective, "direction", None)
    if direction is not None and direction not in DIRECTIONS:
        raise RankAdaptorError(f"--direction {direction!r} unknown; choose from {list(DIRECTIONS)}")
    if direction is None and own is None:
        raise RankAdaptorError(f"--objective {path!r} has no 'direction' attribute; pass --direction maximize|minimize")
    if direction is not None and own is not None and own != direction:
        raise RankAdaptorError(f"--direction {direction} contradicts the objective's own direction {own!r}")
    if own is None:
        return _Directed(objective, direction, path)
    if own not in DIRECTIONS:
        raise RankAdaptorError(f"objective direction {own!r} must be one of {list(DIRECTIONS)}")
    return objective


class _Directed:
    """A plain function objective with the direction the command line gave it."""

    def __init__(self, fn, direction: str, path: str):
        self.fn, self.direction, self.path = fn, direction, path

    def __call__(self, ranks, seed: int = 0, fidelity: str = "full") -> float:
        return self.fn(ranks, seed=seed, fidelity=fidelity)

    def identity(self) -> dict[str, Any]:
        return {"objective": self.path, "direction": self.direction}


@dataclass
class RecoverEvalObjective:
    """recover + evaluate on a model spec; the model and the tokenised data are loaded once and reused."""

    model_spec: str
    target: str = "average"  # a task name, "average", or "loss"
    steps: int = 20
    screen_steps: int | None = None
    limit: int | None = 200
    screen_limit: int | None = None
    recovery_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str | None = None  # recovery data file (None = the default offline corpus)
    device: str | None = None  # where each trial's model runs (``rankadaptor.device``; None = the default)
    space: SearchSpace | None = None  # turns vectors into plans (None: per-layer vectors)
    final_steps: int | None = None  # recovery steps of the "final" re-evaluations (default: steps)
    final_tokens: int = 4096  # Brown held-out tokens the "final" loss is measured on
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.target not in (*TASKS, "average", "loss"):
            raise RankAdaptorError(f"objective {self.target!r} unknown; use 'average', 'loss' or one of {list(TASKS)}")
        if self.steps < 1 or (self.final_steps is not None and self.final_steps < 1):
            raise RankAdaptorError(f"--steps {self.steps} and --final-steps {self.final_steps} must be >= 1")

    @property
    def direction(self) -> str:
        return "minimize" if self.target == "loss" else "maximize"

    @property
    def has_screen(self) -> bool:
        return self.screen_steps is not None or self.screen_limit is not None

    def identity(self) -> dict[str, Any]:
        return {"objective": self.target, "model": self.model_spec, "steps": self.steps,
                "screen_steps": self.screen_steps, "limit": self.limit, "screen_limit": self.screen_limit,
                "final_steps": self.final_steps, "data": self.data, "recovery": self.recovery_kwargs}

    def _loaded(self):
        """The model (loaded once; each trial trains a deep copy) and the recovery data (tokenised once)."""
        from rankadaptor.data import load_recovery_data
        from rankadaptor.lora.recover import RecoveryConfig
        from rankadaptor.models.loading import load_model

        if "model" not in self._cache:
            self._cache["model"] = load_model(self.model_spec, device=self.device)
            probe = RecoveryConfig(**self.recovery_kwargs)
            self._cache["data"] = load_recovery_data(self.data, self._cache["model"].tokenizer,
                                                     seq_len=probe.seq_len, max_val=probe.max_val)
        return self._cache["model"], self._cache["data"]

    def __call__(self, ranks, seed: int = 0, fidelity: str = "full") -> float:
        from rankadaptor.lora.ranks import RankPlan
        from rankadaptor.lora.recover import RecoveryConfig, recover

        if fidelity not in FIDELITIES:
            raise RankAdaptorError(f"fidelity {fidelity!r} unknown; choose from {FIDELITIES}")
        screen = fidelity == "screen"
        steps = {"screen": self.screen_steps or self.steps, "full": self.steps,
                 "final": self.final_steps or self.steps}[fidelity]
        limit = (self.screen_limit or self.limit) if screen else self.limit
        loaded, data = self._loaded()
        model = copy.deepcopy(loaded.model)
        plan = self.space.to_rank_plan(ranks) if self.space is not None else RankPlan(ranks=[int(r) for r in ranks])
        # paired_init: a module's LoRA start depends on (seed, name, rank) only (common random numbers)
        config = RecoveryConfig(**{"paired_init": True, **self.recovery_kwargs, "max_steps": steps, "seed": seed})
        result = recover(model, loaded.tokenizer, plan, config, data=data)
        if self.target == "loss":
            if fidelity == "final" and self.data is None:
                return self._heldout_loss(result.model, loaded.tokenizer)
            return float(result.record["val_loss"])  # the recovery data's validation split
        from rankadaptor.eval import evaluate
        from rankadaptor.metrics import paper_average

        res = evaluate(result.model.eval(), loaded.tokenizer, tasks=None if self.target == "average" else
                       [self.target], limit=limit, seed=seed)
        # "average" is THE average of rankadaptor.metrics (LLM-Pruner's acc / acc_norm per task)
        return float(paper_average(res["tasks"]) if self.target == "average" else res["tasks"][self.target]["acc"])

    def _heldout_loss(self, model, tokenizer) -> float:
        """Mean next-token loss (log perplexity) on the first ``final_tokens`` tokens of Brown's held-out split,
        text the search never scored on (it scores the training corpus's validation split)."""
        from rankadaptor.eval import heldout_perplexity

        return math.log(heldout_perplexity(model.eval(), tokenizer, n_tokens=self.final_tokens).ppl)
