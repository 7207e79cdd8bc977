"""PrunedLoRA: start LoRA at rank R0 and prune rank components during training.

At each pruning event (``rankadaptor.lora.pruned_lora_schedule``: derived from the run length when
not given) the least important rank components (column j of B with row j of A) are removed:
``prune_k`` per module (``scope="module"``, every module ends at the same rank) or up to
``prune_k × n_modules`` chosen across all modules (``scope="global"``, compared by estimated loss
increase per freed parameter, giving non-uniform ranks). The statistics come from hooks in the
ordinary forward/backward (``pruned_lora_stats``: per-token gate gradients, an empirical Fisher in
loss units); the scores and the OBS compensation of the kept components from ``obs``.

The compensation is folded into B (``B[:, i] *= 1 + δ_i``), so no gate parameters remain. Adam's
moments follow the fold: ``∂L/∂B = s·e·(A x)ᵀ`` does not depend on B, so B's moments stay; row i
of ``∂L/∂A = s·Bᵀ e xᵀ`` scales with column i of B, so A's first moments scale by ``1 + δ_i`` and
its second moments by ``(1 + δ_i)²``. A pruned component never comes back: its weights,
gradients and optimizer moments are zeroed after every backward and every step. At the end A
and B are physically shrunk (``pruned_lora_export.shrink``) and the final parameter count is
checked against the budget (``record()["prunedlora"]["budget"]["at_budget"]``).

Use it as a ``recover`` method (``METHODS["prunedlora"]``; ``PrunedLoRAMethod.for_budget`` sizes
it to a budget and a step count), as a callback in any loop with the hooks ``on_train_begin /
on_after_backward / on_step_end / on_train_end``, or in a Hugging Face ``Trainer`` through
``hf_callback(cb)``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from types import SimpleNamespace

import torch

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.obs import compensation, damped, get_scorer, quadratic_change, solve_dtype
from rankadaptor.lora.pruned_lora_export import hf_callback, lora_modules, shrink  # noqa: F401  (public API)
from rankadaptor.lora.pruned_lora_schedule import SCOPES, PruneSchedule, budget_check  # noqa: F401  (public API)
from rankadaptor.lora.pruned_lora_stats import GateHooks, GateStats, stat_dtype
from rankadaptor.lora.ranks import RankPlan, apply_plan, decoder_layer_names, linear_shapes

log = logging.getLogger(__name__)


class _Module:
    """One LoRA module: its weights, which components are alive, and their statistics."""

    def __init__(self, layer, adapter: str, schedule: PruneSchedule):
        self.A = layer.lora_A[adapter].weight
        self.B = layer.lora_B[adapter].weight
        r = self.A.shape[0]
        self.active = list(range(r))  # alive components (a Python list: no device sync to read it)
        self.mask = torch.ones(r, dtype=torch.bool, device=self.A.device)
        self.stats = GateStats(r, schedule.beta, self.A.device, stat_dtype(self.A), schedule.fisher,
                               schedule.fisher_tokens)
        self.size = self.A.shape[1] + self.B.shape[0]

    @property
    def rank(self) -> int:
        return len(self.active)

    @torch.no_grad()
    def zero_pruned(self, optimizer=None) -> None:
        """Pruned rows of A / columns of B: weights, gradients and optimizer moments to exact zero."""
        if self.rank == self.mask.numel():
            return
        dead = ~self.mask
        for p, rows in ((self.A, True), (self.B, False)):
            for t in (p.data, p.grad, *_moments(optimizer, p).values()):
                if t is None:
                    continue
                if rows:
                    t[dead] = 0.0
                else:
                    t[:, dead] = 0.0

    @torch.no_grad()
    def fold(self, d: torch.Tensor, optimizer=None) -> None:
        """Multiply column i of B by ``d_i`` (0 removes it); A's moments follow (see the module docstring)."""
        self.B.mul_(d.to(self.B.dtype))
        for key, t in _moments(optimizer, self.A).items():
            power = 2 if key in ("exp_avg_sq", "max_exp_avg_sq") else 1
            t.mul_(d.to(t.dtype).pow(power)[:, None])
        self.stats.rescale(d)


