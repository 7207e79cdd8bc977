"""Allocators: one-shot rank plans at a LoRA parameter budget, each a baseline and a seed of the search.

Every allocator returns an ``Allocation``: a per-module ``RankPlan`` whose exact LoRA parameter
count is within ``tolerance`` (1 %) of the budget, the ranks the method itself chose before it was
fitted to the budget, and a note saying how it was fitted. The plan trains like any other
(``recover --ranks plan.json``) and seeds a search (``SearchSettings.seeds``).

* ``uniform``: rank r everywhere (the budget's own definition).
* ``lora_star``: RankAdaptor §2's LoRA*: ranks 4, 6, 10, 12 by quarter of the layers, scaled to the budget.
* ``eva``: PEFT's EVA (Paischer et al., "Explained Variance Adaptation"): incremental SVD of every
  module's input activations on a few batches, ranks redistributed by explained variance under
  PEFT's own budget of r x (number of modules) *ranks*; that is a rank budget, not a parameter
  budget, so the ranks are scaled by one common factor to the parameter budget (``fit_to_budget``).
* ``para``: PARA's allocation: train uniform ``high_rank`` for a short run, then one global
  threshold over all singular values of all modules (``compress.para.select_ranks``) at the budget.
* ``prunedlora``: PrunedLoRA's final allocation: the ranks left when a PrunedLoRA run at the budget ends.

``fit_to_budget`` is the one way a method's ranks are brought to a budget: multiply every rank by
one factor, round (largest remainders first) and step single ranks until the count is inside the band.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.ranks import DEFAULT_TARGETS, RankPlan, count_lora_params, decoder_layer_names, module_costs

log = logging.getLogger(__name__)


@dataclass
class Allocation:
    """A plan at the budget, and where it came from."""

    name: str
    plan: RankPlan
    params: int
    budget: int
    raw_ranks: dict[str, int]  # what the method chose before fitting to the budget
    raw_params: int
    note: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (EVA's component tensors left out)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("plan", "extra")}
        d["plan"] = self.plan.to_dict()
        d["extra"] = {k: v for k, v in self.extra.items() if k != "components"}
        d["relative"] = self.params / self.budget
        return d


def module_plan(model, ranks: dict[str, int], **plan_kwargs) -> RankPlan:
    """A per-module ``RankPlan`` from {full module name: rank}: each layer's most common rank, overrides for the rest.

    Every targeted module must be named (0 = no LoRA there); a name the model lacks is refused.
    """
    from collections import Counter

    costs = module_costs(model)
    known = {n for layer in costs for n in layer}
    unknown = sorted(set(ranks) - known)
    missing = sorted(known - set(ranks))
    if unknown or missing:
        raise RankAdaptorError(f"module ranks do not match the model: unknown {unknown[:3]}, missing {missing[:3]}")
    layer_ranks, overrides = [], {}
    for layer in costs:
        mine = [int(ranks[n]) for n in layer]
        base = Counter(mine).most_common(1)[0][0]
        layer_ranks.append(base)
        overrides.update({n: r for n, r in zip(layer, mine) if r != base})
    return RankPlan(ranks=layer_ranks, overrides=overrides, **plan_kwargs)


def fit_to_budget(ranks: dict[str, int], costs: dict[str, int], budget: float, tolerance: float = 0.01,
                  caps: dict[str, int] | None = None) -> tuple[dict[str, int], float]:
    """Scale ``ranks`` by one common factor to ``budget`` ± tolerance (rank 0 stays 0); returns (ranks, factor).

    The proportions the method chose are kept as well as integers allow: round down, then give one more
    rank to the modules with the largest remainders (cheapest first among ties) while the count stays
    below the budget; ``caps`` bound each module (e.g. min(d_in, d_out)).
    """
    caps = caps or {}
    cost = lambda r: sum(r[n] * costs[n] for n in r)  # noqa: E731
    raw = cost(ranks)
    if raw <= 0:
        raise RankAdaptorError("the method chose rank 0 everywhere: nothing to scale to the budget")
    if abs(raw - budget) <= tolerance * budget:
        return dict(ranks), 1.0
    factor = budget / raw
    exact = {n: r * factor for n, r in ranks.items()}
    out = {n: min(int(math.floor(v)), caps.get(n, 1 << 30)) for n, v in exact.items()}
    order = sorted((n for n in ranks if ranks[n] > 0), key=lambda n: (-(exact[n] - math.floor(exact[n])), costs[n]))
    used = cost(out)
    for n in order * 4:  # several passes: a module may take more than one extra rank when others are capped
        if used >= budget * (1 - tolerance / 2):
            break
        if out[n] < caps.get(n, 1 << 30) and used + costs[n] <= budget * (1 + tolerance):
            out[n] += 1
            used += costs[n]
    if abs(used - budget) > tolerance * budget:
        raise RankAdaptorError(f"could not bring the ranks to {budget:.0f} ± {tolerance:.0%} LoRA parameters "
                               f"(reached {used}); the per-module caps leave too little room")
    return out, factor


def _fitted(name: str, model, raw: dict[str, int], budget: int, tolerance: float, note: str, t0: float,
            caps: dict[str, int] | None = None, extra: dict | None = None) -> Allocation:
    costs = {n: c for layer in module_costs(model) for n, c in layer.items()}
    raw = {n: int(raw.get(n, 0)) for n in costs}
    ranks, factor = fit_to_budget(raw, costs, budget, tolerance, caps)
    plan = module_plan(model, ranks)
    params = count_lora_params(model, plan)
    raw_params = sum(raw[n] * costs[n] for n in raw)
    if factor != 1.0:
        note += f"; scaled by {factor:.3f} from {raw_params:,} to the budget (largest remainders)"
    return Allocation(name, plan, params, int(budget), raw, raw_params, note.lstrip("; "), time.perf_counter() - t0,
                      extra or {})


def uniform(model, budget: int, tolerance: float = 0.01, **_) -> Allocation:
    """The same rank in every module: the budget's rank r (= budget / cost of one rank everywhere)."""
    t0 = time.perf_counter()
    costs = module_costs(model)
    r = max(1, round(budget / sum(sum(layer.values()) for layer in costs)))
    return _fitted("uniform", model, {n: r for layer in costs for n in layer}, budget, tolerance, f"rank {r} everywhere",
                   t0)


