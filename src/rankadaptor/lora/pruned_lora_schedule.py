"""PrunedLoRA's schedule: what budget to reach, when to prune, how much per event, and the check after.

A ``PruneSchedule`` names the budget (``target_rank`` or ``target_params``) and may leave the timing
open: ``warmup_steps``, ``prune_every``, ``prune_k`` and ``final_steps`` left at ``None`` are derived
by ``resolve(sizes, total_steps)`` from the run length, so every caller (CLI, demo, search,
benchmarks) gets a schedule that reaches the budget within its steps, or a ``RankAdaptorError``
naming the flag to change, before any training.

Events: after step ``warmup_steps + i·prune_every`` (i = 1, 2, ...) while at most
``total_steps − final_steps``; ``final_steps >= 1`` so the last event is always followed by
fine-tuning of what is left. Derived values: a quarter of the run for warm-up (statistics) and for
the final fine-tuning, an event after every step in between, and the fewest components per event
that reach the budget (small events keep each quadratic step local).

After training, ``budget_check`` compares the final LoRA parameter count with the budget the
schedule claims: at budget means at most the target and less than one (largest) rank component
below it. ``recover``'s record carries it (``record["prunedlora"]["budget"]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from rankadaptor.errors import RankAdaptorError

SCOPES = ("module", "global")  # the CLI's torch-free flag list repeats these (a test checks they agree)
FISHER = ("token", "example")  # per-token or per-example gate gradients (rankadaptor.lora.pruned_lora_stats)
_TIMING = ("warmup_steps", "prune_every", "prune_k", "final_steps")


@dataclass
class PruneSchedule:
    init_rank: int
    target_rank: int | None = None
    target_params: int | None = None
    prune_every: int | None = None  # None: derived by resolve()
    prune_k: int | None = None  # components per module (module scope) or per module on average (global)
    scope: str = "module"
    scorer: str = "obs"
    warmup_steps: int | None = None
    final_steps: int | None = None
    floor: int = 1  # minimum rank kept per module (PEFT cannot hold a rank-0 module)
    damping: float = 0.01  # λ in F + λ·(tr F / r)·I, the 1 % of SparseGPT / GPTQ
    beta: float = 0.9  # EMA factor of the per-step gate statistics
    compensate: bool = True  # fold the OBS compensation of the kept components into B
    max_gate_change: float = 0.5  # trust region of the compensation: kept gates stay in [1 − τ, 1 + τ]
    fisher: str = "token"  # "token": per-token gate gradients; "example": per-sequence sums
    fisher_tokens: int | None = None  # subsample this many positions per micro-batch (None: all)

    def __post_init__(self) -> None:
        for name in ("init_rank", "floor", *_TIMING):
            v = getattr(self, name)
            if v is None and name in _TIMING:
                continue
            if name == "final_steps" and v == 0:
                raise RankAdaptorError("final_steps = 0 leaves no fine-tuning after the last pruning event; "
                                       "use --prune-final >= 1 (or leave it out: a quarter of the steps)")
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RankAdaptorError(f"{name} = {v!r} must be an integer >= 1")
        if (self.target_rank is None) == (self.target_params is None):
            raise RankAdaptorError("give exactly one of target_rank (--target-rank) or target_params (--target-params)")
        if self.floor > self.init_rank:
            raise RankAdaptorError(f"floor {self.floor} is above the initial rank {self.init_rank}; "
                                   f"use --prune-floor <= {self.init_rank}")
        if self.target_rank is not None and not self.floor <= self.target_rank < self.init_rank:
            raise RankAdaptorError(f"target_rank {self.target_rank} must be in [floor={self.floor}, init_rank-1="
                                   f"{self.init_rank - 1}]; change --target-rank, --init-rank or --prune-floor")
        if self.target_params is not None and (isinstance(self.target_params, bool)
                                               or not isinstance(self.target_params, int) or self.target_params < 1):
            raise RankAdaptorError(f"target_params = {self.target_params!r} must be a positive integer")
        if self.scope not in SCOPES:
            raise RankAdaptorError(f"scope {self.scope!r} unknown; choose from {list(SCOPES)}")
        from rankadaptor.lora.obs import SCORERS

        if self.scorer not in SCORERS:
            raise RankAdaptorError(f"scorer {self.scorer!r} unknown; valid: {sorted(SCORERS)}")
        if self.fisher not in FISHER:
            raise RankAdaptorError(f"fisher {self.fisher!r} unknown; choose from {list(FISHER)}")
        if self.fisher_tokens is not None and (not isinstance(self.fisher_tokens, int) or self.fisher_tokens < 1):
            raise RankAdaptorError(f"fisher_tokens = {self.fisher_tokens!r} must be an integer >= 1 or None")
        if not (isinstance(self.damping, (int, float)) and self.damping > 0 and math.isfinite(self.damping)):
            raise RankAdaptorError(f"damping {self.damping!r} must be a finite number > 0 (--prune-damping)")
        if not (isinstance(self.beta, (int, float)) and 0.0 <= self.beta < 1.0):
            raise RankAdaptorError(f"beta {self.beta!r} must be in [0, 1)")
        if not (isinstance(self.max_gate_change, (int, float)) and 0 < self.max_gate_change <= 1):
            raise RankAdaptorError(f"max_gate_change {self.max_gate_change!r} must be in (0, 1]")

    # ---- the budget ------------------------------------------------------------------------------
    def requested_params(self, sizes: dict[str, int]) -> int:
        """The budget asked for: ``target_params``, or ``target_rank`` on every module."""
        return self.target_params if self.target_params is not None else self.target_rank * sum(sizes.values())

    def targets(self, sizes: dict[str, int]) -> tuple[dict[str, int] | None, int]:
        """(per-module target ranks, or None for global scope; the parameter count pruning stops at).

        ``sizes`` maps module name to params per rank component (d_in + d_out). Module scope rounds a
        parameter budget down to the uniform rank that fits it.
        """
        per = sum(sizes.values())
        initial = self.init_rank * per
        floor_budget = self.floor * per
        target = self.requested_params(sizes)
        if target >= initial:
            raise RankAdaptorError(f"target {target:,} LoRA params is not below the initial count {initial:,} (rank "
                                   f"{self.init_rank}); lower --target-params / --target-rank or raise --init-rank")
        if target < floor_budget:
            raise RankAdaptorError(f"target {target:,} LoRA params is below what the floor keeps, {floor_budget:,} "
                                   f"(rank {self.floor} everywhere); lower --prune-floor or raise the target")
        if self.scope == "global":
            return None, target
        r = self.target_rank if self.target_rank is not None else target // per
        return {n: r for n in sizes}, r * per

    # ---- timing ----------------------------------------------------------------------------------
    def event_steps(self, total_steps: int) -> list[int]:
        """1-based step counts after which a pruning event runs (a resolved schedule)."""
        last = total_steps - self.final_steps
        return list(range(self.warmup_steps + self.prune_every, last + 1, self.prune_every))

    def events_needed(self, sizes: dict[str, int], k: int) -> int:
        """Events that surely reach the target at ``k`` components per module per event.

        Module scope: every module loses k per event. Global scope: an event removes up to k·M
        components (M modules) wherever they cost least, so the worst case is the order that frees
        the fewest parameters per removal: the smallest modules' components first, down to the floor.
        """
        per_module, target = self.targets(sizes)
        if per_module is not None:
            return math.ceil((self.init_rank - next(iter(per_module.values()))) / k)
        to_free = self.init_rank * sum(sizes.values()) - target
        removals = 0
        for size in sorted(sizes.values()):  # the floor budget is <= target, so this ends inside the loop
            take = min(self.init_rank - self.floor, math.ceil(to_free / size))
            removals += take
            to_free -= take * size
            if to_free <= 0:
                break
        return math.ceil(removals / (k * len(sizes)))

    def resolve(self, sizes: dict[str, int], total_steps: int) -> "PruneSchedule":
        """This schedule with every timing field set for a run of ``total_steps`` steps, checked to reach
        the budget with at least one fine-tuning step after the last event; else a RankAdaptorError."""
        self.targets(sizes)  # budget errors first: they do not depend on the timing
        T = int(total_steps)
        given = {f: getattr(self, f) for f in _TIMING if getattr(self, f) is not None}
        s = replace(self, warmup_steps=given.get("warmup_steps", max(1, T // 4)),
                    final_steps=given.get("final_steps", max(1, T // 4)), prune_every=given.get("prune_every", 1),
                    prune_k=given.get("prune_k", self.init_rank))
        events = len(s.event_steps(T))
        what = (f"{T} steps (warm-up {s.warmup_steps}, every {s.prune_every}, final {s.final_steps}"
                + (")" if "prune_k" not in given else f", {s.prune_k} per event)"))
        change = ["train longer (--steps)"] + [f"{'shorten' if f != 'prune_every' else 'lower'} --{flag}"
                                               for f, flag in (("warmup_steps", "prune-warmup"),
                                                               ("prune_every", "prune-every"),
                                                               ("final_steps", "prune-final")) if f in given]
        if events == 0:
            raise RankAdaptorError(f"no pruning event fits in {what}; " + " or ".join(change))
        if "prune_k" in given:
            needed = s.events_needed(sizes, s.prune_k)
            if needed > events:
                raise RankAdaptorError(f"the schedule has {events} pruning event(s) in {what} but needs {needed} at "
                                       f"{s.prune_k} component(s) per module per event; raise --prune-k or "
                                       + " or ".join(change))
            return s
        # the fewest components per event that reach the budget; k = init_rank needs one event
        k = next(k for k in range(1, self.init_rank + 1) if s.events_needed(sizes, k) <= events)
        return replace(s, prune_k=k)


def budget_check(final_params: int, requested_params: int, sizes: dict[str, int]) -> dict:
    """Whether ``final_params`` is at the requested budget: at most it, and less than one component below.

    "One component" is the largest module's (d_in + d_out): global scope stops as soon as it is at or
    under the target, so it lands within that; module scope with a budget that is not a whole
    uniform rank lands further below, and is then honestly not at the budget.
    """
    largest = max(sizes.values())
    gap = int(requested_params) - int(final_params)
    return {"requested_params": int(requested_params), "final_params": int(final_params), "gap": gap,
            "largest_component": int(largest), "at_budget": bool(0 <= gap < largest)}
