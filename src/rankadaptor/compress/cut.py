"""Sub-adapters of a (super-)adapter at an exact rank plan: written to disk, or applied in memory.

A plan (a per-layer ``RankPlan`` with its per-module ``overrides``, or ``{module: rank}``) gives each
module of the adapter a rank b; each module's update dW = s·B·A is cut to rank b one of two ways:

* ``svd``: the best rank-b approximation of dW (Eckart–Young), from the exact SVD through QR
  factors that PARA uses (``compress.para.decompose`` / ``compress_to_ranks``);
* ``prefix``: the first b components as trained, (s·B[:, :b]) @ A[:b]. After nested-rank training
  (``lora/super_adapter.py``) a prefix is itself a trained rank-b adapter, which the SVD's rotation
  would mix with the trailing components. ``benchmarks/super_sweep.py`` compares the two.

Either way the result is a standard PEFT adapter (scale baked in, alpha = r per module, exact
``rank_pattern`` keys) whose parameter count Σ b·(d_in + d_out) is checked against the plan's.

``InMemoryCut`` is the fast path a search scores plans with: each module is decomposed once into
rotated factors (U√S and √S·Vᵀ for svd; s·B and A for prefix), a hook adds ``x A'[:b]ᵀ B'[:, :b]ᵀ``
to each base layer's output, and a plan is only a rank per module: no recomputation, no disk.

Bad input fails before any work, naming the bound: a plan asking a module for more rank than the
adapter has there, an adapter whose modules do not fit the model (trained on another model), a
budget below one component per kept module.
"""

from __future__ import annotations

import logging
import numbers
from pathlib import Path

import torch

from rankadaptor.compress.adapter_io import LoraAdapter, LoraModule, output_config, read_adapter
from rankadaptor.compress.para import (CompressConfig, Spectrum, compress_to_ranks, decompose, decompose_adapter,
                                       energy_rule_ranks_for_budget, save_compressed, select_ranks, truncate,
                                       uniform_ranks_for_budget)
from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.ranks import RankPlan, base_model_of, count_lora_params, linear_shapes

log = logging.getLogger(__name__)

CUTS = ("svd", "prefix")


# ---- checks (all before any decomposition) ----------------------------------------------------------
def _check_how(how: str) -> None:
    if how not in CUTS:
        raise RankAdaptorError(f"cut {how!r} unknown; choose from {list(CUTS)}")


def check_fits_model(adapter: LoraAdapter, model, adapter_dir=None, identity: dict | None = None) -> None:
    """Every adapted module exists in ``model`` with the adapter's shape; else it was made for another model."""
    shapes = linear_shapes(model)
    where = f" ({adapter_dir})" if adapter_dir else ""
    for name, m in adapter.modules.items():
        if name not in shapes:
            raise RankAdaptorError(f"the adapter{where} adapts module {name}, which the model does not have: it was "
                                   "trained on another model; cut it on the model it was trained on")
        if shapes[name] != (m.d_out, m.d_in):
            raise RankAdaptorError(
                f"the adapter{where} has module {name} as {m.d_out}x{m.d_in} (d_out x d_in), the model as "
                f"{shapes[name][0]}x{shapes[name][1]}: it was trained on another model (pruned differently?); "
                "cut it on the model it was trained on")
    trained_on = _recorded_identity(adapter_dir)
    if identity and trained_on and identity.get("sha256") and trained_on.get("sha256") \
            and identity["sha256"] != trained_on["sha256"]:
        raise RankAdaptorError(f"the adapter{where} was trained on model {trained_on.get('spec')!r} (weights sha256 "
                               f"{trained_on['sha256'][:12]}…), not on {identity.get('spec')!r} "
                               f"({identity['sha256'][:12]}…); cut it on the model it was trained on")


def _recorded_identity(adapter_dir) -> dict | None:
    """The model identity ``recover`` wrote into recovery.json beside the adapter, if any."""
    if adapter_dir is None or not (Path(adapter_dir) / "recovery.json").is_file():
        return None
    from rankadaptor.fileio import read_json

    record = read_json(Path(adapter_dir) / "recovery.json", what="recovery record")
    model = record.get("model") if isinstance(record, dict) else None
    return model if isinstance(model, dict) else None


def check_ranks(adapter: LoraAdapter, ranks: dict[str, int]) -> dict[str, int]:
    """Every module's rank within 0..(its rank in the adapter); returns the ranks for all modules (0 = dropped)."""
    unknown = sorted(n for n, b in ranks.items() if n not in adapter.modules and b)
    if unknown:
        raise RankAdaptorError(f"the plan gives rank to {len(unknown)} module(s) the adapter does not adapt "
                               f"(e.g. {unknown[0]}); plan only the modules it has, such as {next(iter(adapter.modules))}")
    full = {}
    for n, m in adapter.modules.items():
        b = ranks.get(n, 0)
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 0:
            raise RankAdaptorError(f"rank {b!r} for module {n} must be an integer >= 0")
        b = int(b)
        if b > m.r:
            raise RankAdaptorError(f"the plan asks module {n} for rank {b}, but the adapter has rank {m.r} there (the "
                                   f"bound); lower it to <= {m.r}, or train a wider super-adapter "
                                   "(recover --method super --method-arg rank=R)")
        full[n] = b
    if not any(full.values()):
        raise RankAdaptorError("the plan gives every module rank 0, so the cut would be empty; give some module rank >= 1")
    return full