def lora_star(model, budget: int, tolerance: float = 0.01, **_) -> Allocation:
    """RankAdaptor §2's LoRA*: ranks rising 4, 6, 10, 12 by quarter of the layers, scaled to the budget."""
    t0 = time.perf_counter()
    star = RankPlan.lora_star(len(decoder_layer_names(model)))
    return _fitted("lora-star", model, star.module_ranks(model), budget, tolerance, "LoRA* 4/6/10/12 by quarter", t0)


def eva(model, budget: int, batches: list[dict], r: int = 8, rho: float = 2.0, tolerance: float = 0.01,
        targets=DEFAULT_TARGETS, **_) -> Allocation:
    """PEFT's EVA rank redistribution on ``batches`` (dicts of input_ids / attention_mask / labels).

    EVA keeps a budget of ``r`` ranks per module on average (a rank budget), so its parameter count
    differs from ``budget`` whenever it moves rank between modules of different widths; the ranks
    are then scaled to the parameter budget by one factor. The SVD components EVA computed are kept
    in ``extra["components"]`` (module -> rows of A) for an EVA-initialised run (``eva_init``).
    """
    import torch
    from peft import EvaConfig, LoraConfig
    from peft.tuners.lora.eva import get_eva_state_dict

    t0 = time.perf_counter()
    if not batches:
        raise RankAdaptorError("EVA needs at least one batch of training data")
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights="eva",
                        eva_config=EvaConfig(rho=rho))
    with torch.no_grad():
        state = get_eva_state_dict(model, batches, peft_config=config, show_progress_bar=False)
    raw = {n: int(w.shape[0]) for n, w in state.items()}
    caps = {n: int(w.shape[0]) for n, w in state.items()}  # EVA's components are all there is to start from
    costs = {n: c for layer in module_costs(model) for n, c in layer.items()}
    if sum(raw.get(n, 0) * costs[n] for n in costs) < budget * (1 - tolerance):
        caps = None  # scaling up: modules may go beyond EVA's components (extra rows start as PEFT's default)
    alloc = _fitted("eva", model, raw, budget, tolerance, f"EVA r={r}, rho={rho} (rank budget {r} x modules)", t0,
                    caps, {"components": {n: w.detach().cpu() for n, w in state.items()}})
    return alloc