def _moments(optimizer, p) -> dict:
    """The optimizer's per-element state tensors of parameter ``p`` (Adam moments, SGD momentum)."""
    state = optimizer.state.get(p, {}) if optimizer is not None else {}
    return {k: v for k, v in state.items() if torch.is_tensor(v) and v.shape == p.shape
            and k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")}


class PrunedLoRACallback:
    """Prunes LoRA rank components during training (hooks of ``rankadaptor.lora.recover``)."""

    def __init__(self, schedule: PruneSchedule, adapter: str = "default", shrink_at_end: bool = True):
        self.schedule = schedule
        self.adapter = adapter
        self.shrink_at_end = shrink_at_end
        self.scorer = get_scorer(schedule.scorer)
        self.modules: dict[str, _Module] = {}
        self.events: list[dict] = []
        self._hooks = None

    # ---- hooks ---------------------------------------------------------------------------
    def on_train_begin(self, model, optimizer, total_steps: int) -> None:
        found = lora_modules(model, self.adapter)
        if not found:
            raise RankAdaptorError("PrunedLoRA found no LoRA module in the model; wrap it with LoRA first")
        bad = {n: m.r[self.adapter] for n, m in found.items() if m.r[self.adapter] != self.schedule.init_rank}
        if bad:
            raise RankAdaptorError(f"PrunedLoRA expects every module at init_rank {self.schedule.init_rank}; "
                                   f"got {dict(list(bad.items())[:3])}")
        self.sizes = {n: m.lora_A[self.adapter].weight.shape[1] + m.lora_B[self.adapter].weight.shape[0]
                      for n, m in found.items()}
        self.schedule = self.schedule.resolve(self.sizes, total_steps)  # a no-op check when already resolved
        self.modules = {n: _Module(m, self.adapter, self.schedule) for n, m in found.items()}
        self.per_module_target, self.target_params = self.schedule.targets(self.sizes)
        self.event_at = set(self.schedule.event_steps(total_steps))
        self._hooks = GateHooks(model, found, {n: m.stats for n, m in self.modules.items()}, self.adapter)

    def on_after_backward(self, step: int, model) -> None:
        for m in self.modules.values():
            m.zero_pruned()  # pruned gradients to zero before clipping and the optimiser see them
            m.stats.end_step()

    def on_step_end(self, step: int, model, optimizer) -> None:
        if step + 1 in self.event_at and self.params() > self.target_params:
            self._prune_event(step + 1, optimizer)
        for m in self.modules.values():
            m.zero_pruned(optimizer)

    def on_train_end(self, model) -> None:
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None
        check = self.budget()
        if not check["at_budget"]:
            log.warning("PrunedLoRA ended at %d LoRA params, not within one component of the budget %d",
                        check["final_params"], check["requested_params"])
        if self.shrink_at_end:
            shrink(model, self.ranks(), self.adapter)

    def budget(self) -> dict:
        return budget_check(self.params(), self.schedule.requested_params(self.sizes), self.sizes)

    def record(self) -> dict:
        return {"prunedlora": {"schedule": asdict(self.schedule), "final_ranks": self.ranks(),
                               "final_params": self.params(), "target_params": self.target_params,
                               "budget": self.budget(), "events": self.events}}

    # ---- checkpoints (``rankadaptor.lora.checkpoint``) -------------------------------------
    def state_dict(self) -> dict:
        """Masks, gate statistics and the pruning history (at a step boundary: nothing pending)."""
        return {"events": [dict(e) for e in self.events],
                "modules": {n: {"mask": m.mask.clone(), **m.stats.state_dict()} for n, m in self.modules.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` after ``on_train_begin`` (which builds the modules)."""
        saved = state["modules"]
        if set(saved) != set(self.modules):
            raise RankAdaptorError(f"PrunedLoRA checkpoint names {len(saved)} LoRA modules, the model has "
                                   f"{len(self.modules)}; it belongs to another model")
        for n, m in self.modules.items():
            s = saved[n]
            if s["mask"].shape != m.mask.shape:
                raise RankAdaptorError(f"PrunedLoRA checkpoint of module {n} has rank {s['mask'].numel()}, "
                                       f"the model {m.mask.numel()}")
            m.mask = s["mask"].to(device=m.mask.device, dtype=torch.bool).clone()
            m.active = m.mask.nonzero().flatten().tolist()
            m.stats.load_state_dict(s)
        self.events = [dict(e) for e in state["events"]]

    # ---- state ---------------------------------------------------------------------------
    def ranks(self) -> dict[str, int]:
        return {n: m.rank for n, m in self.modules.items()}

    def params(self) -> int:
        return sum(m.rank * m.size for m in self.modules.values())

    # ---- pruning -------------------------------------------------------------------------
    def _view(self, m: _Module) -> SimpleNamespace:
        """The active components' statistics, in the solve dtype on the adapter's device."""
        idx = torch.tensor(m.active, device=m.A.device)
        dt = solve_dtype(m.A.device)
        F = damped(m.stats.fisher[idx][:, idx].to(dt), self.schedule.damping)
        return SimpleNamespace(active=list(m.active), F=F, Finv=torch.linalg.inv(F), grad=m.stats.grad[idx].to(dt),
                               act=m.stats.act[idx].to(dt), A=m.A.detach()[idx], B=m.B.detach()[:, idx])

    @torch.no_grad()
    def _prune_event(self, at_step: int, optimizer) -> None:
        sched = self.schedule
        views = {n: self._view(m) for n, m in self.modules.items()}
        states = {n: self.scorer.prepare(v) for n, v in views.items()}
        removed: dict[str, list[int]] = {n: [] for n in self.modules}  # local indices into view.active
        params = self.params()

        def take(n: str) -> None:
            nonlocal params
            i = int(torch.argmin(self.scorer.scores(states[n])))
            self.scorer.remove(states[n], i)
            removed[n].append(i)
            params -= self.modules[n].size

        if self.per_module_target is not None:
            for n, m in self.modules.items():
                for _ in range(min(sched.prune_k, m.rank - max(self.per_module_target[n], sched.floor))):
                    take(n)
        else:
            norm = {n: self._normaliser(n, st) for n, st in states.items()}
            # a module's scores change only when it loses a component: cache each module's best score
            best_of = {n: float(self.scorer.scores(st).min()) / norm[n] for n, st in states.items()}
            for _ in range(sched.prune_k * len(self.modules)):
                if params <= self.target_params:
                    break
                open_ = [n for n, m in self.modules.items() if m.rank - len(removed[n]) > sched.floor]
                if not open_:
                    break
                best = min(open_, key=best_of.__getitem__)
                take(best)
                best_of[best] = float(self.scorer.scores(states[best]).min()) / norm[best]
        predicted, scales = 0.0, []
        for n, m in self.modules.items():
            if removed[n]:
                predicted += self._remove(m, views[n], removed[n], optimizer, scales)
        self.events.append({"step": at_step, "removed": sum(map(len, removed.values())), "params": self.params(),
                            "ranks": sorted(set(self.ranks().values())), "predicted_loss_increase": predicted,
                            "min_compensation_scale": min(scales) if scales else None})
        log.info("PrunedLoRA step %d: removed %d components, %d LoRA params left, predicted loss +%.4g",
                 at_step, self.events[-1]["removed"], self.params(), predicted)

    def _remove(self, m: _Module, view, local: list[int], optimizer, scales: list) -> float:
        """Remove ``local`` components of ``m`` (with compensation if on); returns the predicted loss change."""
        if self.schedule.compensate:
            delta, t = compensation(view.Finv, local, self.schedule.max_gate_change)
            scales.append(t)
        else:
            delta = torch.zeros_like(view.grad)
            delta[local] = -1.0
        d = torch.zeros(m.mask.numel(), dtype=m.stats.grad.dtype, device=m.A.device)
        d[torch.tensor(view.active, device=m.A.device)] = (1.0 + delta).to(d.dtype)  # removed ones get 0
        m.fold(d, optimizer)
        gone = {view.active[i] for i in local}
        m.active = [j for j in m.active if j not in gone]
        m.mask[sorted(gone)] = False
        m.stats.drop(~m.mask)
        m.zero_pruned(optimizer)
        return quadratic_change(view.F, delta)

    def _normaliser(self, n: str, state) -> float:
        """Global comparison: loss increase per freed parameter; unitless scores per module mean."""
        size = float(self.modules[n].size)
        if self.scorer.loss_units:
            return size
        s = self.scorer.scores(state)
        return size * max(float(s[torch.isfinite(s)].abs().mean()), 1e-30)


# ---- recover method and CLI flags ------------------------------------------------


class PrunedLoRAMethod:
    """``recover --method prunedlora``: uniform LoRA at ``init_rank``, pruned by the callback.

    Timing fields left at None are derived from the run length in ``prepare`` (or up front by
    ``for_budget``), so any caller gets a schedule that reaches the budget or a clear error.
    """

    name = "prunedlora"

    def __init__(self, alpha_rule: str = "2r", alpha: float = 16.0, dropout: float = 0.05, **schedule):
        self.schedule = PruneSchedule(**schedule)
        self.resolved: PruneSchedule | None = None  # the schedule of the run, timing filled in
        self.plan_kwargs = {"alpha_rule": alpha_rule, "alpha": alpha, "dropout": dropout}
        self.callback: PrunedLoRACallback | None = None

    @classmethod
    def for_budget(cls, model, target_params: int, steps: int, init_rank: int = 32, scope: str = "global",
                   **options) -> "PrunedLoRAMethod":
        """PrunedLoRA from rank ``init_rank`` down to ``target_params`` LoRA params in a ``steps``-step run.

        ``options``: any ``PruneSchedule`` field (scorer, compensate, warmup_steps, prune_every, prune_k,
        final_steps, floor, ...; timing left out is derived) or the plan's ``alpha_rule`` / ``alpha`` /
        ``dropout``. The schedule is resolved against ``model`` now: an unreachable budget or a schedule
        without room for fine-tuning after its last event is a ``RankAdaptorError`` before any training.
        ``recover`` must then run exactly ``steps`` steps (it re-checks).
        """
        method = cls(init_rank=init_rank, target_params=target_params, scope=scope, **options)
        method.resolved = method.schedule.resolve(method.sizes(model), steps)
        return method

    def _plan(self, model) -> RankPlan:
        return RankPlan.uniform(len(decoder_layer_names(model)), self.schedule.init_rank, **self.plan_kwargs)

    def sizes(self, model) -> dict[str, int]:
        """{module: d_in + d_out}: LoRA parameters per rank component of every targeted module."""
        shapes = linear_shapes(model)
        return {n: sum(shapes[n]) for n in self._plan(model).module_ranks(model)}

    def validate(self, model) -> None:
        self.schedule.targets(self.sizes(model))

    def prepare(self, model, config, total_steps: int):
        sizes = self.sizes(model)
        self.resolved = (self.resolved or self.schedule).resolve(sizes, total_steps)  # before wrapping or training
        log.info("PrunedLoRA schedule: %s", {k: getattr(self.resolved, k) for k in
                                             ("warmup_steps", "prune_every", "prune_k", "final_steps", "scope")})
        self.callback = PrunedLoRACallback(self.resolved)
        info = {"plan": self._plan(model).to_dict(), "initial_params": self.schedule.init_rank * sum(sizes.values())}
        return apply_plan(model, self._plan(model)), [self.callback], info

    def expected_ranks(self, peft_model):
        return self.callback.ranks() if self.callback is not None else None

    def settings(self) -> dict:
        """What a resumed run must share with the checkpoint (``recover`` compares it)."""
        return {"schedule": asdict(self.resolved or self.schedule), **self.plan_kwargs}


def method_from_args(args, **plan_kwargs) -> PrunedLoRAMethod:
    """The method from ``recover``'s PrunedLoRA flags (``rankadaptor.cli.prunedlora_flags``)."""
    if args.init_rank is None:
        raise RankAdaptorError("--method prunedlora needs --init-rank R0")
    target_rank = args.target_rank
    if target_rank is None and args.target_params is None:  # default budget: uniform --uniform-r's count
        target_rank = getattr(args, "uniform_r", 8)
    return PrunedLoRAMethod(init_rank=args.init_rank, target_rank=target_rank, target_params=args.target_params,
                            prune_every=args.prune_every, prune_k=args.prune_k, scope=args.scope,
                            scorer=args.prune_scorer, warmup_steps=args.prune_warmup, final_steps=args.prune_final,
                            floor=args.prune_floor, damping=args.prune_damping,
                            compensate=not args.prune_no_compensation, **plan_kwargs)
