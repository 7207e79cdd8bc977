"""What one search trial measures: ``objective(ranks, seed, fidelity) -> float``.

* ``SyntheticObjective`` (hidden ``--objective synthetic`` in the CLI; for tests and benchmarks
  only): a known concave function of the rank vector with per-layer importances plus Gaussian
  noise, so a search can be checked against the true optimum in seconds.
* ``RecoverEvalObjective``: the real thing: recover the (pruned) model with LoRA at the given
  per-layer ranks (``rankadaptor.lora.recover``) and evaluate it (``rankadaptor.eval``): one task's
  accuracy, the seven-task average, or the held-out validation loss of the recovery run (its
  ``direction`` is "minimize"; the study stores the direction). ``fidelity="screen"`` uses the short recovery and the
  evaluation limit; ``"full"`` the full budget (finalists).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rankadaptor.metrics import TASKS
from rankadaptor.errors import RankAdaptorError
from rankadaptor.search.space import SearchSpace

log = logging.getLogger(__name__)

FIDELITIES = ("screen", "full")


class SyntheticObjective:
    """score = sum_i w_i * log(r_i) - lam * cost/budget-ish penalty + noise; the truth is known."""

    direction = "maximize"

    def __init__(self, space: SearchSpace, noise: float = 0.01, seed: int = 0, screen_noise: float | None = None):
        rng = np.random.default_rng(seed)
        self.space = space
        self.noise = float(noise)
        self.screen_noise = float(noise if screen_noise is None else screen_noise)
        self.weights = rng.gamma(2.0, 1.0, space.n_layers)  # some layers matter far more than others
        self.weights /= self.weights.sum()
        self.penalty = 0.02 / space.candidates[-1]
        self.seed = seed
        self.calls = 0

    def truth(self, ranks: np.ndarray) -> np.ndarray:
        r = np.atleast_2d(np.asarray(ranks, float))
        return 0.1 * (np.log(r) @ self.weights) - self.penalty * r.mean(1)

    def __call__(self, ranks, seed: int = 0, fidelity: str = "full") -> float:
        self.calls += 1
        rng = np.random.default_rng([self.seed, seed, int(np.asarray(ranks).sum()), self.calls])
        sd = self.noise if fidelity == "full" else self.screen_noise
        return float(self.truth(ranks)[0] + sd * rng.normal())

    def identity(self) -> dict[str, Any]:
        return {"objective": "synthetic", "noise": self.noise, "seed": self.seed}


@dataclass
class RecoverEvalObjective:
    """recover + evaluate on a model spec; one trial per call (loads a fresh model each time)."""

    model_spec: str
    target: str = "average"  # a task name, "average", or "loss"
    steps: int = 20
    screen_steps: int | None = None
    limit: int | None = 200
    screen_limit: int | None = None
    recovery_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str | None = None  # recovery data file (None = the default offline corpus)
    device: str | None = None  # where each trial's model runs (``rankadaptor.device``; None = the default)

    def __post_init__(self) -> None:
        if self.target not in (*TASKS, "average", "loss"):
            raise RankAdaptorError(f"objective {self.target!r} unknown; use 'average', 'loss' or one of {list(TASKS)}")
        if self.steps < 1:
            raise RankAdaptorError(f"--steps {self.steps} must be >= 1")

    @property
    def direction(self) -> str:
        return "minimize" if self.target == "loss" else "maximize"

    def identity(self) -> dict[str, Any]:
        return {"objective": self.target, "model": self.model_spec, "steps": self.steps,
                "screen_steps": self.screen_steps, "limit": self.limit, "screen_limit": self.screen_limit,
                "data": self.data, "recovery": self.recovery_kwargs}

    def __call__(self, ranks, seed: int = 0, fidelity: str = "full") -> float:
        import torch

        from rankadaptor.lora.ranks import RankPlan
        from rankadaptor.lora.recover import RecoveryConfig, recover
        from rankadaptor.models.loading import load_model

        if fidelity not in FIDELITIES:
            raise RankAdaptorError(f"fidelity {fidelity!r} unknown; choose from {FIDELITIES}")
        screen = fidelity == "screen"
        steps = (self.screen_steps or self.steps) if screen else self.steps
        limit = (self.screen_limit or self.limit) if screen else self.limit
        torch.manual_seed(seed)
        loaded = load_model(self.model_spec, device=self.device)
        plan = RankPlan(ranks=[int(r) for r in ranks])
        config = RecoveryConfig(max_steps=steps, seed=seed, **self.recovery_kwargs)
        result = recover(loaded.model, loaded.tokenizer, plan, config, data=self.data)
        if self.target == "loss":  # held-out loss on the recovery data's validation split
            return float(result.record["val_loss"])
        from rankadaptor.eval import evaluate
        from rankadaptor.metrics import paper_average

        model = result.model
        model.eval()
        tasks = None if self.target == "average" else [self.target]
        res = evaluate(model, loaded.tokenizer, tasks=tasks, limit=limit, seed=seed)
        # "average" is THE average of rankadaptor.metrics (LLM-Pruner's acc / acc_norm per task)
        return float(paper_average(res["tasks"]) if self.target == "average" else res["tasks"][self.target]["acc"])
