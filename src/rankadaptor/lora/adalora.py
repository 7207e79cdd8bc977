"""AdaLoRA baseline (RankAdaptor's third baseline) through PEFT, with an equal-parameter final budget.

PEFT's AdaLoRA needs ``total_step`` and a call to ``update_and_allocate(step)`` after every
optimizer step, or it silently trains as plain LoRA; the ``AdaLoraCallback`` makes that call
from the recovery loop's ``on_step_end`` (gradients are still present there, which the
sensitivity estimate needs). Warm-up (``tinit``) and final (``tfinal``) phases are fractions of
the run, so a 40-step CPU run and a 2-epoch run both get all three phases.

PEFT budgets AdaLoRA in *ranks* (``target_r`` × number of modules), but modules differ in size
(an MLP projection costs ``576 + 1536`` per rank in SmolLM2, a k_proj ``576 + 192``), so an equal
rank count is not an equal parameter count. The allocator's masking step is replaced here by one
that keeps the most important rank components, in PEFT's own importance order, while their
parameter cost Σ (d_in + d_out) stays within a budget that falls on PEFT's cubic schedule from the
initial parameter count to the target: the final adapter has at most ``target_params``
effective LoRA parameters and less than one component fewer.
"""

from __future__ import annotations

import logging
import math

import torch

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.ranks import DEFAULT_TARGETS, RankPlan, count_lora_params, linear_shapes

log = logging.getLogger(__name__)


class AdaLoraMethod:
    """Recovery method ``adalora``: budget = ``target_params`` or uniform rank ``uniform_r``'s count."""

    name = "adalora"

    def __init__(self, target_params: int | None = None, uniform_r: int = 8, init_ratio: float = 1.5,
                 tinit_frac: float = 0.1, tfinal_frac: float = 0.2, delta_t: int = 1,
                 target_modules=DEFAULT_TARGETS, orth_reg_weight: float = 0.5):
        if target_params is not None and target_params < 1:
            raise RankAdaptorError(f"--target-params {target_params} must be >= 1")
        if uniform_r < 1:
            raise RankAdaptorError(f"uniform rank {uniform_r} must be >= 1")
        if init_ratio <= 1:
            raise RankAdaptorError(f"init_ratio {init_ratio} must be > 1 (AdaLoRA starts above its target)")
        if not (0 <= tinit_frac < 1 and 0 <= tfinal_frac < 1 and tinit_frac + tfinal_frac < 1):
            raise RankAdaptorError(f"tinit_frac {tinit_frac} + tfinal_frac {tfinal_frac} must be in [0, 1)")
        self.target_params = target_params
        self.uniform_r = uniform_r
        self.init_ratio = init_ratio
        self.tinit_frac, self.tfinal_frac, self.delta_t = tinit_frac, tfinal_frac, delta_t
        self.target_modules = tuple(target_modules)
        self.orth_reg_weight = orth_reg_weight

    def budget(self, model) -> dict:
        """Target parameter count, the equivalent average rank, and AdaLoRA's init_r / target_r."""
        unit = RankPlan.uniform(_n_layers(model), 1, target_modules=self.target_modules)
        per_rank = count_lora_params(model, unit)  # Σ (d_in + d_out) over all targeted modules
        uniform_params = self.uniform_r * per_rank
        target = self.target_params if self.target_params is not None else uniform_params
        r_eq = target / per_rank
        init_r = max(2, math.ceil(self.init_ratio * r_eq))
        target_r = max(1, min(init_r - 1, round(r_eq)))
        max_r = min(min(s) for n, s in linear_shapes(model).items() if n in unit.module_ranks(model))
        if init_r > max_r:
            raise RankAdaptorError(
                f"target {target} params needs AdaLoRA init_r {init_r} > smallest module dimension {max_r}; "
                "lower --target-params"
            )
        if target > init_r * per_rank:
            raise RankAdaptorError(f"target params {target} above the initial budget {init_r * per_rank}")
        return {"target_params": int(target), "uniform_r": self.uniform_r, "uniform_params": int(uniform_params),
                "equivalent_r": r_eq, "init_r": init_r, "target_r": target_r, "init_params": init_r * per_rank}

    def validate(self, model) -> None:
        self.budget(model)

    def settings(self) -> dict:
        """What a resumed run must share with the checkpoint (``recover`` compares it)."""
        return {"target_params": self.target_params, "uniform_r": self.uniform_r, "init_ratio": self.init_ratio,
                "tinit_frac": self.tinit_frac, "tfinal_frac": self.tfinal_frac, "delta_t": self.delta_t,
                "target_modules": list(self.target_modules), "orth_reg_weight": self.orth_reg_weight}

    def phases(self, total_steps: int) -> tuple[int, int]:
        tinit = round(self.tinit_frac * total_steps)
        # PEFT fixes the final budget at step total_step - tfinal; the loop's last step is total_step - 1,
        # so without a final phase of at least one step the budget is never reached
        tfinal = max(1, round(self.tfinal_frac * total_steps))
        if total_steps - tinit - tfinal < 2:
            raise RankAdaptorError(
                f"AdaLoRA needs at least 2 budget-reduction steps; {total_steps} steps leave "
                f"{total_steps - tinit - tfinal} after tinit={tinit}, tfinal={tfinal}; train longer"
            )
        return tinit, tfinal

    def prepare(self, model, config, total_steps: int):
        from peft import AdaLoraConfig, get_peft_model

        budget = self.budget(model)
        tinit, tfinal = self.phases(total_steps)
        unit = RankPlan.uniform(_n_layers(model), 1, target_modules=self.target_modules)
        targets = sorted(unit.module_ranks(model))
        cfg = AdaLoraConfig(
            init_r=budget["init_r"], target_r=budget["target_r"], tinit=tinit, tfinal=tfinal,
            deltaT=self.delta_t, total_step=total_steps, target_modules=targets,
            lora_alpha=2 * budget["init_r"],  # scale alpha / r = 2, as the plan rule "2r"
            lora_dropout=0.05, orth_reg_weight=self.orth_reg_weight, task_type="CAUSAL_LM",
        )
        peft_model = get_peft_model(model, cfg)
        allocator = peft_model.base_model.rankallocator
        allocator.mask_to_budget = _ParamBudgetMask(allocator, budget["init_params"], budget["target_params"])
        info = {"adalora": {**budget, "tinit": tinit, "tfinal": tfinal, "deltaT": self.delta_t,
                            "total_step": total_steps}}
        return peft_model, [AdaLoraCallback(peft_model)], info


