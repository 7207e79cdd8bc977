"""The performance model (RankAdaptor §3.2): an MLP from normalised rank features to a score.

Targets are standardised inside the model so the same learning rate works for accuracies (~0.5)
and losses (~3). ``partial_fit`` continues from the current weights (online incremental learning);
when new data moves the target mean/std, the output layer is rescaled so predictions are unchanged
before the new steps. An ensemble of differently seeded (and bootstrapped) members gives a mean and
a spread, which the acquisition rule uses as uncertainty.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import stats

from rankadaptor.errors import RankAdaptorError

log = logging.getLogger(__name__)


@dataclass
class MLPConfig:
    hidden: tuple[int, ...] = (32, 32, 32)
    lr: float = 3e-3
    weight_decay: float = 1e-3
    epochs: int = 300
    partial_epochs: int = 100

    def __post_init__(self) -> None:
        if not self.hidden or any(int(h) <= 0 for h in self.hidden):
            raise RankAdaptorError(f"hidden sizes {self.hidden} must be positive integers, e.g. 32,32,32")
        if self.lr <= 0 or self.epochs < 1 or self.partial_epochs < 1:
            raise RankAdaptorError(f"lr={self.lr} must be > 0 and epochs={self.epochs}, "
                                   f"partial_epochs={self.partial_epochs} >= 1")


class AdamW:
    """Plain AdamW for the tiny MLP: torch.optim's first construction imports the compiler stack
    (~8 s per process on the shared CPU), which would dominate every search worker's start-up."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params]
        self.lr, self.wd, self.b1, self.b2, self.eps = lr, weight_decay, betas[0], betas[1], eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            p.mul_(1 - self.lr * self.wd)
            m.mul_(self.b1).add_(p.grad, alpha=1 - self.b1)
            v.mul_(self.b2).addcmul_(p.grad, p.grad, value=1 - self.b2)
            p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr)


def build_mlp(n_in: int, hidden: Sequence[int], seed: int) -> torch.nn.Sequential:
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [torch.nn.Linear(width, int(h)), torch.nn.ReLU()]
        width = int(h)
    layers.append(torch.nn.Linear(width, 1))
    net = torch.nn.Sequential(*layers)
    torch.random.set_rng_state(gen_state)
    return net


class PerformanceModel:
    """One MLP with standardised targets; fit / partial_fit / predict on feature arrays."""

    def __init__(self, n_in: int, config: MLPConfig | None = None, seed: int = 0,
                 init_state: dict | None = None):
        self.config = config or MLPConfig()
        self.seed = seed
        self.net = build_mlp(n_in, self.config.hidden, seed)
        if init_state is not None:
            self.net.load_state_dict(init_state)
        self.y_mean, self.y_std = 0.0, 1.0
        self._fitted = False
        self._opt: AdamW | None = None

    def _standardise(self, y: np.ndarray) -> tuple[float, float]:
        std = float(np.std(y))
        return float(np.mean(y)), std if std > 1e-12 else 1.0

    def _train(self, X: np.ndarray, y: np.ndarray, epochs: int) -> None:
        Xt = torch.as_tensor(X, dtype=torch.float32)
        yt = torch.as_tensor((y - self.y_mean) / self.y_std, dtype=torch.float32)[:, None]
        if self._opt is None:
            self._opt = AdamW(self.net.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)
        self.net.train()
        for _ in range(epochs):
            self._opt.zero_grad()
            loss = torch.nn.functional.mse_loss(self.net(Xt), yt)
            loss.backward()
            self._opt.step()

    def fit(self, X: np.ndarray, y: np.ndarray, epochs: int | None = None) -> "PerformanceModel":
        X, y = _check(X, y)
        self.y_mean, self.y_std = self._standardise(y)
        self._opt = None
        self._train(X, y, epochs or self.config.epochs)
        self._fitted = True
        return self

    def partial_fit(self, X: np.ndarray, y: np.ndarray, epochs: int | None = None) -> "PerformanceModel":
        """Continue training on (all trials so far); keeps predictions continuous across rescaling."""
        if not self._fitted:
            return self.fit(X, y, epochs)
        X, y = _check(X, y)
        mean, std = self._standardise(y)
        last = self.net[-1]
        with torch.no_grad():  # out_new = (out_old*s_old + m_old - m_new) / s_new
            last.weight.mul_(self.y_std / std)
            last.bias.mul_(self.y_std / std).add_((self.y_mean - mean) / std)
        self.y_mean, self.y_std = mean, std
        self._train(X, y, epochs or self.config.partial_epochs)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        self.net.eval()
        with torch.no_grad():
            out = self.net(torch.as_tensor(np.asarray(X, float), dtype=torch.float32))[:, 0].numpy()
        return out.astype(float) * self.y_std + self.y_mean


class Ensemble:
    """Several seeded members; members after the first train on bootstrap resamples for diversity."""

    def __init__(self, n_in: int, n_members: int = 5, config: MLPConfig | None = None, seed: int = 0,
                 init_state: dict | None = None, bootstrap: bool = True):
        if n_members < 1:
            raise RankAdaptorError(f"ensemble size {n_members} must be >= 1")
        self.config = config or MLPConfig()
        self.members = [PerformanceModel(n_in, self.config, seed + i,
                                         copy.deepcopy(init_state) if init_state else None)
                        for i in range(n_members)]
        self.rng = np.random.default_rng(seed)
        self.bootstrap = bootstrap

    def _resample(self, i: int, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if i == 0 or not self.bootstrap or len(y) < 4:
            return X, y
        pick = self.rng.integers(0, len(y), len(y))
        return X[pick], y[pick]

    def fit(self, X, y, epochs: int | None = None) -> "Ensemble":
        X, y = _check(X, y)
        for i, m in enumerate(self.members):
            m.fit(*self._resample(i, X, y), epochs)
        return self

    def partial_fit(self, X, y, epochs: int | None = None) -> "Ensemble":
        X, y = _check(X, y)
        for i, m in enumerate(self.members):
            m.partial_fit(*self._resample(i, X, y), epochs)
        return self

    def predict(self, X) -> tuple[np.ndarray, np.ndarray]:
        preds = np.stack([m.predict(X) for m in self.members])
        return preds.mean(0), preds.std(0)


def cv_spearman(X: np.ndarray, y: np.ndarray, folds: int = 5, config: MLPConfig | None = None,
                seed: int = 0, init_state: dict | None = None) -> float:
    """Out-of-fold Spearman correlation of a single model over ``folds`` folds (NaN when too few trials)."""
    X, y = _check(X, y)
    n = len(y)
    if n < max(folds, 6) or np.std(y) == 0:
        return float("nan")
    order = np.random.default_rng(seed).permutation(n)
    pred = np.empty(n)
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        model = PerformanceModel(X.shape[1], config, seed + k, init_state)
        pred[test] = model.fit(X[train], y[train]).predict(X[test])
    if np.std(pred) == 0:
        return 0.0
    return float(stats.spearmanr(pred, y).statistic)


def _check(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, float)
    y = np.asarray(y, float).ravel()
    if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
        raise RankAdaptorError(f"performance model needs X (n, d) and y (n,), got {X.shape} and {y.shape}")
    if not np.all(np.isfinite(y)):
        raise RankAdaptorError("performance model targets contain NaN/inf; drop failed trials first")
    return X, y