def para(model, tokenizer, data, budget: int, config, high_rank: int = 32, tolerance: float = 0.01, **_) -> Allocation:
    """PARA's allocation: a short uniform ``high_rank`` run (``config``), then one global cut at the budget."""
    from rankadaptor.compress.para import CompressConfig, decompose, select_ranks
    from rankadaptor.lora.recover import recover
    from rankadaptor.lora.ranks import base_model_of
    from peft.tuners.lora import LoraLayer

    t0 = time.perf_counter()
    wide = RankPlan.uniform(len(decoder_layer_names(model)), high_rank)
    res = recover(model, tokenizer, wide, config, data=data)
    spectra, costs = {}, {}
    for name, mod in base_model_of(res.model).named_modules():
        if isinstance(mod, LoraLayer) and "default" in mod.lora_A:
            A, B = mod.lora_A["default"].weight, mod.lora_B["default"].weight
            spectra[name] = decompose(B, A, float(mod.scaling["default"]), vectors=False)
            costs[name] = A.shape[1] + B.shape[0]
    ranks, detail = select_ranks(spectra, costs, CompressConfig(target_params=int(budget)))
    note = f"PARA's global cut of a uniform r={high_rank} adapter after {res.record['total_steps']} steps"
    return _fitted("para", model, ranks, budget, tolerance, note, t0,
                   extra={"threshold": detail.get("threshold"), "wide_val_loss": res.record["val_loss"]})


def prunedlora(model, tokenizer, data, budget: int, config, method, tolerance: float = 0.01, **_) -> Allocation:
    """PrunedLoRA's final allocation: the ranks its run at the budget (``method``) ends with."""
    from rankadaptor.lora.recover import recover

    t0 = time.perf_counter()
    res = recover(model, tokenizer, method=method, config=config, data=data)
    ranks = res.record["prunedlora"]["final_ranks"]
    note = f"PrunedLoRA's ranks after {res.record['total_steps']} steps"
    return _fitted("prunedlora", model, ranks, budget, tolerance, note, t0,
                   extra={"run_val_loss": res.record["val_loss"]})


ALLOCATORS: dict[str, Callable[..., Allocation]] = {
    "uniform": uniform,
    "lora-star": lora_star,
    "eva": eva,
    "para": para,
    "prunedlora": prunedlora,
}


def get_allocator(name: str) -> Callable[..., Allocation]:
    if name not in ALLOCATORS:
        raise RankAdaptorError(f"allocator {name!r} unknown; valid: {sorted(ALLOCATORS)}")
    return ALLOCATORS[name]


def eva_batches(data, pad_id: int, batch_size: int = 4, n_batches: int = 8) -> list[dict]:
    """The first ``n_batches`` training batches of a ``RecoveryData`` as EVA's dataloader (labels mask padding)."""
    from rankadaptor.lora.recover import _collate

    blocks = data.train[:batch_size * n_batches]
    return [_collate(blocks[i:i + batch_size], pad_id) for i in range(0, len(blocks), batch_size)]


class EvaMethod:
    """EVA-initialised LoRA at a plan: lora_A rows start from EVA's SVD components (B = 0, as in PEFT's EVA).

    A module given more rank than EVA computed components for keeps PEFT's default start in the extra rows.
    """

    name = "eva"

    def __init__(self, plan: RankPlan, components: dict):
        self.plan, self.components = plan, components

    def validate(self, model) -> None:
        self.plan.module_ranks(model)

    def settings(self) -> dict:
        return {"plan": self.plan.to_dict()}

    def prepare(self, model, config, total_steps: int):
        import torch

        from rankadaptor.lora.ranks import apply_plan, base_model_of

        peft_model = apply_plan(model, self.plan)
        base = base_model_of(peft_model)
        copied = 0
        with torch.no_grad():
            for name, w in self.components.items():
                mod = base.get_submodule(name)
                if not hasattr(mod, "lora_A") or "default" not in mod.lora_A:
                    continue  # rank 0 in the plan
                A = mod.lora_A["default"].weight
                k = min(A.shape[0], w.shape[0])
                A[:k].copy_(w[:k].to(A.dtype))
                copied += k
        info = {"plan": self.plan.to_dict(), "planned_params": count_lora_params(model, self.plan),
                "eva_rows_initialised": copied}
        return peft_model, [], info
