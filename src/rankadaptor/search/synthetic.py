"""Synthetic objectives whose optimum is known: for tests and for comparing search strategies.

Both are factories in the form ``rankadaptor search --objective`` imports
(``--objective rankadaptor.search.synthetic:additive --objective-arg noise=0.002``):
``additive(space, noise=..., seed=...)`` returns an objective; its ``truth(ranks)`` is the noise-free value.

* ``additive``: score = 0.1 Σ_u w_u log(1 + r_u) − penalty·mean(r) with unequal unit importances w
  (some layers matter far more than others). Under a parameter budget the optimum spreads rank
  in proportion to w; a model additive in log-rank can learn it exactly.
* ``neighbour_pairs``: the additive score plus interactions between neighbouring layers,
  0.1 Σ_j γ_j (ℓ_j − c)(ℓ_{j+1} − c), where ℓ_j is layer j's mean log(1 + rank) and γ_j ~ N(0, σ²):
  giving two adjacent layers rank together can be worth more (γ > 0) or less than the sum of parts.

Noise is a deterministic function of (objective seed, call seed, plan): a trial repeated on the
same seed returns the same value (as a deterministic recovery does on the CPU), another seed
draws new noise. ``common_noise`` adds a term that depends on the seed only (the part of real
trial-to-trial noise that common random numbers cancel).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rankadaptor.search.space import SearchSpace, plan_hash

FIDELITIES = ("screen", "full", "final")


class SyntheticObjective:
    """score = 0.1 Σ_u w_u log(1 + r_u) − penalty·mean(r) [+ neighbour interactions] + noise."""

    direction = "maximize"

    def __init__(self, space: SearchSpace, noise: float = 0.01, seed: int = 0, screen_noise: float | None = None,
                 interactions: float = 0.0, common_noise: float = 0.0):
        rng = np.random.default_rng(seed)
        self.space = space
        self.noise = float(noise)
        self.screen_noise = float(noise if screen_noise is None else screen_noise)
        self.common_noise = float(common_noise)
        self.weights = rng.gamma(2.0, 1.0, space.n_units)  # some units matter far more than others
        self.weights /= self.weights.sum()
        self.penalty = 0.02 / space.candidates[-1]
        self.interactions = float(interactions)
        self.gamma = rng.normal(0.0, 1.0, max(space.n_layers - 1, 0)) * self.interactions
        self.centre = np.log1p(space.fixed_rank)
        self.seed = seed
        self.calls = 0

    def truth(self, ranks: np.ndarray) -> np.ndarray:
        r = np.atleast_2d(np.asarray(ranks, float))
        value = 0.1 * (np.log1p(r) @ self.weights) - self.penalty * r.mean(1)
        if self.interactions:
            layer = np.stack([np.log1p(r[:, self.space.layer_of == j]).mean(1) for j in range(self.space.n_layers)],
                             axis=1) - self.centre
            value = value + 0.1 * (layer[:, :-1] * layer[:, 1:]) @ self.gamma
        return value

    def __call__(self, ranks, seed: int = 0, fidelity: str = "full") -> float:
        if fidelity not in FIDELITIES:
            raise ValueError(f"fidelity {fidelity!r} unknown; choose from {FIDELITIES}")
        self.calls += 1
        sd = self.screen_noise if fidelity == "screen" else self.noise
        own = np.random.default_rng([self.seed, int(seed), int(plan_hash(ranks), 16) % (1 << 62)]).normal()
        shared = np.random.default_rng([self.seed, int(seed), 7]).normal() if self.common_noise else 0.0
        return float(self.truth(ranks)[0] + sd * own + self.common_noise * shared)

    def identity(self) -> dict[str, Any]:
        return {"objective": "synthetic", "noise": self.noise, "seed": self.seed,
                "interactions": self.interactions, "common_noise": self.common_noise}


def additive(space: SearchSpace, noise: float = 0.01, seed: int = 0, screen_noise: float | None = None,
             common_noise: float = 0.0) -> SyntheticObjective:
    """Additive in log-rank: ``--objective rankadaptor.search.synthetic:additive``."""
    return SyntheticObjective(space, noise=noise, seed=seed, screen_noise=screen_noise, common_noise=common_noise)


def neighbour_pairs(space: SearchSpace, noise: float = 0.01, seed: int = 0, strength: float | None = None,
                    screen_noise: float | None = None, common_noise: float = 0.0) -> SyntheticObjective:
    """Additive plus pairwise interactions of neighbouring layers (sd ``strength``, default 2 / n_layers)."""
    strength = 2.0 / space.n_layers if strength is None else float(strength)
    return SyntheticObjective(space, noise=noise, seed=seed, screen_noise=screen_noise, interactions=strength,
                              common_noise=common_noise)


def oracle(objective: SyntheticObjective, space: SearchSpace, seed: int = 0, restarts: int = 5) -> np.ndarray:
    """The best plan of the space under ``objective.truth`` found by sampling plus trade hill climbing."""
    rng = np.random.default_rng(seed)
    pool = space.sample(20_000, rng)
    starts = pool[np.argsort(-objective.truth(pool))[:restarts]]
    best, best_v = None, -np.inf
    for cur in starts:
        cur_v = objective.truth(cur)[0]
        while True:
            nb = space.swaps(cur, max_pairs=50_000, rng=rng)
            v = objective.truth(nb)
            if not len(nb) or v.max() <= cur_v + 1e-15:
                break
            cur, cur_v = nb[int(np.argmax(v))], v.max()
        if cur_v > best_v:
            best, best_v = cur, cur_v
    return best