def check_budget(adapter: LoraAdapter, budget: int) -> None:
    """A budget between one component per module (every module kept) and the whole adapter."""
    floor = sum(m.d_in + m.d_out for m in adapter.modules.values())
    if budget < floor:
        raise RankAdaptorError(f"budget {budget:,} is below one component per kept module: rank 1 in each of the "
                               f"{len(adapter.modules)} modules costs {floor:,} parameters; ask for at least {floor:,}")
    if budget > adapter.params:
        raise RankAdaptorError(f"budget {budget:,} is above the adapter's own {adapter.params:,} parameters; "
                               "there is nothing to cut")


# ---- cutting ----------------------------------------------------------------------------------------
def cut(adapter: LoraAdapter, ranks: dict[str, int], how: str = "svd",
        spectra: dict[str, Spectrum] | None = None) -> tuple[LoraAdapter, dict]:
    """The sub-adapter at ``ranks`` (modules left out or at 0 are dropped) and its report."""
    _check_how(how)
    full = check_ranks(adapter, ranks)
    if how == "svd":
        new, report = compress_to_ranks(adapter, full, spectra, settings={"cut": "svd"})
    else:
        new, report = _prefix_cut(adapter, full)
    planned = sum(b * (adapter.modules[n].d_in + adapter.modules[n].d_out) for n, b in full.items())
    if new.params != planned:
        raise RankAdaptorError(f"internal error: the {how} cut has {new.params} parameters, its plan {planned}")
    report["totals"]["plan_params"] = planned
    return new, report


def _prefix_cut(adapter: LoraAdapter, ranks: dict[str, int]) -> tuple[LoraAdapter, dict]:
    """The first b components of each module with its scale baked into B (alpha = r, scale 1)."""
    modules, rows = {}, []
    for n, m in adapter.modules.items():
        b = ranks[n]
        rows.append({"module": n, "d_in": m.d_in, "d_out": m.d_out, "old_rank": m.r, "new_rank": b,
                     "params_before": m.params, "params_after": b * (m.d_in + m.d_out), "dropped": b == 0})
        if b:
            modules[n] = LoraModule(name=n, A=m.A[:b].clone(), B=(m.B[:, :b] * m.scale).contiguous(), r=b,
                                    alpha=float(b), scale=1.0, embedding=m.embedding)
    new = LoraAdapter(config=output_config(adapter.config, modules), modules=modules,
                      extra_tensors=adapter.extra_tensors, key_prefix=adapter.key_prefix)
    totals = {"modules_before": len(adapter.modules), "modules_after": len(modules),
              "modules_dropped": [r["module"] for r in rows if r["dropped"]], "params_before": adapter.params,
              "params_after": new.params, "params_kept_fraction": new.params / adapter.params}
    return new, {"settings": {"cut": "prefix"}, "cut": {}, "totals": totals, "modules": rows}


def plan_ranks(plan: RankPlan | dict, model) -> dict[str, int]:
    """{module: rank} of a RankPlan on ``model`` (layer ranks, then overrides), or a given dict."""
    if isinstance(plan, RankPlan):
        return plan.module_ranks(model)
    if isinstance(plan, dict):
        return dict(plan)
    raise RankAdaptorError(f"a plan is a RankPlan or {{module: rank}}, not {type(plan).__name__}")


def cut_to_plan(adapter_dir, model, plan: RankPlan | dict, out, how: str = "svd", identity: dict | None = None,
                overwrite: bool = False) -> dict:
    """Read an adapter, cut it to ``plan`` on ``model`` and write a PEFT adapter + compress.json at ``out``."""
    from rankadaptor.fileio import refuse_same_path
    from rankadaptor.provenance import sha256_file

    _check_how(how)
    adapter_dir, out = Path(adapter_dir), Path(out)
    refuse_same_path(adapter_dir, out)
    if out.exists() and not overwrite:
        raise RankAdaptorError(f"output directory {out} already exists; choose another or remove it")
    adapter = read_adapter(adapter_dir)
    check_fits_model(adapter, model, adapter_dir, identity)
    ranks = plan_ranks(plan, model)
    new, report = cut(adapter, ranks, how)
    if isinstance(plan, RankPlan):
        planned = count_lora_params(model, plan)
        if new.params != planned:
            raise RankAdaptorError(f"the cut has {new.params:,} LoRA parameters but the plan counts {planned:,} on "
                                   "this model (the plan names modules the adapter does not adapt)")
        report["plan"] = plan.to_dict()
    report["input"] = {"adapter_dir": str(adapter_dir.resolve()),
                       "adapter_model_sha256": sha256_file(adapter_dir / "adapter_model.safetensors")}
    save_compressed(out, new, report, overwrite=overwrite)
    log.info("cut %s (%s) to %d LoRA parameters -> %s", adapter_dir, how, new.params, out)
    return report