class _ParamBudgetMask:
    """Replacement for ``RankAllocator.mask_to_budget``: keep components by importance within a parameter budget."""

    def __init__(self, allocator, init_params: int, target_params: int):
        self.allocator = allocator
        self.init_params = init_params
        self.target_params = target_params

    def param_budget(self, rank_budget: int) -> float:
        a = self.allocator
        span = max(1, a.init_bgt - a.target_bgt)
        frac = min(1.0, max(0.0, (a.init_bgt - rank_budget) / span))
        return self.init_params - frac * (self.init_params - self.target_params)

    def __call__(self, model, budget):
        a, name = self.allocator, self.allocator.adapter_name
        params = dict(model.named_parameters())
        scores, costs, names = [], [], []
        for n_e in params:
            if f"lora_E.{name}" not in n_e:
                continue
            n_a, n_b = n_e.replace("lora_E", "lora_A"), n_e.replace("lora_E", "lora_B")
            # PEFT's triplet score: E's own score plus the mean scores of A's row and B's column
            triplet = (a._element_score(n_e).view(-1) + a._element_score(n_a).mean(dim=1)
                       + a._element_score(n_b).mean(dim=0))
            scores.append(triplet)
            costs.append(torch.full_like(triplet, params[n_a].shape[1] + params[n_b].shape[0]))
            names.append(n_e)
        flat_s, flat_c = torch.cat(scores), torch.cat(costs)
        order = torch.argsort(flat_s, descending=True, stable=True)
        within = torch.cumsum(flat_c[order], 0) <= self.param_budget(budget)
        keep = torch.zeros_like(flat_s, dtype=torch.bool)
        keep[order[within]] = True
        rank_pattern, start = {}, 0
        with torch.no_grad():
            for n_e, s in zip(names, scores):
                k = keep[start:start + s.numel()]
                start += s.numel()
                params[n_e].masked_fill_(~k.view(-1, 1), 0.0)
                rank_pattern[n_e] = k.tolist()
        return rank_pattern


class AdaLoraCallback:
    """Calls ``update_and_allocate`` after every optimizer step and records how ranks moved."""

    def __init__(self, peft_model):
        self.peft_model = peft_model
        self.history: list[dict] = []

    def on_step_end(self, step, model, optimizer) -> None:
        model.base_model.update_and_allocate(step)
        if step % 5 == 0 or step == model.peft_config["default"].total_step - 1:
            self.history.append({"step": step + 1, "total_rank": sum(current_ranks(model).values())})

    def state_dict(self) -> dict:
        """The rank allocator's importance EMAs, the rank pattern fixed so far and the history."""
        alloc = self.peft_model.base_model.rankallocator
        config = self.peft_model.peft_config["default"]
        return {"ipt": dict(alloc.ipt), "exp_avg_ipt": dict(alloc.exp_avg_ipt), "exp_avg_unc": dict(alloc.exp_avg_unc),
                "rank_pattern": config.rank_pattern, "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        alloc = self.peft_model.base_model.rankallocator
        alloc.ipt, alloc.exp_avg_ipt, alloc.exp_avg_unc = (dict(state[k]) for k in ("ipt", "exp_avg_ipt", "exp_avg_unc"))
        self.peft_model.peft_config["default"].rank_pattern = state["rank_pattern"]
        self.history = [dict(h) for h in state["history"]]

    def record(self) -> dict:
        ranks = current_ranks(self.peft_model)
        return {"adalora_final_ranks": ranks, "adalora_effective_params": effective_params(self.peft_model),
                "adalora_rank_history": self.history}


def current_ranks(peft_model) -> dict[str, int]:
    """{module name: number of non-zero singular values (lora_E)} — the effective AdaLoRA rank."""
    out = {}
    for n, p in peft_model.named_parameters():
        if ".lora_E." in n:
            out[n.split(".lora_E.")[0].removeprefix("base_model.model.")] = int((p != 0).sum())
    return out


def effective_params(peft_model) -> int:
    """Σ r_effective · (d_in + d_out): comparable to a LoRA plan's ``count_lora_params``."""
    total, params = 0, dict(peft_model.named_parameters())
    for n, p in params.items():
        if ".lora_A." in n:
            e, b = params[n.replace("lora_A", "lora_E")], params[n.replace("lora_A", "lora_B")]
            total += int((e != 0).sum()) * (p.shape[1] + b.shape[0])
    return total


def _n_layers(model) -> int:
    from rankadaptor.lora.ranks import decoder_layer_names

    return len(decoder_layer_names(model))
