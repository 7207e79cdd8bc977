"""Surrogates: what the search believes about plans it has not measured (RankAdaptor §3.2's "performance model").

A surrogate is a small class with ``fit(X, y, noise_sd=None, noise_dof=None)``, ``predict(X) -> (mean, std)``,
``sample_function(rng)`` (one posterior draw, for Thompson sampling) and ``acquisition`` (the one a
search uses with it unless told otherwise):
``X`` holds rank vectors of the space (one per row), ``y`` the measured values oriented so that
larger is better, ``noise_sd`` the noise the search measured by repeating plans (``search/noise.py``)
and ``noise_dof`` the degrees of freedom of that measurement (None: the noise is known exactly), and
``std`` is the surrogate's own uncertainty about the mean (what the acquisition explores), not the
noise of one more measurement. Register a new one in ``SURROGATES``.

* ``hierarchical`` (default; Thompson sampling): Bayesian linear model on log(1 + rank) per free
  unit whose weights shrink toward one shared weight (a concave per-unit effect that differs
  between layers), plus interactions of neighbouring layers; its prior variances (and the noise,
  until the search has measured it) by maximum marginal likelihood.
* ``ridge``: Bayesian linear regression on log(1 + rank) per free unit, prior precision
  set by evidence maximisation and, once the search has measured its noise, that noise as the
  observation noise. An additive model with one weight per layer, shrunk toward zero.
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
    acquisition = "ucb"  # the acquisition a search uses with this surrogate unless told otherwise

    def __init__(self, space: SearchSpace, seed: int = 0, min_noise: float = 0.03, iterations: int = 50):
        self.space, self.min_noise, self.iterations = space, float(min_noise), int(iterations)
        self._fitted = False

    def fit(self, X: np.ndarray, y: np.ndarray, noise_sd: float | None = None,
            noise_dof: int | None = None) -> "RidgeSurrogate":
        X, y = _check(X, y)
        phi = self.space.log_features(X)
        self.x_mean = phi.mean(0)
        self.y_mean = float(y.mean())
        self.y_sd = float(y.std()) or 1.0
        Phi, t = phi - self.x_mean, (y - self.y_mean) / self.y_sd
        n, p = Phi.shape
        eig = np.linalg.eigvalsh(Phi.T @ Phi).clip(min=0)
        # measured noise: known exactly it is the observation noise; measured from a few repeats it is pooled
        # with the fit's residuals, weighted by its degrees of freedom; without it the evidence decides, floored
        known, exact, dof = _standardised_noise(noise_sd, noise_dof, self.y_sd, self.min_noise)
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
            if not exact:  # MacKay's update, the repeats adding dof residuals of mean square known²
                resid = float(np.sum((t - Phi @ m) ** 2)) + dof * (known or 0.0) ** 2
                free = n - gamma + dof
                beta = float(min(free / max(resid, 1e-12), 1.0 / self.min_noise ** 2)) if free > 0 else \
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
        var = ((Phi @ self.S) * Phi).sum(1)
        return mean, np.sqrt(np.clip(var, 0, None)) * self.y_sd

    def sample_function(self, rng: np.random.Generator):
        """One draw of the weights from the posterior, as a function of plans (Thompson sampling)."""
        w = rng.multivariate_normal(self.m, self.S, method="cholesky")
        return lambda X: (self.space.log_features(X) - self.x_mean) @ w * self.y_sd + self.y_mean

    def describe(self) -> dict[str, Any]:
        return {"surrogate": self.name, "prior_precision": getattr(self, "alpha", None),
                "noise_sd_standardised": (1 / np.sqrt(self.beta)) if self._fitted else None}


class HierarchicalSurrogate:
    """Bayesian linear model on log-rank whose per-unit weights shrink toward a shared one, plus
    interactions of neighbouring layers; hyper-parameters by type-II maximum likelihood.

    Value ≈ Σ_u (μ + δ_u) z_u + Σ_j v_j (ℓ_j − ℓ̄_j)(ℓ_{j+1} − ℓ̄_{j+1}), with z_u the unit's scaled
    log(1 + rank) and ℓ_j its layer's mean. Priors μ ~ N(0, s_μ²), δ_u ~ N(0, s_δ²), v_j ~ N(0, s_v²):
    a hierarchical ("random effects") prior, the standard cure for one-weight-per-group models fitted on
    about as many points as groups (Gelman et al., Bayesian Data Analysis, ch. 5). Shrinking toward the
    shared weight, not toward zero, is what matters under a budget: a layer whose own weight is not yet
    learned still loses value when rank is taken from it (log-rank is concave), so the model does not
    strip unmeasured layers to feed measured ones. (s_μ, s_δ, s_v) and, until the search has measured
    it, the noise are set by maximising the marginal likelihood with weak log-normal hyper-priors
    (MacKay's evidence framework; Rasmussen & Williams §5.4), on n × n matrices (n = trials).
    """

    name = "hierarchical"
    acquisition = "thompson"  # a posterior over weights is cheap to draw from; no exploration weight to tune

    def __init__(self, space: SearchSpace, seed: int = 0, min_noise: float = 0.03, pairs: bool = True):
        self.space, self.min_noise, self.pairs = space, float(min_noise), bool(pairs)
        layers = space.layer_of[space.free_units]
        self._layers = np.unique(layers)
        self._members = [np.flatnonzero(layers == j) for j in self._layers]
        # pairs of neighbouring free layers (a pair with a fixed layer is linear in the free one's rank)
        self._pairs = [(a, a + 1) for a in range(len(self._layers) - 1)
                       if self._layers[a + 1] == self._layers[a] + 1] if self.pairs else []
        self._fitted = False

    def _layer_means(self, z: np.ndarray) -> np.ndarray:
        """ℓ: each free layer's mean scaled log-rank, one column per layer."""
        return np.stack([z[:, m].mean(1) for m in self._members], axis=1)

    def _design(self, X: np.ndarray) -> np.ndarray:
        z = self.space.log_features(X)
        cols = [z, z.sum(1, keepdims=True)]  # per-unit deviations δ, then the shared weight μ
        if self._pairs:
            ell = self._layer_means(z) - self._ell_mean
            cols.append(np.stack([ell[:, a] * ell[:, b] for a, b in self._pairs], axis=1))
        return np.concatenate(cols, axis=1)

    def _groups(self) -> np.ndarray:
        p = self.space.n_free
        return np.concatenate([np.zeros(p, int), [1], np.full(len(self._pairs), 2, int)])

    def fit(self, X: np.ndarray, y: np.ndarray, noise_sd: float | None = None,
            noise_dof: int | None = None) -> "HierarchicalSurrogate":
        from scipy import optimize

        X, y = _check(X, y)
        self._ell_mean = self._layer_means(self.space.log_features(X)).mean(0)
        phi = self._design(X)
        self.x_mean, self.y_mean = phi.mean(0), float(y.mean())
        self.y_sd = float(y.std()) or 1.0
        Phi, t = phi - self.x_mean, (y - self.y_mean) / self.y_sd
        groups = self._groups()
        # scale each group so that a unit prior variance means "this group alone explains the spread of y"
        scale = np.array([max(float(np.sum(Phi[:, groups == g].var(0))), 1e-9) if np.any(groups == g) else 1.0
                          for g in range(3)])
        # A noise measured from a few repeats is not known: its sample variance over noise_dof degrees of freedom
        # is one more likelihood term for the noise hyper-parameter (dof·s²/σ² ~ χ²_dof), so one or two repeats
        # that happened to agree cannot pin the noise near zero and let the weights chase noise.
        known, exact, dof = _standardised_noise(noise_sd, noise_dof, self.y_sd, self.min_noise)
        n_groups = 3 if self._pairs else 2
        # hyper-prior: log prior variances ~ N(log 0.5, 1.5²) per group (weakly "the groups share the
        # spread"), log noise variance ~ N(log 0.25, 1.5²) (an eighth to a half of the spread is noise)
        prior_mean = np.array([np.log(0.5)] * n_groups + [np.log(0.25)])

        def neg_log_post(theta: np.ndarray) -> float:
            var = np.exp(theta[:n_groups]) / scale[:n_groups]
            noise_var = known ** 2 if exact else float(np.exp(theta[-1]))
            K = (Phi * var[groups]) @ Phi.T + noise_var * np.eye(len(t))
            try:
                L = np.linalg.cholesky(K)
            except np.linalg.LinAlgError:
                return 1e10
            a = np.linalg.solve(L, t)
            nll = 0.5 * a @ a + float(np.log(np.diag(L)).sum())
            if dof:  # -log p(s² | σ²) of the repeats, up to a constant
                nll += 0.5 * dof * (theta[-1] + known ** 2 / noise_var)
            return nll + 0.5 * float(np.sum((theta - prior_mean) ** 2)) / 1.5 ** 2

        res = optimize.minimize(neg_log_post, prior_mean, method="L-BFGS-B",
                                bounds=[(-12.0, 4.0)] * n_groups + [(2 * np.log(self.min_noise), 1.0)])
        theta = res.x
        self.prior_var = np.exp(theta[:n_groups]) / scale[:n_groups]
        self.noise_var = known ** 2 if exact else float(np.exp(theta[-1]))
        d = self.prior_var[groups]
        # posterior of the weights: S = (D⁻¹ + ΦᵀΦ/σ²)⁻¹, m = S Φᵀ t / σ²
        S = np.linalg.inv(np.diag(1.0 / d) + Phi.T @ Phi / self.noise_var)
        self.S, self.m = (S + S.T) / 2, S @ Phi.T @ t / self.noise_var
        self.hyper = {"shared_var": float(theta[1]), "unit_var": float(theta[0]),
                      "pair_var": float(theta[2]) if self._pairs else None,
                      "noise_sd_standardised": float(np.sqrt(self.noise_var))}
        self._fitted = True
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self._fitted:
            raise RankAdaptorError("the hierarchical surrogate must be fitted before it predicts")
        Phi = self._design(X) - self.x_mean
        var = ((Phi @ self.S) * Phi).sum(1)
        return Phi @ self.m * self.y_sd + self.y_mean, np.sqrt(np.clip(var, 0, None)) * self.y_sd

    def sample_function(self, rng: np.random.Generator):
        """One draw of the weights from the posterior, as a function of plans (Thompson sampling)."""
        w = rng.multivariate_normal(self.m, self.S, method="eigh")
        return lambda X: (self._design(X) - self.x_mean) @ w * self.y_sd + self.y_mean

    def describe(self) -> dict[str, Any]:
        return {"surrogate": self.name, **(self.hyper if self._fitted else {})}


class MLPSurrogate:
    """The paper's MLP ensemble; refitted incrementally (``partial_fit``) after its first fit."""

    name = "mlp"
    acquisition = "ucb"

    def __init__(self, space: SearchSpace, seed: int = 0, mlp: MLPConfig | None = None, ensemble_size: int = 5,
                 init_state: dict | None = None):
        if ensemble_size < 1:
            raise RankAdaptorError(f"ensemble size {ensemble_size} must be >= 1")
        self.space, self.seed, self.mlp = space, int(seed), mlp or MLPConfig()
        self.ensemble_size, self.init_state = int(ensemble_size), init_state
        self.ensemble: Ensemble | None = None

    def fit(self, X: np.ndarray, y: np.ndarray, noise_sd: float | None = None,
            noise_dof: int | None = None) -> "MLPSurrogate":
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

    def sample_function(self, rng: np.random.Generator):
        """One ensemble member, as a function of plans (Thompson sampling over the ensemble)."""
        member = self.ensemble.members[int(rng.integers(len(self.ensemble.members)))]
        return lambda X: member.predict(self.space.features(X))

    def describe(self) -> dict[str, Any]:
        return {"surrogate": self.name, "hidden": list(self.mlp.hidden), "ensemble": self.ensemble_size,
                "meta_prior": self.init_state is not None}


SURROGATES: dict[str, type] = {"hierarchical": HierarchicalSurrogate, "ridge": RidgeSurrogate, "mlp": MLPSurrogate}
DEFAULT_SURROGATE = "hierarchical"  # benchmarks/results/search_compare.md


def default_acquisition(surrogate: str) -> str:
    """The acquisition a search uses with ``surrogate`` unless told otherwise (ucb for an unknown name,
    which the caller's own check refuses)."""
    return SURROGATES[surrogate].acquisition if surrogate in SURROGATES else "ucb"


def make_surrogate(name: str, space: SearchSpace, seed: int = 0, **options):
    """The surrogate registered as ``name``; options a surrogate does not take are dropped."""
    if name not in SURROGATES:
        raise RankAdaptorError(f"surrogate {name!r} unknown; choose from {sorted(SURROGATES)}")
    import inspect

    cls = SURROGATES[name]
    accepted = set(inspect.signature(cls.__init__).parameters)
    return cls(space, seed=seed, **{k: v for k, v in options.items() if k in accepted})


def oof_predictions(name: str, space: SearchSpace, X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0,
                    noise_sd: float | None = None, noise_dof: int | None = None, **options) -> np.ndarray:
    """Out-of-fold predictions of a fresh surrogate per fold (how well it predicts plans it has not seen)."""
    order = np.random.default_rng(seed).permutation(len(y))
    pred = np.empty(len(y))
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        model = make_surrogate(name, space, seed + k, **options).fit(X[train], y[train], noise_sd, noise_dof)
        pred[test] = model.predict(X[test])[0]
    return pred


def _standardised_noise(noise_sd: float | None, noise_dof: int | None, y_sd: float,
                        min_noise: float) -> tuple[float | None, bool, float]:
    """(measured noise in units of y's spread, floored at ``min_noise``; whether it is known exactly, i.e. no
    ``noise_dof`` was given; its degrees of freedom, 0 when exact or not measured)."""
    known = None if noise_sd is None or not np.isfinite(noise_sd) else max(noise_sd / y_sd, min_noise)
    exact = known is not None and noise_dof is None
    return known, exact, float(noise_dof or 0) if known is not None else 0.0


def _check(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = np.atleast_2d(np.asarray(X, float))
    y = np.asarray(y, float).ravel()
    if len(X) != len(y) or len(y) == 0:
        raise RankAdaptorError(f"a surrogate needs X (n, units) and y (n,), got {X.shape} and {y.shape}")
    if not np.all(np.isfinite(y)):
        raise RankAdaptorError("surrogate targets contain NaN/inf; drop failed trials first")
    return X, y
