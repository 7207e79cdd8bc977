"""Offline meta-learning for the performance model (RankAdaptor §3.3, Initialization phase).

A *task* is a dataset of (rank vector features -> score): another lm-eval task of the same trials,
an earlier study, or one setting of a measurements file. Two ways to get an initial weight vector:

* ``pooled_pretrain``: ordinary training on all source tasks pooled (each task's targets
  standardised separately, since scales differ);
* ``reptile``: first-order meta-learning (Nichol et al. 2018): repeatedly adapt a copy of the
  weights to one task for a few steps, then move the shared weights towards the adapted ones.

``adapt`` then fits a model from that initialisation on k trials of the target task.
Features of different depths are resampled to the target's free-layer count by relative depth.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rankadaptor.metrics import TASKS
from rankadaptor.errors import RankAdaptorError
from rankadaptor.fileio import read_json
from rankadaptor.search.perf_model import AdamW, MLPConfig, PerformanceModel, build_mlp

log = logging.getLogger(__name__)



@dataclass
class MetaTask:
    name: str
    X: np.ndarray  # (n, d) features in [0, 1]
    y: np.ndarray  # (n,)

    def standardised(self) -> np.ndarray:
        std = float(np.std(self.y))
        return (self.y - np.mean(self.y)) / (std if std > 1e-12 else 1.0)


def resample_features(X: np.ndarray, n_out: int) -> np.ndarray:
    """Map per-layer features of one depth onto ``n_out`` layers by linear interpolation in depth."""
    X = np.asarray(X, float)
    if X.shape[1] == n_out:
        return X
    src = np.linspace(0, 1, X.shape[1])
    dst = np.linspace(0, 1, n_out)
    return np.stack([np.interp(dst, src, row) for row in X])


def load_measurements(path: str | Path, objective: str = "average", fixed_first: int = 4,
                      fixed_last: int = 2, candidates: tuple[int, ...] = (2, 4, 6, 8, 10, 12)
                      ) -> dict[str, MetaTask]:
    """One ``MetaTask`` per setting (``name`` = model_prune-ratio) of a rank-measurements JSON file.

    ``objective`` is one task name or ``average`` (mean of the seven tasks). Features are the free
    layers' ranks scaled by the candidate range, as ``SearchSpace.features`` does.
    """
    if objective != "average" and objective not in TASKS:
        raise RankAdaptorError(f"objective {objective!r} unknown; use 'average' or one of {list(TASKS)}")
    records = read_json(path, "rank-measurements file")
    if not isinstance(records, list) or not records:
        raise RankAdaptorError(f"{path}: expected a list of records with name/rank_list/performance")
    by_name: dict[str, tuple[list, list]] = {}
    lo, hi = min(candidates), max(candidates)
    for i, rec in enumerate(records):
        _check_record(rec, i, path)
        perf = rec["performance"]
        if objective == "average":
            if not all(t in perf for t in TASKS):
                continue
            score = float(np.mean([perf[t] for t in TASKS]))
        elif objective in perf:
            score = float(perf[objective])
        else:
            continue
        ranks = np.asarray(rec["rank_list"], float)
        free = ranks[fixed_first:len(ranks) - fixed_last]
        xs, ys = by_name.setdefault(rec["name"], ([], []))
        if len(free) == 0 or (xs and len(xs[0]) != len(free)):
            raise RankAdaptorError(
                f"{path}: record {i} rank_list has {len(ranks)} layers, which leaves "
                f"{len(free)} free layers after the fixed first {fixed_first} and last {fixed_last}"
                + (f" while other records of setting {rec['name']!r} have {len(xs[0])}" if xs else "")
                + "; every record of a setting needs one rank per layer of that model")
        xs.append((free - lo) / (hi - lo))
        ys.append(score)
    if not by_name:
        wanted = "all seven task scores" if objective == "average" else f"a {objective!r} score"
        raise RankAdaptorError(f"{path}: no record has {wanted} in its performance; pass a measurements file "
                               "with those scores or choose another --objective")
    return {name: MetaTask(name, np.asarray(xs), np.asarray(ys)) for name, (xs, ys) in sorted(by_name.items())}


def _check_record(rec, i: int, path) -> None:
    """One measurements record: {"name": str, "rank_list": [rank, ...], "performance": {task: score}}."""
    shape = 'expected {"name": "...", "rank_list": [ranks], "performance": {task: accuracy}}'
    if not isinstance(rec, dict):
        raise RankAdaptorError(f"{path}: record {i} is {type(rec).__name__} {rec!r:.40}; {shape}")
    missing = [k for k in ("name", "rank_list", "performance") if k not in rec]
    if missing:
        raise RankAdaptorError(f"{path}: record {i} has no {', '.join(missing)}; {shape}")
    ranks, perf = rec["rank_list"], rec["performance"]
    if not isinstance(rec["name"], str):
        raise RankAdaptorError(f"{path}: record {i} name {rec['name']!r} must be a string (the setting's name)")
    if not isinstance(ranks, list) or not ranks or not all(_is_number(r) for r in ranks):
        raise RankAdaptorError(f"{path}: record {i} rank_list {ranks!r:.80} must be a non-empty list of numbers")
    if not isinstance(perf, dict) or not all(_is_number(v) for v in perf.values()):
        raise RankAdaptorError(f"{path}: record {i} performance {perf!r:.80} must map task names to numbers")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and bool(np.isfinite(x))


def _sgd_steps(net: torch.nn.Module, X: np.ndarray, y: np.ndarray, steps: int, lr: float,
               batch: int, rng: np.random.Generator, weight_decay: float = 1e-3) -> None:
    opt = AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    Xt = torch.as_tensor(X, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)[:, None]
    for _ in range(steps):
        pick = torch.as_tensor(rng.integers(0, len(y), min(batch, len(y))))
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(Xt[pick]), yt[pick]).backward()
        opt.step()


def pooled_pretrain(tasks: list[MetaTask], n_in: int, config: MLPConfig | None = None,
                    steps: int = 1500, lr: float = 3e-3, batch: int = 64, seed: int = 0) -> dict:
    """Plain pre-training on all source tasks pooled; returns a state dict."""
    config = config or MLPConfig()
    _need(tasks)
    X = np.concatenate([resample_features(t.X, n_in) for t in tasks])
    y = np.concatenate([t.standardised() for t in tasks])
    net = build_mlp(n_in, config.hidden, seed)
    _sgd_steps(net, X, y, steps, lr, batch, np.random.default_rng(seed), config.weight_decay)
    return copy.deepcopy(net.state_dict())


def reptile(tasks: list[MetaTask], n_in: int, config: MLPConfig | None = None, meta_iters: int = 300,
            inner_steps: int = 10, inner_lr: float = 3e-3, meta_lr: float = 0.5, batch: int = 16,
            seed: int = 0) -> dict:
    """First-order meta-learning (Reptile): theta += meta_lr * (adapted(theta, task) - theta)."""
    config = config or MLPConfig()
    _need(tasks)
    rng = np.random.default_rng(seed)
    data = [(resample_features(t.X, n_in), t.standardised()) for t in tasks]
    net = build_mlp(n_in, config.hidden, seed)
    theta = {k: v.clone() for k, v in net.state_dict().items()}
    for it in range(meta_iters):
        X, y = data[rng.integers(len(data))]
        net.load_state_dict(theta)
        _sgd_steps(net, X, y, inner_steps, inner_lr, batch, rng, config.weight_decay)
        eps = meta_lr * (1 - it / meta_iters)  # linearly annealed outer step, as in the Reptile paper
        theta = {k: theta[k] + eps * (v - theta[k]) for k, v in net.state_dict().items()}
    return theta


def adapt(init_state: dict | None, X: np.ndarray, y: np.ndarray, config: MLPConfig | None = None,
          epochs: int = 100, seed: int = 0) -> PerformanceModel:
    """Few-shot adaptation: fit a model on k target trials starting from ``init_state`` (None = scratch)."""
    X = np.asarray(X, float)
    model = PerformanceModel(X.shape[1], config, seed, init_state)
    return model.fit(X, y, epochs=epochs)


def _need(tasks: list[MetaTask]) -> None:
    if not tasks or any(len(t.y) < 2 for t in tasks):
        raise RankAdaptorError("meta-learning needs at least one source task with >= 2 measurements each")
