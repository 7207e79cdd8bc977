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
from rankadaptor.search.moves import PlanMoves

PAPER_CANDIDATES = (2, 4, 6, 8, 10, 12)  # RankAdaptor §4.1
MODULE_CANDIDATES = tuple(range(0, 33))  # per module: 0 (module left out) .. 32
GRANULARITIES = ("layer", "module")


@dataclass
class SearchSpace(PlanMoves):
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
        self._fixed = np.setdiff1d(np.arange(len(costs)), self._free)
        # what every plan pays for the units held at the fixed rank (the draws, the repair and the
        # budget checks all add the free units' cost to it)
        self._fixed_cost = float(costs.sum() - costs[self._free].sum()) * self.fixed_rank
        # membership of a rank in the candidates by lookup (np.isin sorts; a search checks ~10^6 ranks per proposal)
        self._is_candidate = np.zeros(max(self.candidates) + 1, bool)
        self._is_candidate[list(self.candidates)] = True

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

    def is_valid(self, ranks: np.ndarray, free_only: bool = False) -> np.ndarray:
        """Row-wise validity of an (n, n_units) array (or one vector); ``free_only``: of an (n, n_free)
        array of the free units' ranks (the others at the fixed rank)."""
        r = np.atleast_2d(np.asarray(ranks))
        if r.shape[1] != (self.n_free if free_only else self.n_units):
            return np.zeros(len(r), bool)
        good = np.ones(len(r), bool) if free_only else np.all(r[:, self._fixed] == self.fixed_rank, axis=1)
        free = r if free_only else r[:, self._free]
        if np.issubdtype(free.dtype, np.integer):
            inside = (free >= 0) & (free < len(self._is_candidate))
            good &= np.all(inside & self._is_candidate[np.where(inside, free, 0)], axis=1)
        else:
            good &= np.all(np.isin(free, self.candidates), axis=1)
        lo, hi = self.budget_bounds()
        c = self._fixed_cost + free @ self._unit_costs[self._free] if free_only else self.cost(r)
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
        free = float(self._unit_costs[self._free].sum())
        return self._fixed_cost + free * self.candidates[0], self._fixed_cost + free * self.candidates[-1]

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

    # ---------------------------------------------------------- representation
    def features(self, ranks: np.ndarray) -> np.ndarray:
        """Free-unit ranks scaled to [0, 1] by the candidate range (the MLP performance model's input)."""
        r = np.atleast_2d(np.asarray(ranks, float))[:, self._free]
        lo, hi = self.candidates[0], self.candidates[-1]
        return (r - lo) / (hi - lo) if hi > lo else r * 0.0

    def log_features(self, ranks: np.ndarray) -> np.ndarray:
        """log(1 + rank) of the free units scaled to [0, 1] (the additive surrogate's input)."""
        r = np.atleast_2d(np.asarray(ranks))[:, self._free]
        if np.issubdtype(r.dtype, np.integer) and len(r) and r.min() >= 0 and r.max() <= self.candidates[-1]:
            return self._scaled_log(np.arange(self.candidates[-1] + 1))[r]  # a lookup: pools hold 10^6 ranks
        return self._scaled_log(r)

    def _scaled_log(self, r: np.ndarray) -> np.ndarray:
        z = np.log1p(np.asarray(r, float))
        lo, hi = np.log1p(self.candidates[0]), np.log1p(self.candidates[-1])
        return (z - lo) / (hi - lo) if hi > lo else z * 0.0

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