# ---- allocation rules at a budget, all from the same wide adapter -----------------------------------
def _para_rule(spectra, costs, budget):
    return select_ranks(spectra, costs, CompressConfig(target_params=budget))[0]


def _energy_rule(spectra, costs, budget):
    return energy_rule_ranks_for_budget(spectra, costs, budget)[0]


# name -> (spectra, costs, budget) -> {module: rank}; each fits the budget
RULES = {
    "para": _para_rule,  # PARA: one global threshold over all singular values
    "uniform": uniform_ranks_for_budget,  # uniform truncation: the largest equal rank that fits
    "energy": _energy_rule,  # PEFT's per-layer energy rule, tau bisected to the budget
}


def rule_ranks(rule: str, adapter: LoraAdapter, budget: int, spectra=None) -> dict[str, int]:
    """Module ranks of an allocation rule at ``budget`` (checked first, then the values-only SVDs)."""
    if rule not in RULES:
        raise RankAdaptorError(f"allocation rule {rule!r} unknown; choose from {sorted(RULES)}")
    check_budget(adapter, budget)
    if spectra is None:
        spectra, _ = decompose_adapter(adapter)
    costs = {n: m.d_in + m.d_out for n, m in adapter.modules.items()}
    return RULES[rule](spectra, costs, budget)


# ---- the in-memory fast path ------------------------------------------------------------------------
_LIVE_CUT = "_rankadaptor_live_cut"  # the base model's attribute naming the InMemoryCut whose hooks it carries


class InMemoryCut:
    """The adapter on ``model`` as hooks whose rank per module is a number to set; ``with`` removes them.
    One live cut per model: attaching a second before the first is removed is refused.

    ``model`` is the plain base model (no LoRA wrapping); its outputs then equal those of the PEFT
    adapter ``cut(adapter, ranks, how)`` writes, loaded onto the same model.
    """

    def __init__(self, model, adapter: LoraAdapter, how: str = "svd", adapter_dir=None, identity: dict | None = None):
        _check_how(how)
        self.model = base_model_of(model)
        if any(".lora_" in n for n, _ in self.model.named_modules()):
            raise RankAdaptorError("InMemoryCut needs the base model without LoRA layers; pass the unwrapped model")
        check_fits_model(adapter, self.model, adapter_dir, identity)
        self.adapter, self.how = adapter, how
        self.factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        modules = dict(self.model.named_modules())
        for n, m in adapter.modules.items():
            w = modules[n].weight
            if how == "svd":  # balanced rotated factors of the whole update; a rank-b cut is their prefix
                B, A = truncate(decompose(m.B, m.A, m.scale), m.r, torch.float64)
            else:
                B, A = m.B * m.scale, m.A
            self.factors[n] = (A.to(w.device, w.dtype).contiguous(), B.to(w.device, w.dtype).contiguous())
        self.ranks = {n: m.r for n, m in adapter.modules.items()}
        self._hooks: list = []
        self.attach()

    def attach(self) -> None:
        if not self._hooks:
            # hooks are invisible in the module tree: a second cut (or a PEFT adapter loaded on top) would add its
            # update to this one's, and every score after it would be of the sum. One live cut per model.
            other = self.model.__dict__.get(_LIVE_CUT)
            if other is not None and other is not self:
                raise RankAdaptorError("this model already carries another in-memory cut's hooks (an open "
                                       "SuperFidelity or InMemoryCut); call its close() / remove() first, or "
                                       "use a fresh copy of the model")
            modules = dict(self.model.named_modules())
            self._hooks = [modules[n].register_forward_hook(self._hook(n)) for n in self.factors]
            self.model.__dict__[_LIVE_CUT] = self

    def _hook(self, name: str):
        def hook(module, inputs, output):
            b = self.ranks[name]
            if b == 0:
                return None
            A, B = self.factors[name]
            return output + torch.nn.functional.linear(torch.nn.functional.linear(inputs[0], A[:b]), B[:, :b])
        return hook

    def set_ranks(self, ranks: dict[str, int]) -> None:
        """The plan's ranks (modules it leaves out get 0); checked against the adapter's."""
        self.ranks = check_ranks(self.adapter, ranks)

    def params(self) -> int:
        return sum(b * (self.adapter.modules[n].d_in + self.adapter.modules[n].d_out) for n, b in self.ranks.items())

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self.model.__dict__.get(_LIVE_CUT) is self:
            del self.model.__dict__[_LIVE_CUT]

    def __enter__(self) -> "InMemoryCut":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
