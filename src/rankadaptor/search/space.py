"""The solution space of rank vectors (RankAdaptor §3.1), per layer or per module, independent of torch.

A rank vector holds one integer rank per *unit*. With ``granularity="layer"`` (the paper's) a unit
is a decoder layer and all its LoRA modules share the rank; with ``granularity="module"`` every
targeted module (q, k, v, o, gate, up, down of every layer) is its own unit, ordered layer by layer.
The units of the first ``fixed_first`` and last ``fixed_last`` layers keep ``fixed_rank`` (the
paper keeps the unpruned first 4 and last 2 layers at rank 8); the others take a value from
``candidates``. An optional parameter budget constrains ``sum_u cost_u * rank_u`` (``cost_u`` =
LoRA parameters per unit of rank, ``rankadaptor.lora.ranks.module_costs``) to within
``budget * (1 ± tolerance)``.

``to_rank_plan(vector)`` turns a vector into the ``RankPlan`` that ``recover`` trains; that and
``param_names``/``distributions`` are all an objective or a sampler needs to know about a space.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from rankadaptor.errors import RankAdaptorError

PAPER_CANDIDATES = (2, 4, 6, 8, 10, 12)  # RankAdaptor §4.1
MODULE_CANDIDATES = tuple(range(0, 33))  # per module: 0 (module left out) .. 32
GRANULARITIES = ("layer", "module")


@dataclass
class SearchSpace:
    n_layers: int
    candidates: tuple[int, ...] | None = None  # None: PAPER_CANDIDATES per layer, MODULE_CANDIDATES per module
    fixed_first: int = 4
    fixed_last: int = 2
    fixed_rank: int = 8
    layer_costs: tuple[float, ...] | None = None  # per layer (derived from module_costs when those are given)
    budget: float | None = None
    tolerance: float = 0.01
    granularity: str = "layer"
    module_names: tuple[tuple[str, ...], ...] | None = None  # per layer: full names of its targeted modules
    module_costs: tuple[tuple[float, ...], ...] | None = None  # per layer, per module
    _unit_costs: np.ndarray = field(init=False, repr=False, compare=False)
    _free: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise RankAdaptorError(f"granularity {self.granularity!r} unknown; choose from {list(GRANULARITIES)}")
        if self.n_layers < 1:
            raise RankAdaptorError(f"n_layers={self.n_layers} must be >= 1")
        self._check_candidates()
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
        self._set_units()
        if not 0 <= self.tolerance < 1:
            raise RankAdaptorError(f"tolerance={self.tolerance} must be in [0, 1)")
        if self.budget is not None:
            if not np.isfinite(self.budget) or self.budget <= 0:
                raise RankAdaptorError(f"parameter budget {self.budget!r} must be a positive number of LoRA "
                                       "parameters (or 'uniform:R', or 'none' for no budget)")
            self._check_budget_reachable()

    def _check_candidates(self) -> None:
        default = PAPER_CANDIDATES if self.granularity == "layer" else MODULE_CANDIDATES
        cands = tuple(int(c) for c in (default if self.candidates is None else self.candidates))
        lowest = 1 if self.granularity == "layer" else 0  # a module may be left out (rank 0), a layer may not
        if not cands or any(c < lowest for c in cands) or max(cands) < 1:
            what = "positive integers" if lowest else "integers >= 0 with at least one positive"
            raise RankAdaptorError(f"rank candidates {list(self.candidates)} must be a non-empty list of {what} "
                                   f"(e.g. {list(PAPER_CANDIDATES)})")
        self.candidates = tuple(sorted(set(cands)))

    def _set_units(self) -> None:
        """Unit costs (flat, layer-major) and the indices of the free units."""
        if self.granularity == "module":
            if self.module_names is None or self.module_costs is None:
                raise RankAdaptorError("a per-module space needs module_names and module_costs per layer "
                                       "(rankadaptor.lora.ranks.module_costs(model) gives both)")
            self.module_names = tuple(tuple(str(n) for n in layer) for layer in self.module_names)
            self.module_costs = tuple(tuple(float(c) for c in layer) for layer in self.module_costs)
            shapes = [len(layer) for layer in self.module_names]
            if (len(self.module_names) != self.n_layers or shapes != [len(c) for c in self.module_costs]
                    or min(shapes) < 1):
                raise RankAdaptorError(f"module_names and module_costs must list the same modules for each of the "
                                       f"{self.n_layers} layers")
            costs = np.asarray([c for layer in self.module_costs for c in layer], float)
            derived = tuple(float(sum(layer)) for layer in self.module_costs)
            if self.layer_costs is not None and not np.allclose(self.layer_costs, derived):
                raise RankAdaptorError("layer_costs disagree with the sums of module_costs; give only module_costs")
            self.layer_costs = derived
            layer_of = np.repeat(np.arange(self.n_layers), shapes)
        else:
            costs = np.ones(self.n_layers) if self.layer_costs is None else np.asarray(self.layer_costs, float)
            if costs.shape != (self.n_layers,):
                raise RankAdaptorError(f"layer_costs must hold {self.n_layers} positive numbers, got {self.layer_costs}")
            self.layer_costs = tuple(float(c) for c in costs)
            layer_of = np.arange(self.n_layers)
        if np.any(costs <= 0) or not np.all(np.isfinite(costs)):
            raise RankAdaptorError(f"LoRA costs per unit rank must be positive numbers, got {costs.tolist()[:8]}...")
        self._unit_costs = costs
        self._layer_of = layer_of
        self._free = np.flatnonzero((layer_of >= self.fixed_first) & (layer_of < self.n_layers - self.fixed_last))

    # ----------------------------------------------------------------- basics
    @property
    def n_units(self) -> int:
        return len(self._unit_costs)

    @property
    def free_units(self) -> np.ndarray:
        return self._free

    @property
    def free_layers(self) -> np.ndarray:
        return np.unique(self._layer_of[self._free])

    @property
    def n_free(self) -> int:
        return len(self._free)

    @property
    def unit_costs(self) -> np.ndarray:
        return self._unit_costs

    @property
    def layer_of(self) -> np.ndarray:
        """Decoder layer of every unit."""
        return self._layer_of

    def uniform(self, rank: int | None = None) -> np.ndarray:
        """The uniform baseline (the fixed rank everywhere unless ``rank`` says otherwise)."""
        r = self.fixed_rank if rank is None else int(rank)
        vec = np.full(self.n_units, self.fixed_rank, dtype=np.int64)
        vec[self._free] = r
        return vec

    def cost(self, ranks: np.ndarray) -> np.ndarray:
        return np.asarray(ranks, float) @ self._unit_costs

    def uniform_budget(self, rank: int = 8) -> float:
        return float(self.cost(self.uniform(rank)))

    def budget_bounds(self) -> tuple[float, float]:
        if self.budget is None:
            return -np.inf, np.inf
        return self.budget * (1 - self.tolerance), self.budget * (1 + self.tolerance)

    def is_valid(self, ranks: np.ndarray) -> np.ndarray:
        """Row-wise validity of an (n, n_units) array (or one vector)."""
        r = np.atleast_2d(np.asarray(ranks))
        if r.shape[1] != self.n_units:
            return np.zeros(len(r), bool)
        fixed = np.setdiff1d(np.arange(self.n_units), self._free)
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
                f"rank vector {vec.tolist()} is not in the space: needs {self.n_units} {self.granularity} ranks, "
                f"units of layers outside {self.fixed_first}..{self.n_layers - self.fixed_last - 1} at "
                f"{self.fixed_rank}, free ranks in {list(self.candidates)}, cost within {self.budget_bounds()}")
        return vec

    def _cost_range(self) -> tuple[float, float]:
        base = float(self._unit_costs.sum() - self._unit_costs[self._free].sum()) * self.fixed_rank
        free = float(self._unit_costs[self._free].sum())
        return base + free * self.candidates[0], base + free * self.candidates[-1]

    def _check_budget_reachable(self) -> None:
        lo_reach, hi_reach = self._cost_range()
        lo, hi = self.budget_bounds()
        if hi < lo_reach:
            raise RankAdaptorError(
                f"parameter budget {self.budget:g} ± {self.tolerance:.0%} is unreachable: the cheapest plan (every free "
                f"{self.granularity} at the smallest candidate {self.candidates[0]}) costs {lo_reach:g}; raise --budget "
                f"or lower the smallest rank candidate (--candidates)")
        if lo > hi_reach:
            raise RankAdaptorError(
                f"parameter budget {self.budget:g} ± {self.tolerance:.0%} is unreachable: the dearest plan (every free "
                f"{self.granularity} at the largest candidate {self.candidates[-1]}) costs {hi_reach:g}; lower --budget "
                f"or raise the largest rank candidate (--candidates)")

    def check_feasible(self) -> None:
        """Fail before a study exists when no rank vector of the candidates meets the budget.

        ``_check_budget_reachable`` only compares the budget with the cheapest and dearest vectors;
        the discrete candidates can still miss a narrow window between them.
        """
        try:
            self.sample(1, np.random.default_rng(0))
        except RankAdaptorError:
            raise RankAdaptorError(
                f"no rank vector with free-{self.granularity} ranks in {list(self.candidates)} costs within the "
                f"parameter budget "
                f"{self.budget:g} ± {self.tolerance:.0%}; widen --budget-tolerance, add rank candidates (a finer "
                "step) or choose another --budget") from None

    # --------------------------------------------------------------- sampling
    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """``n`` valid vectors, close to uniformly distributed over the budget band.

        Each free unit is drawn independently with probabilities tilted (∝ exp(θ·cost·rank)) so that
        the expected cost is the budget, then vectors outside the band are rejected: inside a narrow
        band the tilt is nearly constant, so the accepted vectors are close to uniform over the valid
        plans, with no pile-up at either edge. A budget repair with a random target inside the band
        tops up when acceptance is too low.
        """
        rng = np.random.default_rng(rng)
        out: list[np.ndarray] = []
        have = 0
        for _ in range(50):
            want = max(2 * (n - have), 256)
            batch = self._tilted_batch(want, rng)
            batch = batch[self.is_valid(batch)]
            if len(batch) < 0.02 * want:
                batch = np.concatenate([batch, self.repair(self._tilted_batch(want, rng), rng)])
            out.append(batch)
            have += len(batch)
            if have >= n:
                return np.concatenate(out)[:n]
        raise RankAdaptorError(
            f"could only sample {have} of {n} rank vectors under budget {self.budget:g} ± {self.tolerance:.0%} "
            f"with candidates {list(self.candidates)}; widen the tolerance")

    def _tilted_batch(self, n: int, rng: np.random.Generator) -> np.ndarray:
        cands = np.asarray(self.candidates)
        cum = np.cumsum(self._tilted_probs(), axis=1)
        u = rng.random((n, self.n_free))
        idx = np.empty((n, self.n_free), dtype=np.int64)
        for j in range(self.n_free):
            idx[:, j] = np.minimum(np.searchsorted(cum[j], u[:, j], side="right"), len(cands) - 1)
        r = np.full((n, self.n_units), self.fixed_rank, dtype=np.int64)
        r[:, self._free] = cands[idx]
        return r

    def _tilted_probs(self) -> np.ndarray:
        """(n_free, n_candidates) draw probabilities whose expected cost is the budget (uniform without one)."""
        if getattr(self, "_probs", None) is not None:
            return self._probs
        cands = np.asarray(self.candidates, float)
        costs = self._unit_costs[self._free]
        scale = cands[-1] - cands[0] or 1.0

        def probs(theta: float) -> np.ndarray:
            logits = theta * np.outer(costs / costs.mean(), (cands - cands[0]) / scale)
            p = np.exp(logits - logits.max(1, keepdims=True))
            return p / p.sum(1, keepdims=True)

        theta = 0.0
        if self.budget is not None:
            base = float(self._unit_costs.sum() - costs.sum()) * self.fixed_rank
            expected = lambda t: base + float(((probs(t) * cands).sum(1) * costs).sum())  # noqa: E731
            lo, hi = -60.0, 60.0
            for _ in range(60):  # the expected cost rises with theta: bisect for the budget
                theta = (lo + hi) / 2
                lo, hi = (theta, hi) if expected(theta) < self.budget else (lo, theta)
        self._probs = probs(theta)
        return self._probs

    def latin_hypercube(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """Stratified design: each free unit sees every candidate about equally often; then repaired.

        Draw it once per study and take its rows in order (``RankAdaptorSampler`` does): a design
        redrawn per proposal is no more stratified than random sampling.
        """
        rng = np.random.default_rng(rng)
        cands = np.asarray(self.candidates)
        r = np.full((n, self.n_units), self.fixed_rank, dtype=np.int64)
        strata = (np.arange(n) * len(cands)) // n
        for j in self._free:
            r[:, j] = cands[rng.permutation(strata)]
        return self.repair(r, rng)

    def repair(self, ranks: np.ndarray, rng: np.random.Generator | int | None = None,
               max_steps: int = 4000) -> np.ndarray:
        """Move free units one candidate step at a time until every row meets the budget; drop failures.

        Each row walks towards its own target cost drawn uniformly inside the budget band and stops
        once it has reached it, so repaired plans spread over the band instead of piling up at the
        edge nearest to where they started (stopping at the first valid cost would do that).
        """
        rng = np.random.default_rng(rng)
        cands = np.asarray(self.candidates)
        ranks = np.atleast_2d(np.asarray(ranks))
        idx = np.clip(np.searchsorted(cands, ranks[:, self._free]), 0, len(cands) - 1)
        costs = self._unit_costs[self._free]
        base = float(self._unit_costs.sum() - costs.sum()) * self.fixed_rank
        lo, hi = self.budget_bounds()
        if self.budget is None:
            target = base + cands[idx] @ costs
        else:
            target = rng.uniform(lo, hi, len(idx))
        c = base + cands[idx] @ costs
        direction = np.sign(target - c).astype(int)
        direction[(c >= lo - 1e-9) & (c <= hi + 1e-9)] = 0  # valid rows stay as they are
        rows = np.arange(len(idx))
        for _ in range(max_steps):
            c = base + cands[idx] @ costs
            active = (direction != 0) & (direction * (target - c) > 0)  # not yet at its target
            if not active.any():
                break
            nxt = idx + direction[:, None]
            movable = (nxt >= 0) & (nxt < len(cands))
            # prefer steps that cannot jump over the whole band (possible when one step costs more than it)
            new_cost = c[:, None] + costs * (cands[np.clip(nxt, 0, len(cands) - 1)] - cands[idx])
            fits = movable & (new_cost >= lo - 1e-9) & (new_cost <= hi + 1e-9)
            score = np.where(movable, rng.random(idx.shape), -1.0) + np.where(fits, 1.0, 0.0)
            col = np.argmax(score, axis=1)
            inside = (c >= lo - 1e-9) & (c <= hi + 1e-9)
            can = active & (score[rows, col] >= 0) & (~inside | fits[rows, col])  # never step out of the band
            if not can.any():
                break
            idx[rows[can], col[can]] += direction[can]
        out = np.full((len(idx), self.n_units), self.fixed_rank, dtype=np.int64)
        out[:, self._free] = cands[idx]
        return out[self.is_valid(out)]

    def project(self, ranks: Sequence[int], rng: np.random.Generator | int | None = 0) -> np.ndarray | None:
        """The nearest vector of the space: free ranks snapped to the candidates, then repaired into the budget."""
        vec = np.asarray(ranks, float).copy()
        if vec.shape != (self.n_units,):
            raise RankAdaptorError(f"a rank vector of this space has {self.n_units} entries, got {vec.shape}")
        cands = np.asarray(self.candidates)
        snapped = self.uniform()
        snapped[self._free] = cands[np.abs(vec[self._free, None] - cands[None]).argmin(1)]
        if self.is_valid(snapped)[0]:
            return snapped
        repaired = self.repair(snapped[None], rng)
        return repaired[0] if len(repaired) else None

    def mutate(self, ranks: np.ndarray, n: int, rng: np.random.Generator | int | None = None,
               max_changes: int = 3) -> np.ndarray:
        """``n`` local neighbours of one vector: 1..max_changes free units moved by ±1 candidate step."""
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
        out = np.full((n, self.n_units), self.fixed_rank, dtype=np.int64)
        out[:, self._free] = cands[idx]
        return out[self.is_valid(out)]

    def swaps(self, ranks: np.ndarray, max_pairs: int = 20_000,
              rng: np.random.Generator | int | None = None) -> np.ndarray:
        """Valid neighbours that trade rank between two units (one step up, one down) or move one unit.

        The moves a budget-constrained hill climb needs: a single step usually leaves the band,
        a trade keeps the cost nearly constant. With many units a random subset of pairs is used.
        """
        rng = np.random.default_rng(rng)
        cands = np.asarray(self.candidates)
        idx = np.searchsorted(cands, np.asarray(ranks)[self._free])
        n = self.n_free
        up, down = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        keep = up != down
        up, down = up[keep], down[keep]
        if len(up) > max_pairs:
            pick = rng.choice(len(up), max_pairs, replace=False)
            up, down = up[pick], down[pick]
        singles = np.arange(n)
        moves = np.tile(idx, (len(up) + 2 * n, 1))
        rows = np.arange(len(up))
        moves[rows, up] += 1
        moves[rows, down] -= 1
        moves[len(up) + singles, singles] += 1
        moves[len(up) + n + singles, singles] -= 1
        ok = np.all((moves >= 0) & (moves < len(cands)), axis=1)
        out = np.full((int(ok.sum()), self.n_units), self.fixed_rank, dtype=np.int64)
        out[:, self._free] = cands[moves[ok]]
        return out[self.is_valid(out)]

    # ---------------------------------------------------------- representation
    def features(self, ranks: np.ndarray) -> np.ndarray:
        """Free-unit ranks scaled to [0, 1] by the candidate range (the MLP performance model's input)."""
        r = np.atleast_2d(np.asarray(ranks, float))[:, self._free]
        lo, hi = self.candidates[0], self.candidates[-1]
        return (r - lo) / (hi - lo) if hi > lo else r * 0.0

    def log_features(self, ranks: np.ndarray) -> np.ndarray:
        """log(1 + rank) of the free units scaled to [0, 1] (the additive surrogate's input)."""
        r = np.log1p(np.atleast_2d(np.asarray(ranks, float))[:, self._free])
        lo, hi = np.log1p(self.candidates[0]), np.log1p(self.candidates[-1])
        return (r - lo) / (hi - lo) if hi > lo else r * 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {"n_layers": self.n_layers, "candidates": list(self.candidates),
             "fixed_first": self.fixed_first, "fixed_last": self.fixed_last,
             "fixed_rank": self.fixed_rank, "layer_costs": list(self.layer_costs),
             "budget": self.budget, "tolerance": self.tolerance, "granularity": self.granularity}
        if self.granularity == "module":
            d["module_names"] = [list(layer) for layer in self.module_names]
            d["module_costs"] = [list(layer) for layer in self.module_costs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchSpace":
        d = dict(d)
        d["candidates"] = tuple(d["candidates"])
        d["layer_costs"] = tuple(d["layer_costs"]) if d.get("layer_costs") is not None else None
        if d.get("granularity") == "module":
            d["layer_costs"] = None
            d["module_names"] = tuple(tuple(layer) for layer in d["module_names"])
            d["module_costs"] = tuple(tuple(layer) for layer in d["module_costs"])
        return cls(**d)

    @classmethod
    def for_model(cls, costs: Sequence[Mapping[str, float]] | Sequence[float], granularity: str = "layer",
                  **kwargs) -> "SearchSpace":
        """The space of a model from ``rankadaptor.lora.ranks.module_costs(model)`` (or plain per-layer costs)."""
        if len(costs) and isinstance(costs[0], Mapping):
            names = tuple(tuple(layer) for layer in costs)
            module = tuple(tuple(float(c) for c in layer.values()) for layer in costs)
            if granularity == "module":
                return cls(len(costs), granularity="module", module_names=names, module_costs=module, **kwargs)
            return cls(len(costs), layer_costs=tuple(float(sum(m)) for m in module), **kwargs)
        if granularity == "module":
            raise RankAdaptorError("a per-module search needs the cost of every module: pass "
                                   "rankadaptor.lora.ranks.module_costs(model), not per-layer costs")
        return cls(len(costs), layer_costs=tuple(float(c) for c in costs), **kwargs)

    # ---------------------------------------------------------- Optuna parameters
    def param_names(self) -> list[str]:
        if self.granularity == "layer":
            return [f"r{int(j):03d}" for j in self._free]
        leaves = [n.rsplit(".", 1)[-1] for layer in self.module_names for n in layer]
        return [f"r{int(self._layer_of[j]):03d}_{leaves[j]}" for j in self._free]

    def distribution(self):
        """Optuna's view of one free unit: an ordinal integer range when the candidates are evenly spaced
        (TPE and the GP then know that 6 lies between 4 and 8), else categorical."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        c = self.candidates
        steps = set(np.diff(c).tolist())
        if len(c) >= 2 and len(steps) == 1:
            return IntDistribution(c[0], c[-1], step=int(steps.pop()))
        return CategoricalDistribution(list(c))

    def from_params(self, params: dict[str, Any]) -> np.ndarray:
        vec = self.uniform()
        for name, j in zip(self.param_names(), self._free):
            vec[j] = int(params[name])
        return vec

    def to_params(self, ranks: np.ndarray) -> dict[str, int]:
        return {name: int(ranks[j]) for name, j in zip(self.param_names(), self._free)}

    # ---------------------------------------------------------- rank plans
    def to_rank_plan(self, ranks: Sequence[int], model: dict | None = None, **plan_kwargs):
        """The ``RankPlan`` that trains this vector (``recover --ranks FILE`` reads it).

        Per module: each layer's most common rank becomes its layer rank and every other module an
        override by full name (rank 0 = the module gets no LoRA).
        """
        from rankadaptor.lora.ranks import RankPlan

        vec = [int(r) for r in ranks]
        if len(vec) != self.n_units:
            raise RankAdaptorError(f"a rank vector of this space has {self.n_units} entries, got {len(vec)}")
        if self.granularity == "layer":
            return RankPlan(ranks=vec, model=model, **plan_kwargs)
        layer_ranks, overrides, pos = [], {}, 0
        for names in self.module_names:
            mine = vec[pos:pos + len(names)]
            pos += len(names)
            base = Counter(mine).most_common(1)[0][0]
            layer_ranks.append(base)
            overrides.update({n: r for n, r in zip(names, mine) if r != base})
        targets = tuple(n.rsplit(".", 1)[-1] for n in self.module_names[0])
        return RankPlan(ranks=layer_ranks, target_modules=targets, overrides=overrides, model=model, **plan_kwargs)

    def from_module_ranks(self, module_ranks: Mapping[str, int]) -> np.ndarray:
        """The vector of a plan given as {full module name: rank} (``RankPlan.module_ranks(model)``).

        Per layer, a layer's modules must agree (their common rank is the layer's); names the space
        does not know are refused.
        """
        if self.granularity == "module":
            flat = [n for layer in self.module_names for n in layer]
            unknown = sorted(set(module_ranks) - set(flat))
            missing = [n for n in flat if n not in module_ranks]
            if unknown or missing:
                raise RankAdaptorError(f"plan modules do not match the space: unknown {unknown[:3]}, missing "
                                       f"{missing[:3]}; make the plan for this model")
            return np.asarray([int(module_ranks[n]) for n in flat], dtype=np.int64)
        raise RankAdaptorError("a per-layer space reads per-layer ranks; use the plan's .ranks")


def plan_hash(ranks: Sequence[int]) -> str:
    """A short stable identity for a rank vector (stored as a trial user attr to stop duplicates)."""
    return hashlib.sha1(",".join(str(int(r)) for r in ranks).encode()).hexdigest()[:16]


def to_rank_plan(ranks: Sequence[int], model: dict | None = None):
    """The ``RankPlan`` of a per-layer vector (kept for callers without a space; see ``SearchSpace.to_rank_plan``)."""
    from rankadaptor.lora.ranks import RankPlan

    return RankPlan(ranks=[int(r) for r in ranks], model=model)
