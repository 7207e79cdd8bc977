"""Surrogates: what the search believes about plans it has not measured (RankAdaptor §3.2's "performance model").

A surrogate is a small class with ``fit(X, y, noise_sd=None)`` and ``predict(X) -> (mean, std)``:
``X`` holds rank vectors of the space (one per row), ``y`` the measured values oriented so that
larger is better, ``noise_sd`` the noise the search measured by repeating plans (``search/noise.py``),
and ``std`` is the surrogate's own uncertainty about the mean (what the acquisition explores), not
the noise of one more measurement. Register a new one in ``SURROGATES``.

* ``ridge`` (default): Bayesian linear regression on log(1 + rank) per free unit, prior precision
  set by evidence maximisation and, once the search has measured its noise, that noise as the
  observation noise. An additive model with one weight per layer: the shape the measured gains
  have had (design §3), and learnable from as many trials as there are free layers.
* ``mlp``: the paper's MLP ensemble (32-32-32-1, online incremental refits, optional meta-learned
  prior from ``search/meta.py``); the ensemble's spread is its uncertainty.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from rankadaptor.errors import RankAdaptorError
from rankadaptor.search.perf_model import Ensemble, MLPConfig
from rankadaptor.search.space import SearchSpace

log = logging.getLogger(__name__)


class RidgeSurrogate:
    """Additive Bayesian ridge on log-rank features (MacKay's evidence updates for the prior precision)."""

    name = "ridge"

    def __init__(self, space: SearchSpace, seed: int = 0, min_noise: float = 0.03, iterations: int = 50):
        self.space, self.min_noise, self.iterations = space, float(min_noise), int(iterations)
        self._fitted = False

    def fit(self, X: np.ndarray, y: np.ndarray, noise_sd: float | None = None) -> "RidgeSurrogate":
        X, y = _check(X, y)
        phi = self.space.log_features(X)
        self.x_mean = phi.mean(0)
        self.y_mean = float(y.mean())
        self.y_sd = float(y.std()) or 1.0
        Phi, t = phi - self.x_mean, (y - self.y_mean) / self.y_sd
        n, p = Phi.shape
        eig = np.linalg.eigvalsh(Phi.T @ Phi).clip(min=0)
        # measured noise (standardised) is the observation noise; without it the evidence decides, floored
        known = None if noise_sd is None or not np.isfinite(noise_sd) else max(noise_sd / self.y_sd, self.min_noise)
        beta = 1.0 / (known ** 2 if known is not None else 0.25)
        # alpha0: the prior under which the plans' effects spread as much as the measured values do. The
        # evidence may make the prior broader but at most 10x narrower: left alone it collapses to
        # "no signal, no uncertainty" when the noise is large, and the search would stop exploring.
        alpha0 = max(float(np.sum(Phi.var(0))), 1e-6)
        alpha = alpha0
        for _ in range(self.iterations):
            A = alpha * np.eye(p) + beta * Phi.T @ Phi
            S = np.linalg.inv(A)
            m = beta * S @ Phi.T @ t
            gamma = float(np.sum(beta * eig / (alpha + beta * eig)))
            alpha = float(np.clip(gamma / max(m @ m, 1e-12), 1e-3 * alpha0, 10 * alpha0))
            if known is None:
                resid = float(np.sum((t - Phi @ m) ** 2))
                beta = float(min((n - gamma) / max(resid, 1e-12), 1.0 / self.min_noise ** 2)) if n > gamma else \
                    1.0 / self.min_noise ** 2
        S = np.linalg.inv(alpha * np.eye(p) + beta * Phi.T @ Phi)  # the posterior at the final precisions
        self.S, self.m, self.alpha, self.beta = S, beta * S @ Phi.T @ t, alpha, beta
        self._fitted = True
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self._fitted:
            raise RankAdaptorError("the ridge surrogate must be fitted before it predicts")
        Phi = self.space.log_features(X) - self.x_mean
        mean = Phi @ self.m * self.y_sd + self.y_mean
        var = np.einsum("ij,jk,ik->i", Phi, self.S, Phi)
        return mean, np.sqrt(np.clip(var, 0, None)) * self.y_sd

    def describe(self) -> dict[str, Any]:
        return {"surrogate": self.name, "prior_precision": getattr(self, "alpha", None),
                "noise_sd_standardised": (1 / np.sqrt(self.beta)) if self._fitted else None}


class MLPSurrogate:
    """The paper's MLP ensemble; refitted incrementally (``partial_fit``) after its first fit."""

    name = "mlp"

    def __init__(self, space: SearchSpace, seed: int = 0, mlp: MLPConfig | None = None, ensemble_size: int = 5,
                 init_state: dict | None = None):
        if ensemble_size < 1:
            raise RankAdaptorError(f"ensemble size {ensemble_size} must be >= 1")
        self.space, self.seed, self.mlp = space, int(seed), mlp or MLPConfig()
        self.ensemble_size, self.init_state = int(ensemble_size), init_state
        self.ensemble: Ensemble | None = None

    def fit(self, X: np.ndarray, y: np.ndarray, noise_sd: float | None = None) -> "MLPSurrogate":
        X, y = _check(X, y)
        feats = self.space.features(X)
        if self.ensemble is None:  # online incremental learning (RankAdaptor §3.3): later fits continue
            self.ensemble = Ensemble(feats.shape[1], self.ensemble_size, self.mlp, self.seed, self.init_state)
            self.ensemble.fit(feats, y)
        else:
            self.ensemble.partial_fit(feats, y)
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.ensemble is None:
            raise RankAdaptorError("the MLP surrogate must be fitted before it predicts")
        return self.ensemble.predict(self.space.features(X))

    def describe(self) -> dict[str, Any]:
        return {"surrogate": self.name, "hidden": list(self.mlp.hidden), "ensemble": self.ensemble_size,
                "meta_prior": self.init_state is not None}


SURROGATES: dict[str, type] = {"ridge": RidgeSurrogate, "mlp": MLPSurrogate}
DEFAULT_SURROGATE = "ridge"  # benchmarks/results/search_compare.md: ahead of the MLP at 25 trials


def make_surrogate(name: str, space: SearchSpace, seed: int = 0, **options):
    """The surrogate registered as ``name``; options a surrogate does not take are dropped."""
    if name not in SURROGATES:
        raise RankAdaptorError(f"surrogate {name!r} unknown; choose from {sorted(SURROGATES)}")
    import inspect

    cls = SURROGATES[name]
    accepted = set(inspect.signature(cls.__init__).parameters)
    return cls(space, seed=seed, **{k: v for k, v in options.items() if k in accepted})


def oof_predictions(name: str, space: SearchSpace, X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0,
                    noise_sd: float | None = None, **options) -> np.ndarray:
    """Out-of-fold predictions of a fresh surrogate per fold (how well it predicts plans it has not seen)."""
    order = np.random.default_rng(seed).permutation(len(y))
    pred = np.empty(len(y))
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        model = make_surrogate(name, space, seed + k, **options).fit(X[train], y[train], noise_sd)
        pred[test] = model.predict(X[test])[0]
    return pred


def _check(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = np.atleast_2d(np.asarray(X, float))
    y = np.asarray(y, float).ravel()
    if len(X) != len(y) or len(y) == 0:
        raise RankAdaptorError(f"a surrogate needs X (n, units) and y (n,), got {X.shape} and {y.shape}")
    if not np.all(np.isfinite(y)):
        raise RankAdaptorError("surrogate targets contain NaN/inf; drop failed trials first")
    return X, y
