"""The solution space of per-layer rank vectors (RankAdaptor §3.1), independent of torch.

A rank vector has one rank per decoder layer. Some layers are fixed (the paper keeps the unpruned
first 4 and last 2 layers at rank 8); the others take a value from ``candidates``. An optional
parameter budget constrains ``sum_i cost_i * rank_i`` (``cost_i`` = LoRA parameters per unit rank
of layer i, e.g. ``count_lora_params(model, RankPlan.uniform(n, 1))`` split per layer) to within
``budget * (1 ± tolerance)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from rankadaptor.errors import RankAdaptorError

PAPER_CANDIDATES = (2, 4, 6, 8, 10, 12)


@dataclass
class SearchSpace:
    n_layers: int
    candidates: tuple[int, ...] = PAPER_CANDIDATES
    fixed_first: int = 4
    fixed_last: int = 2
    fixed_rank: int = 8
    layer_costs: tuple[float, ...] | None = None
    budget: float | None = None
    tolerance: float = 0.05
    _free: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_layers < 1:
            raise RankAdaptorError(f"n_layers={self.n_layers} must be >= 1")
        cands = tuple(int(c) for c in self.candidates)
        if not cands or any(c <= 0 for c in cands):
            raise RankAdaptorError(
                f"rank candidates {list(self.candidates)} must be a non-empty list of positive integers "
                f"(e.g. {list(PAPER_CANDIDATES)})")
        self.candidates = tuple(sorted(set(cands)))
        if self.fixed_first < 0 or self.fixed_last < 0:
            raise RankAdaptorError(
                f"fixed_first={self.fixed_first}, fixed_last={self.fixed_last} must be >= 0 "
                "(--fixed-first / --fixed-last count the layers kept at the fixed rank)")
        if self.fixed_rank <= 0:
            raise RankAdaptorError(f"fixed_rank={self.fixed_rank} must be a positive rank (--fixed-rank, default 8)")
        if self.fixed_first + self.fixed_last >= self.n_layers:
            raise RankAdaptorError(
                f"fixed_first={self.fixed_first} + fixed_last={self.fixed_last} leaves no free layer out of "
                f"n_layers={self.n_layers}; lower them (e.g. --fixed-first 0 --fixed-last 0)")
        costs = np.ones(self.n_layers) if self.layer_costs is None else np.asarray(self.layer_costs, float)
        if costs.shape != (self.n_layers,) or np.any(costs <= 0):
            raise RankAdaptorError(
                f"layer_costs must hold {self.n_layers} positive numbers, got {self.layer_costs}")
        self.layer_costs = tuple(float(c) for c in costs)
        if not 0 <= self.tolerance < 1:
            raise RankAdaptorError(f"tolerance={self.tolerance} must be in [0, 1)")
        self._free = np.arange(self.fixed_first, self.n_layers - self.fixed_last)
        if self.budget is not None:
            if not np.isfinite(self.budget) or self.budget <= 0:
                raise RankAdaptorError(f"parameter budget {self.budget!r} must be a positive number of LoRA "
                                       "parameters (or 'uniform:R', or 'none' for no budget)")
            self._check_budget_reachable()

    # ----------------------------------------------------------------- basics
    @property
    def free_layers(self) -> np.ndarray:
        return self._free

    @property
    def n_free(self) -> int:
        return len(self._free)

    def uniform(self, rank: int | None = None) -> np.ndarray:
        """The uniform baseline (the fixed rank everywhere unless ``rank`` says otherwise)."""
        r = self.fixed_rank if rank is None else int(rank)
        vec = np.full(self.n_layers, self.fixed_rank, dtype=np.int64)
        vec[self._free] = r
        return vec

    def cost(self, ranks: np.ndarray) -> np.ndarray:
        return np.asarray(ranks, float) @ np.asarray(self.layer_costs)

    def uniform_budget(self, rank: int = 8) -> float:
        return float(self.cost(self.uniform(rank)))

    def budget_bounds(self) -> tuple[float, float]:
        if self.budget is None:
            return -np.inf, np.inf
        return self.budget * (1 - self.tolerance), self.budget * (1 + self.tolerance)

    def is_valid(self, ranks: np.ndarray) -> np.ndarray:
        """Row-wise validity of an (n, n_layers) array (or one vector)."""
        r = np.atleast_2d(np.asarray(ranks))
        ok = r.shape[1] == self.n_layers
        if not ok:
            return np.zeros(len(r), bool)
        fixed = np.setdiff1d(np.arange(self.n_layers), self._free)
        good = np.all(r[:, fixed] == self.fixed_rank, axis=1)
        good &= np.all(np.isin(r[:, self._free], self.candidates), axis=1)
        lo, hi = self.budget_bounds()
        c = self.cost(r)
        good &= (c >= lo - 1e-9) & (c <= hi + 1e-9)
        return good

    def validate(self, ranks: Sequence[int]) -> np.ndarray:
        vec = np.asarray(ranks, dtype=np.int64)
        if not self.is_valid(vec)[0]:
            raise RankAdaptorError(
                f"rank vector {vec.tolist()} is not in the space: needs {self.n_layers} layers, "
                f"layers outside {self._free[0]}..{self._free[-1]} at {self.fixed_rank}, free ranks in "
                f"{list(self.candidates)}, cost within {self.budget_bounds()}")
        return vec

    def _check_budget_reachable(self) -> None:
        costs = np.asarray(self.layer_costs)
        base = float(costs.sum() - costs[self._free].sum()) * self.fixed_rank
        lo_reach = base + costs[self._free].sum() * self.candidates[0]
        hi_reach = base + costs[self._free].sum() * self.candidates[-1]
        lo, hi = self.budget_bounds()
        if hi < lo_reach or lo > hi_reach:
            raise RankAdaptorError(
                f"parameter budget {self.budget:g} ± {self.tolerance:.0%} is unreachable: every rank vector "
                f"costs between {lo_reach:g} and {hi_reach:g}; choose a budget in that range, widen the "
                f"tolerance or change the rank candidates")

    def check_feasible(self) -> None:
        """Fail before a study exists when no rank vector of the candidates meets the budget.

        ``_check_budget_reachable`` only compares the budget with the cheapest and dearest vectors;
        the discrete candidates can still miss a narrow window between them.
        """
        try:
            self.sample(1, np.random.default_rng(0))
        except RankAdaptorError:
            raise RankAdaptorError(
                f"no rank vector with free-layer ranks in {list(self.candidates)} costs within the parameter budget "
                f"{self.budget:g} ± {self.tolerance:.0%}; widen --budget-tolerance, add rank candidates or "
                "choose another --budget") from None

    # --------------------------------------------------------------- sampling
    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """``n`` distinct-enough valid vectors: rejection sampling, then a budget repair if it is tight."""
        rng = np.random.default_rng(rng)
        out: list[np.ndarray] = []
        have = 0
        for _ in range(50):
            batch = self._random_batch(max(2 * (n - have), 256), rng)
            batch = batch[self.is_valid(batch)]
            if len(batch) < 0.05 * max(2 * (n - have), 256):
                # acceptance too low: project the draws onto the budget instead
                batch = self.repair(self._random_batch(max(2 * (n - have), 256), rng), rng)
            out.append(batch)
            have += len(batch)
            if have >= n:
                return np.concatenate(out)[:n]
        raise RankAdaptorError(
            f"could only sample {have} of {n} rank vectors under budget {self.budget:g} ± {self.tolerance:.0%} "
            f"with candidates {list(self.candidates)}; widen the tolerance")

    def _random_batch(self, n: int, rng: np.random.Generator) -> np.ndarray:
        cands = np.asarray(self.candidates)
        r = np.full((n, self.n_layers), self.fixed_rank, dtype=np.int64)
        r[:, self._free] = cands[rng.integers(0, len(cands), size=(n, self.n_free))]
        return r

    def latin_hypercube(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """Stratified design: each free layer sees every candidate about equally often; then repaired."""
        rng = np.random.default_rng(rng)
        cands = np.asarray(self.candidates)
        r = np.full((n, self.n_layers), self.fixed_rank, dtype=np.int64)
        for j in self._free:
            strata = (np.arange(n) * len(cands)) // n
            r[:, j] = cands[rng.permutation(strata)]
        return self.repair(r, rng)

    def repair(self, ranks: np.ndarray, rng: np.random.Generator | int | None = None,
               max_steps: int = 2000) -> np.ndarray:
        """Move free layers one candidate step at a time until every row meets the budget; drop failures."""
        rng = np.random.default_rng(rng)
        cands = np.asarray(self.candidates)
        idx = np.searchsorted(cands, np.asarray(ranks)[:, self._free])
        idx = np.clip(idx, 0, len(cands) - 1)
        costs = np.asarray(self.layer_costs)[self._free]
        base = (np.asarray(self.layer_costs).sum() - costs.sum()) * self.fixed_rank
        lo, hi = self.budget_bounds()
        rows = np.arange(len(idx))
        for _ in range(max_steps):
            c = base + cands[idx] @ costs
            direction = np.where(c > hi + 1e-9, -1, np.where(c < lo - 1e-9, 1, 0))
            bad = direction != 0
            if not bad.any():
                break
            movable = (idx + direction[:, None] >= 0) & (idx + direction[:, None] < len(cands))
            score = np.where(movable, rng.random(idx.shape), -1.0)
            col = np.argmax(score, axis=1)
            can = bad & (score[rows, col] >= 0)
            idx[rows[can], col[can]] += direction[can]
        out = np.full((len(idx), self.n_layers), self.fixed_rank, dtype=np.int64)
        out[:, self._free] = cands[idx]
        return out[self.is_valid(out)]

    def mutate(self, ranks: np.ndarray, n: int, rng: np.random.Generator | int | None = None,
               max_changes: int = 3) -> np.ndarray:
        """``n`` local neighbours of one vector: 1..max_changes free layers moved by ±1 candidate step."""
        rng = np.random.default_rng(rng)
        cands = np.asarray(self.candidates)
        base_idx = np.searchsorted(cands, np.asarray(ranks)[self._free])
        idx = np.tile(base_idx, (n, 1))
        k = rng.integers(1, max_changes + 1, size=n)
        for m in range(max_changes):
            cols = rng.integers(0, self.n_free, size=n)
            step = rng.choice([-1, 1], size=n)
            apply = k > m
            idx[apply, cols[apply]] = np.clip(idx[apply, cols[apply]] + step[apply], 0, len(cands) - 1)
        out = np.full((n, self.n_layers), self.fixed_rank, dtype=np.int64)
        out[:, self._free] = cands[idx]
        return out[self.is_valid(out)]

    # ---------------------------------------------------------- representation
    def features(self, ranks: np.ndarray) -> np.ndarray:
        """Free-layer ranks scaled to [0, 1] by the candidate range (the performance model's input)."""
        r = np.atleast_2d(np.asarray(ranks, float))[:, self._free]
        lo, hi = self.candidates[0], self.candidates[-1]
        return (r - lo) / (hi - lo) if hi > lo else r * 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"n_layers": self.n_layers, "candidates": list(self.candidates),
                "fixed_first": self.fixed_first, "fixed_last": self.fixed_last,
                "fixed_rank": self.fixed_rank, "layer_costs": list(self.layer_costs),
                "budget": self.budget, "tolerance": self.tolerance}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchSpace":
        d = dict(d)
        d["candidates"] = tuple(d["candidates"])
        d["layer_costs"] = tuple(d["layer_costs"]) if d.get("layer_costs") is not None else None
        return cls(**d)

    def param_names(self) -> list[str]:
        return [f"r{int(j):03d}" for j in self._free]

    def from_params(self, params: dict[str, Any]) -> np.ndarray:
        vec = self.uniform()
        for name, j in zip(self.param_names(), self._free):
            vec[j] = int(params[name])
        return vec

    def to_params(self, ranks: np.ndarray) -> dict[str, int]:
        return {name: int(ranks[j]) for name, j in zip(self.param_names(), self._free)}


def plan_hash(ranks: Sequence[int]) -> str:
    """A short stable identity for a rank vector (stored as a trial user attr to stop duplicates)."""
    return hashlib.sha1(",".join(str(int(r)) for r in ranks).encode()).hexdigest()[:16]


def to_rank_plan(ranks: Sequence[int], model: dict | None = None):
    """The recover part's ``RankPlan`` for this vector (what ``recover --ranks FILE`` reads)."""
    from rankadaptor.lora.ranks import RankPlan

    return RankPlan(ranks=[int(r) for r in ranks], model=model)
