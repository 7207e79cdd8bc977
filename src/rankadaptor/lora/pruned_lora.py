"""PrunedLoRA: start LoRA at rank R0 and prune rank components during training.

Every ``prune_every`` steps after ``warmup_steps``, the least important rank components (column j
of B with row j of A) are removed: ``prune_k`` per module (``scope="module"``, every module ends at
the same rank) or ``prune_k × n_modules`` chosen across all modules (``scope="global"``, compared
by estimated loss increase per freed parameter, giving non-uniform ranks). Importance and the
compensation of the remaining components are derived in ``rankadaptor.lora.obs``. The last
``final_steps`` steps only fine-tune. A pruned component never comes back: its weights,
gradients and Adam moments are zeroed after every backward and every step. At the end A and B
are physically shrunk and the PEFT config gets exact ``rank_pattern``/``alpha_pattern`` keys with
alpha rewritten so the scale s stays what it was, so ``save_pretrained`` gives a standard adapter.

Use it as a ``recover`` method (``METHODS["prunedlora"]``), as a callback in any loop with the
hooks ``on_train_begin / on_after_backward / on_step_end / on_train_end``, or in a Hugging Face
``Trainer`` through ``hf_callback(cb)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.obs import ModuleStats, gate_gradient, get_scorer, SCORERS
from rankadaptor.lora.pruned_lora_export import hf_callback, lora_modules, shrink  # noqa: F401  (public API)
from rankadaptor.lora.ranks import RankPlan, apply_plan, linear_shapes

log = logging.getLogger(__name__)

SCOPES = ("module", "global")  # the CLI's torch-free flag list repeats these (a test checks they agree)


@dataclass
class PruneSchedule:
    init_rank: int
    target_rank: int | None = None
    target_params: int | None = None
    prune_every: int = 10
    prune_k: int = 1
    scope: str = "module"
    scorer: str = "obs"
    warmup_steps: int = 10
    final_steps: int = 0
    floor: int = 1  # minimum rank kept per module (PEFT cannot hold a rank-0 module)
    damping: float = 0.1  # λ in F + λ·mean(diag F)·I
    beta: float = 0.9  # EMA factor of the gate statistics
    compensate: bool = True

    def __post_init__(self) -> None:
        for name in ("init_rank", "prune_every", "prune_k", "warmup_steps", "floor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RankAdaptorError(f"{name} = {v!r} must be an integer >= 1")
        if not isinstance(self.final_steps, int) or self.final_steps < 0:
            raise RankAdaptorError(f"final_steps = {self.final_steps!r} must be an integer >= 0")
        if (self.target_rank is None) == (self.target_params is None):
            raise RankAdaptorError("give exactly one of target_rank (--target-rank) or target_params (--target-params)")
        if self.floor > self.init_rank:
            raise RankAdaptorError(f"floor {self.floor} is above the initial rank {self.init_rank}; use floor <= {self.init_rank}")
        if self.target_rank is not None and not self.floor <= self.target_rank < self.init_rank:
            raise RankAdaptorError(
                f"target_rank {self.target_rank} must be in [floor={self.floor}, init_rank-1={self.init_rank - 1}]"
            )
        if self.target_params is not None and (not isinstance(self.target_params, int) or self.target_params < 1):
            raise RankAdaptorError(f"target_params = {self.target_params!r} must be a positive integer")
        if self.scope not in SCOPES:
            raise RankAdaptorError(f"scope {self.scope!r} unknown; choose from {list(SCOPES)}")
        if self.scorer not in SCORERS:
            raise RankAdaptorError(f"scorer {self.scorer!r} unknown; valid: {sorted(SCORERS)}")
        if not (self.damping >= 0 and math.isfinite(self.damping)):
            raise RankAdaptorError(f"damping {self.damping!r} must be a finite number >= 0")
        if not 0.0 <= self.beta < 1.0:
            raise RankAdaptorError(f"beta {self.beta!r} must be in [0, 1)")

    # ---- against sizes and a run length --------------------------------------------------------
    def targets(self, sizes: dict[str, int]) -> tuple[dict[str, int] | None, int]:
        """(per-module target ranks or None for global scope, target total params).

        ``sizes`` maps module name to params per rank component (d_in + d_out).
        """
        per = sum(sizes.values())
        initial = self.init_rank * per
        floor_budget = self.floor * per
        target = self.target_params if self.target_params is not None else self.target_rank * per
        if target >= initial:
            raise RankAdaptorError(
                f"target {target} LoRA params is not below the initial budget {initial} (rank {self.init_rank}); "
                "lower the target or raise --init-rank"
            )
        if target < floor_budget:
            raise RankAdaptorError(
                f"target {target} LoRA params is below the floor's budget {floor_budget} (floor rank {self.floor}); "
                "raise the target or lower the floor"
            )
        if self.scope == "global":
            return None, target
        r = self.target_rank if self.target_rank is not None else target // per
        return {n: r for n in sizes}, r * per

    def event_steps(self, total_steps: int) -> list[int]:
        """1-based step counts after which a pruning event runs."""
        last = total_steps - self.final_steps
        return list(range(self.warmup_steps + self.prune_every, last + 1, self.prune_every))

    def check_reachable(self, sizes: dict[str, int], total_steps: int) -> None:
        per_module, target = self.targets(sizes)
        events = len(self.event_steps(total_steps))
        if per_module is not None:
            needed = math.ceil((self.init_rank - next(iter(per_module.values()))) / self.prune_k)
            ok = events >= needed
        else:  # conservative: every removal frees at least the smallest module's component
            to_remove = self.init_rank * sum(sizes.values()) - target
            needed = math.ceil(to_remove / (self.prune_k * len(sizes) * min(sizes.values())))
            ok = events >= needed
        if not ok:
            raise RankAdaptorError(
                f"the schedule has {events} pruning event(s) in {total_steps} steps (warm-up {self.warmup_steps}, "
                f"every {self.prune_every}, final {self.final_steps}) but needs {needed} at {self.prune_k} "
                "component(s) per event; train longer, prune more often (--prune-every) or more at once (--prune-k)"
            )


class _Module:
    """One LoRA module: its parameters, active components and statistics."""

    def __init__(self, name, layer, adapter, beta):
        self.name, self.layer, self.adapter = name, layer, adapter
        self.A = layer.lora_A[adapter].weight
        self.B = layer.lora_B[adapter].weight
        r = self.A.shape[0]
        self.mask = torch.ones(r, dtype=torch.bool)
        self.stats = ModuleStats(r, beta)
        self.size = self.A.shape[1] + self.B.shape[0]

    @property
    def rank(self) -> int:
        return int(self.mask.sum())

    def active(self) -> list[int]:
        return self.mask.nonzero().flatten().tolist()

    @torch.no_grad()
    def zero_pruned(self, optimizer=None) -> None:
        """Pruned rows of A / columns of B: weights, gradients and Adam moments to exact zero."""
        dead = ~self.mask
        if not dead.any():
            return
        for p in (self.A, self.B):
            _zero(p.data, dead, p is self.A)
            if p.grad is not None:
                _zero(p.grad, dead, p is self.A)
            state = optimizer.state.get(p, {}) if optimizer is not None else {}
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"):
                if key in state and torch.is_tensor(state[key]) and state[key].shape == p.shape:
                    _zero(state[key], dead, p is self.A)


def _zero(t: torch.Tensor, dead: torch.Tensor, rows: bool) -> None:
    dead = dead.to(t.device)  # the mask lives on the CPU with the statistics
    if rows:
        t[dead] = 0.0
    else:
        t[:, dead] = 0.0


class PrunedLoRACallback:
    """Prunes LoRA rank components during training (hooks of ``rankadaptor.lora.recover``)."""

    def __init__(self, schedule: PruneSchedule, adapter: str = "default", shrink_at_end: bool = True):
        self.schedule = schedule
        self.adapter = adapter
        self.shrink_at_end = shrink_at_end
        self.scorer = get_scorer(schedule.scorer, schedule.damping)
        self.modules: dict[str, _Module] = {}
        self.events: list[dict] = []
        self._hooks = []

    # ---- hooks ---------------------------------------------------------------------------
    def on_train_begin(self, model, optimizer, total_steps: int) -> None:
        found = lora_modules(model, self.adapter)
        if not found:
            raise RankAdaptorError("PrunedLoRA found no LoRA module in the model; wrap it with LoRA first")
        self.modules = {n: _Module(n, m, self.adapter, self.schedule.beta) for n, m in found.items()}
        bad = {n: m.rank for n, m in self.modules.items() if m.rank != self.schedule.init_rank}
        if bad:
            raise RankAdaptorError(f"PrunedLoRA expects every module at init_rank {self.schedule.init_rank}; got {dict(list(bad.items())[:3])}")
        self.sizes = {n: m.size for n, m in self.modules.items()}
        self.schedule.check_reachable(self.sizes, total_steps)
        self.per_module_target, self.target_params = self.schedule.targets(self.sizes)
        self.event_at = set(self.schedule.event_steps(total_steps))
        if self.schedule.scorer == "activation":
            for m in self.modules.values():
                self._hooks.append(m.layer.lora_A[self.adapter].register_forward_hook(self._act_hook(m)))

    def on_after_backward(self, step: int, model) -> None:
        for m in self.modules.values():
            m.zero_pruned()  # pruned gradients to zero before clipping and the optimiser see them
            g = gate_gradient(m.A, m.B)
            if g is not None:
                m.stats.update(g)

    def on_step_end(self, step: int, model, optimizer) -> None:
        if step + 1 in self.event_at and self.params() > self.target_params:
            self._prune_event(step + 1)
        for m in self.modules.values():
            m.zero_pruned(optimizer)

    def on_train_end(self, model) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self.params() > self.target_params:
            log.warning("PrunedLoRA ended at %d LoRA params, above the target %d", self.params(), self.target_params)
        if self.shrink_at_end:
            shrink(model, self.ranks(), self.adapter)

    def record(self) -> dict:
        return {"prunedlora": {"schedule": asdict(self.schedule), "final_ranks": self.ranks(),
                               "final_params": self.params(), "target_params": self.target_params,
                               "events": self.events}}

    # ---- checkpoints (``rankadaptor.lora.checkpoint``) -------------------------------------
    def state_dict(self) -> dict:
        """Masks, gate statistics (γ and Fisher EMAs, activations) and the pruning history."""
        return {"events": [dict(e) for e in self.events],
                "modules": {n: {"mask": m.mask.clone(), "grad": m.stats.grad.clone(), "fisher": m.stats.fisher.clone(),
                                "act": m.stats.act.clone(), "steps": m.stats.steps, "act_steps": m.stats.act_steps}
                            for n, m in self.modules.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` after ``on_train_begin`` (which builds the modules)."""
        saved = state["modules"]
        if set(saved) != set(self.modules):
            raise RankAdaptorError(f"PrunedLoRA checkpoint names {len(saved)} LoRA modules, the model has "
                                   f"{len(self.modules)}; it belongs to another model")
        for n, m in self.modules.items():
            s = saved[n]
            if s["mask"].shape != m.mask.shape or s["fisher"].shape != m.stats.fisher.shape:
                raise RankAdaptorError(f"PrunedLoRA checkpoint of module {n} has rank {s['mask'].numel()}, "
                                       f"the model {m.mask.numel()}")
            m.mask = s["mask"].to(torch.bool).clone()
            m.stats.grad, m.stats.fisher, m.stats.act = (s[k].to(torch.float64).clone() for k in ("grad", "fisher", "act"))
            m.stats.steps, m.stats.act_steps = int(s["steps"]), int(s["act_steps"])
        self.events = [dict(e) for e in state["events"]]

    # ---- state ---------------------------------------------------------------------------
    def ranks(self) -> dict[str, int]:
        return {n: m.rank for n, m in self.modules.items()}

    def params(self) -> int:
        return sum(m.rank * m.size for m in self.modules.values())

    def _act_hook(self, m: _Module):
        def hook(module, inputs, output):
            if module.training:
                with torch.no_grad():
                    m.stats.update_act(output.detach().reshape(-1, output.shape[-1]).pow(2).mean(0))
        return hook

    # ---- pruning -------------------------------------------------------------------------
    @torch.no_grad()
    def _prune_event(self, at_step: int) -> None:
        sched = self.schedule
        states = {n: (m.active(), self.scorer.prepare(m.stats, m.A, m.B, m.active())) for n, m in self.modules.items()}
        removed: dict[str, list[int]] = {n: [] for n in self.modules}
        deltas = {n: torch.zeros(len(a), dtype=torch.float64) for n, (a, _) in states.items()}
        params = self.params()

        def take(n: str) -> None:
            nonlocal params
            active, state = states[n]
            i = int(torch.argmin(self.scorer.scores(state)))
            deltas[n] += self.scorer.remove(state, i)
            removed[n].append(active[i])
            params -= self.modules[n].size

        if self.per_module_target is not None:
            for n, m in self.modules.items():
                for _ in range(min(sched.prune_k, m.rank - max(self.per_module_target[n], sched.floor))):
                    take(n)
        else:
            norm = {n: self._normaliser(n, st) for n, (_, st) in states.items()}
            # a module's scores change only when it loses a component: cache each module's best score
            # (recomputing all of them per removal made an event O(k·M²) score calls, ~30 s on SmolLM2)
            best_of = {n: float(self.scorer.scores(st).min()) / norm[n] for n, (_, st) in states.items()}
            for _ in range(sched.prune_k * len(self.modules)):
                if params <= self.target_params:
                    break
                open_ = [n for n, m in self.modules.items() if m.rank - len(removed[n]) > sched.floor]
                if not open_:
                    break
                best = min(open_, key=best_of.__getitem__)
                take(best)
                best_of[best] = float(self.scorer.scores(states[best][1]).min()) / norm[best]
        self._apply(states, removed, deltas)
        self.events.append({"step": at_step, "removed": sum(map(len, removed.values())), "params": self.params(),
                            "ranks": sorted(set(self.ranks().values()))})
        log.info("PrunedLoRA step %d: removed %d components, %d LoRA params left",
                 at_step, self.events[-1]["removed"], self.params())

    def _normaliser(self, n: str, state) -> float:
        """Global comparison: loss increase per freed parameter; unitless scores per module mean."""
        size = float(self.modules[n].size)
        if self.scorer.loss_units:
            return size
        s = self.scorer.scores(state)
        return size * max(float(s[torch.isfinite(s)].abs().mean()), 1e-30)

    def _apply(self, states, removed, deltas) -> None:
        for n, m in self.modules.items():
            if not removed[n]:
                continue
            active = states[n][0]
            gates = 1.0 + deltas[n]
            if self.scorer.compensates and self.schedule.compensate:
                keep = [i for i, a in enumerate(active) if a not in removed[n]]
                cols = [active[i] for i in keep]
                m.B.data[:, cols] *= gates[keep].to(m.B.device, m.B.dtype)  # fold δ into B: no gates remain
                d = torch.ones(m.mask.numel(), dtype=torch.float64)
                d[cols] = gates[keep]
                m.stats.rescale(d)
            m.mask[removed[n]] = False
            m.stats.grad[~m.mask] = 0.0
            m.stats.fisher[~m.mask] = 0.0
            m.stats.fisher[:, ~m.mask] = 0.0
            m.zero_pruned()


