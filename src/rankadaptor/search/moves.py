"""How a search draws and moves plans inside a ``SearchSpace`` (mixed into it): valid random plans
spread evenly over the budget band, a Latin hypercube, budget repair, projection of outside plans,
and the local moves (mutations, rank trades) that pools and hill climbs are made of.

Everything works on the free units' candidate indices; a plan leaves here only if
``SearchSpace.is_valid`` accepts it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rankadaptor.errors import RankAdaptorError

_BINS = 4096  # lookup bins of the inverse-CDF draw (a power of two, so a draw's bin is computed exactly)


class PlanMoves:
    """Sampling and moves of a ``SearchSpace`` (uses its candidates, unit costs, free units and budget)."""

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
            batch = self._tilted_batch(want, rng, only_valid=True)
            if len(batch) < 0.02 * want:
                batch = np.concatenate([batch, self.repair(self._tilted_batch(want, rng), rng)])
            out.append(batch)
            have += len(batch)
            if have >= n:
                return np.concatenate(out)[:n]
        if have >= n // 2 and have:  # a narrow band of coarse candidates: a slightly smaller pool serves as well
            return np.concatenate(out)
        raise RankAdaptorError(
            f"could only sample {have} of {n} rank vectors under budget {self.budget:g} ± {self.tolerance:.1%} "
            f"with candidates {list(self.candidates)}; widen the tolerance")

    def _tilted_batch(self, n: int, rng: np.random.Generator, only_valid: bool = False) -> np.ndarray:
        """``n`` rows drawn unit by unit from ``_tilted_probs`` by inverse CDF: a unit's index is the number
        of its cumulative probabilities at or below its uniform draw. ``only_valid``: just the rows inside
        the budget band (decided from the draws' cost before the rows are built: most are rejected)."""
        cands = np.asarray(self.candidates)
        cum, lo, hi = self._draw_tables()
        u = rng.random((n, self.n_free))
        # a lookup table on 2^12 equal bins of [0, 1) decides every draw whose bin holds no CDF step
        # (exact: u * 2^12 is exact in floating point); the few others are counted directly
        b = (u * _BINS).astype(np.intp)  # u >= 0: truncation is the floor
        b += np.arange(self.n_free) * _BINS  # unit j's bins start at j * 2^12 in the flat tables
        idx, top = lo.take(b).astype(np.intp), hi.take(b)
        rows, cols = np.nonzero(idx != top)
        idx[rows, cols] = (cum[cols] <= u[rows, cols, None]).sum(1)
        idx = np.minimum(idx, len(cands) - 1)
        if only_valid:
            idx = idx[self.is_valid(cands[idx], free_only=True)]
        r = np.full((len(idx), self.n_units), self.fixed_rank, dtype=np.int64)
        r[:, self._free] = cands[idx]
        return r

    def _draw_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per free unit: the cumulative draw probabilities and, per bin [b, b+1) / 2^12, the number of
        them at or below the bin's start and below its end (equal: every draw in the bin has that index)."""
        if getattr(self, "_tables", None) is None:
            cum = np.cumsum(self._tilted_probs(), axis=1)
            cum[:, -1] = 1.0
            edges = np.arange(_BINS + 1) / _BINS
            below = np.stack([np.searchsorted(c, edges, side="right") for c in cum])  # count of cum <= edge
            strictly = np.stack([np.searchsorted(c, edges, side="left") for c in cum])  # count of cum < edge
            small = np.uint8 if len(self.candidates) < 256 else np.intp  # small tables: fewer bytes to gather
            self._tables = (cum, below[:, :-1].astype(small).ravel(), strictly[:, 1:].astype(small).ravel())
        return self._tables

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
            expected = lambda t: self._fixed_cost + float(((probs(t) * cands).sum(1) * costs).sum())  # noqa: E731
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
        base = self._fixed_cost
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

    def swaps(self, ranks: np.ndarray, max_pairs: int = 20_000, rng: np.random.Generator | int | None = None,
              return_moves: bool = False):
        """Valid neighbours that trade rank between two units (one step up, one down) or move one unit.

        The moves a budget-constrained hill climb needs: a single step usually leaves the band,
        a trade keeps the cost nearly constant. With many units a random subset of the pairs is used.
        Validity is decided from the cost change of each move, so only valid neighbours are built.
        ``return_moves``: also the free-unit positions moved up and down per row (-1: none).
        """
        rng = np.random.default_rng(rng)
        cands = np.asarray(self.candidates)
        vec = np.asarray(ranks)
        idx = np.searchsorted(cands, vec[self._free])
        n, k = self.n_free, len(cands)
        costs = self._unit_costs[self._free]
        # cost of one step up / down of each free unit (inf where the unit is at the end of the candidates)
        up_cost = np.where(idx + 1 < k, costs * (cands[np.minimum(idx + 1, k - 1)] - cands[idx]), np.inf)
        down_cost = np.where(idx > 0, costs * (cands[idx] - cands[np.maximum(idx - 1, 0)]), np.inf)
        if n * (n - 1) <= max_pairs:
            up, down = np.nonzero(~np.eye(n, dtype=bool))
        else:
            up, down = rng.integers(0, n, (2, max_pairs))
            keep = up != down
            up, down = up[keep], down[keep]
        singles = np.arange(n)
        up = np.concatenate([up, singles, np.full(n, -1)])
        down = np.concatenate([down, np.full(n, -1), singles])
        gain = np.where(up >= 0, up_cost[up], 0.0)  # inf: the unit cannot move that way
        loss = np.where(down >= 0, down_cost[down], 0.0)
        lo, hi = self.budget_bounds()
        movable = np.isfinite(gain) & np.isfinite(loss)
        new_cost = float(self.cost(vec)) + np.where(movable, gain, 0.0) - np.where(movable, loss, 0.0)
        ok = movable & (new_cost >= lo - 1e-9) & (new_cost <= hi + 1e-9)
        up, down = up[ok], down[ok]
        moves = np.tile(idx, (len(up), 1))
        rows = np.arange(len(up))
        moves[rows[up >= 0], up[up >= 0]] += 1
        moves[rows[down >= 0], down[down >= 0]] -= 1
        out = np.tile(vec.astype(np.int64), (len(up), 1))
        out[:, self._free] = cands[moves]
        return (out, up, down) if return_moves else out


def unique_rows(plans: np.ndarray) -> np.ndarray:
    """``np.unique(plans, axis=0)`` (same rows, same lexicographic order), fast for ranks below 256: each
    row compared as one byte string instead of field by field (pools of 10,000 plans per proposal)."""
    plans = np.asarray(plans)
    if plans.ndim != 2 or not len(plans) or plans.min() < 0 or plans.max() > 255:
        return np.unique(plans, axis=0)
    packed = np.ascontiguousarray(plans, dtype=np.uint8).view(np.dtype((np.void, plans.shape[1]))).ravel()
    _, first = np.unique(packed, return_index=True)
    return plans[first]