# ---- recover method and CLI flags ------------------------------------------------
class PrunedLoRAMethod:
    """``recover --method prunedlora``: uniform LoRA at ``init_rank``, pruned by the callback."""

    name = "prunedlora"

    def __init__(self, alpha_rule: str = "2r", alpha: float = 16.0, dropout: float = 0.05, **schedule):
        self.schedule = PruneSchedule(**schedule)
        self.plan_kwargs = {"alpha_rule": alpha_rule, "alpha": alpha, "dropout": dropout}
        self.callback: PrunedLoRACallback | None = None

    def _plan(self, model) -> RankPlan:
        from rankadaptor.lora.ranks import decoder_layer_names

        return RankPlan.uniform(len(decoder_layer_names(model)), self.schedule.init_rank, **self.plan_kwargs)

    def validate(self, model) -> None:
        plan = self._plan(model)
        shapes = linear_shapes(model)
        self.schedule.targets({n: sum(shapes[n]) for n in plan.module_ranks(model)})

    def prepare(self, model, config, total_steps: int):
        plan = self._plan(model)
        shapes = linear_shapes(model)
        sizes = {n: sum(shapes[n]) for n in plan.module_ranks(model)}
        self.schedule.check_reachable(sizes, total_steps)  # before wrapping or training
        self.callback = PrunedLoRACallback(self.schedule)
        info = {"plan": plan.to_dict(), "initial_params": self.schedule.init_rank * sum(sizes.values())}
        return apply_plan(model, plan), [self.callback], info

    def expected_ranks(self, peft_model):
        return self.callback.ranks() if self.callback is not None else None

    def settings(self) -> dict:
        """What a resumed run must share with the checkpoint (``recover`` compares it)."""
        return {"schedule": asdict(self.schedule), **self.plan_kwargs}


def method_from_args(args, **plan_kwargs) -> PrunedLoRAMethod:
    if args.init_rank is None:
        raise RankAdaptorError("--method prunedlora needs --init-rank R0")
    target_rank = args.target_rank
    if target_rank is None and args.target_params is None:  # default budget: uniform --uniform-r's count
        target_rank = getattr(args, "uniform_r", 8)
    return PrunedLoRAMethod(init_rank=args.init_rank, target_rank=target_rank, target_params=args.target_params,
                            prune_every=args.prune_every, prune_k=args.prune_k, scope=args.scope,
                            scorer=args.prune_scorer, warmup_steps=args.prune_warmup, final_steps=args.prune_final,
                            floor=args.prune_floor, **plan_kwargs)
