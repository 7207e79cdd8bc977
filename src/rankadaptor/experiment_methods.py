"""The method table behind ``experiments.train_method``: one trainer per way of spending a LoRA budget.

Each trainer takes (pruned, recipe, seed, budget, out=, plan=, data=, **overrides) and returns a
``MethodRun``: plain plans (uniform, LoRA*, a given plan), AdaLoRA, PrunedLoRA at the budget, PARA
after high-rank training, one super-adapter per seed cut to the budget four ways, and the allocators'
plans trained as static plans (plus EVA with its own initialisation). They are most of the kit's code
and build on ``experiments`` (Recipe, ModelCache, MethodRun, the budget), so they sit in their own
module and ``train_method`` reaches them at call time; ``experiments`` stays a short read of the
kit's contract.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from rankadaptor.errors import RankAdaptorError
from rankadaptor.experiments import WORK, MethodRun, ModelCache, Recipe, uniform_budget


# ---- plain plans, AdaLoRA, PrunedLoRA and PARA ------------------------------------------------------
def prunedlora_at_budget(model, init_rank: int, target_params: int, steps: int, **overrides):
    """PrunedLoRA sized to the run: global scope, timing derived from the step count by
    ``PrunedLoRAMethod.for_budget`` (reaches the target with fine-tuning after the last event, or raises)."""
    from rankadaptor.lora.pruned_lora import PrunedLoRAMethod

    return PrunedLoRAMethod.for_budget(model, target_params, steps, init_rank=init_rank, scope="global", **overrides)


def _recover(pruned: ModelCache, recipe: Recipe, seed: int, out, data, plan=None, method=None, **overrides):
    from rankadaptor.lora.recover import recover

    loaded = pruned.fresh()
    return recover(loaded.model, loaded.tokenizer, plan=plan, method=method,
                   config=recipe.recovery_config(seed, **overrides), data=data, out=out, overwrite=out is not None)


def _plan_run(label: str, plan_for: Callable[[int], Any], targets: bool = False):
    def run(pruned, recipe, seed, budget, out=None, plan=None, data=None, **overrides):
        from rankadaptor.lora.ranks import decoder_layer_names

        the_plan = plan if plan is not None else plan_for(len(decoder_layer_names(pruned.model)))
        res = _recover(pruned, recipe, seed, out, data, plan=the_plan, **overrides)
        # a static plan's count is fixed by its ranks: reported against the budget, not forced onto it
        return MethodRun(label, res.model, res.record, targets, adapter=str(out) if out else None)
    return run


def _uniform(pruned, recipe, seed, budget, **kw):
    from rankadaptor.lora.ranks import RankPlan

    plan_for = lambda n: RankPlan.uniform(n, recipe.uniform_r)  # noqa: E731
    return _plan_run("uniform", plan_for, targets=True)(pruned, recipe, seed, budget, **kw)


def _lora_star(pruned, recipe, seed, budget, **kw):
    from rankadaptor.lora.ranks import RankPlan

    # RankAdaptor §2's LoRA* has fixed ranks; on a pruned model its count is what those ranks cost
    return _plan_run("lora-star", RankPlan.lora_star)(pruned, recipe, seed, budget, **kw)


def _adalora(pruned, recipe, seed, budget, out=None, plan=None, data=None, **overrides):
    from rankadaptor.lora.adalora import AdaLoraMethod

    res = _recover(pruned, recipe, seed, out, data, method=AdaLoraMethod(target_params=budget), **overrides)
    return MethodRun("adalora", res.model, res.record, True, adapter=str(out) if out else None)


def _prunedlora(pruned, recipe, seed, budget, out=None, plan=None, data=None, **overrides):
    method = prunedlora_at_budget(pruned.model, recipe.high_rank, budget, recipe.steps)
    res = _recover(pruned, recipe, seed, out, data, method=method, **overrides)
    return MethodRun("prunedlora", res.model, res.record, True, adapter=str(out) if out else None)


def _para(pruned, recipe, seed, budget, out=None, plan=None, data=None, **overrides):
    """Train uniform r=high_rank, then PARA's one global singular-value threshold down to the budget."""
    import tempfile

    from peft import PeftModel

    from rankadaptor.compress.para import CompressConfig, compress
    from rankadaptor.lora.ranks import RankPlan, decoder_layer_names

    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="rankadaptor-para-"))
    wide_dir = folder.with_name(folder.name + f"-wide-r{recipe.high_rank}")
    wide = RankPlan.uniform(len(decoder_layer_names(pruned.model)), recipe.high_rank)
    res = _recover(pruned, recipe, seed, wide_dir, data, plan=wide, **overrides)
    report = compress(wide_dir, folder, CompressConfig(target_params=budget), overwrite=True)
    loaded = pruned.fresh()
    model = PeftModel.from_pretrained(loaded.model, str(folder)).eval()
    record = {**res.record, "plan": None, "para": {"totals": report["totals"], "settings": report["settings"]},
              "final_params": report["totals"]["params_after"]}
    return MethodRun("para", model, record, True, adapter=str(folder))


# ---- wide-then-cut: one super-adapter per seed, cut to the budget four ways (issue 15) -------------------
def super_adapter(pruned: ModelCache, recipe: Recipe, seed: int, data=None, nested: bool = True,
                  work: Path | None = None, **overrides) -> Path:
    """The seed's wide adapter (rank ``recipe.high_rank``, nested-rank training unless ``nested=False``),
    trained on first use and shared by every cut of it, so the cut rules differ only in the cut."""
    import hashlib
    import json

    from rankadaptor.lora.recover import recover
    from rankadaptor.lora.super_adapter import SuperAdapterMethod

    source = data.identity if hasattr(data, "identity") else str(data)
    key = json.dumps([pruned.spec, asdict(recipe), nested, overrides, source], sort_keys=True, default=str)
    out = Path(work or WORK / "super-adapters") / f"{'nested' if nested else 'plain'}-r{recipe.high_rank}-seed{seed}-" \
                       f"{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    if not out.exists():
        loaded = pruned.fresh()
        recover(loaded.model, loaded.tokenizer, method=SuperAdapterMethod(rank=recipe.high_rank, nested=nested),
                config=recipe.recovery_config(seed, **overrides), data=data, out=out, identity=loaded.identity)
    return out


def _super_cut(rule: str):
    """Cut the seed's super-adapter to the budget by ``rule``: an allocation rule, or "search" (RankAdaptor
    on the super-adapter's cheap fidelity, ``search_trials`` scores). Compute = the wide training + the cut."""
    def run(pruned, recipe, seed, budget, out=None, plan=None, data=None, how="svd", search_trials=100, work=None,
            **overrides):
        import shutil
        import tempfile
        import time

        from peft import PeftModel

        from rankadaptor.compress.adapter_io import read_adapter
        from rankadaptor.compress.cut import cut_to_plan, rule_ranks
        from rankadaptor.fileio import read_json

        wide = super_adapter(pruned, recipe, seed, data, work=work, **overrides)
        record = read_json(wide / "recovery.json", what="super-adapter record")
        folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="rankadaptor-super-")) / "cut"
        loaded = pruned.fresh()
        t0 = time.perf_counter()
        if rule == "search":
            from rankadaptor.search.super_search import search_budget

            work = folder.with_name(folder.name + "-search")
            for old in (folder, work):  # a method run starts afresh, as every row of the table does
                shutil.rmtree(old, ignore_errors=True)
            cut = search_budget(loaded, wide, budget, work, trials=search_trials, how=how, seq_len=recipe.seq_len,
                                seed=seed, data=data, adapter_path=folder)
            cut = {k: cut[k] for k in ("plan", "seconds", "evaluations", "split_tokens", "report")}
        else:
            report = cut_to_plan(wide, loaded.model, rule_ranks(rule, read_adapter(wide), budget), folder, how=how,
                                 overwrite=True)
            cut = {"ranks": {r["module"]: r["new_rank"] for r in report["modules"]}, "seconds": time.perf_counter() - t0}
        model = PeftModel.from_pretrained(loaded.model, str(folder)).eval()
        steps, batch, seq = record["total_steps"], record["config"]["batch_size"], record["config"]["seq_len"]
        compute = {"train_seconds": record["train_seconds"], "train_steps": steps, "train_tokens": steps * batch * seq,
                   "cut_seconds": time.perf_counter() - t0,
                   "search_forward_tokens": cut.get("evaluations", 0) * cut.get("split_tokens", 0)}
        record = {**record, "plan": None, "final_params": read_adapter(folder).params, "wide_adapter": str(wide),
                  "cut": {"rule": rule, "how": how, **cut}, "compute": compute}
        # the search's plan lies within 1 % below the budget (its space's window); a rule fills it from below
        return MethodRun(f"super-{rule}", model, record, rule != "search", adapter=str(folder))
    return run


def _given_plan(pruned, recipe, seed, budget, out=None, plan=None, data=None, **overrides):
    if plan is None:
        raise RankAdaptorError("method 'plan' needs a RankPlan (plan=...)")
    return _plan_run("plan", lambda n: plan)(pruned, recipe, seed, budget, out=out, plan=plan, data=data, **overrides)


# ---- allocators' plans (rankadaptor.lora.allocators) as static plans, and EVA's own initialisation ----------
_ALLOCATIONS: dict[tuple, Any] = {}


def allocation(name: str, pruned: ModelCache, recipe: Recipe, seed: int, data=None, steps: int | None = None):
    """Allocator ``name``'s plan at uniform-r's budget (``lora.allocators``), computed once per process.

    PARA and PrunedLoRA allocate from a training run of ``steps`` (default ``recipe.steps``) on ``seed``;
    EVA from the first 8 training batches."""
    from rankadaptor.data import RecoveryData, load_recovery_data
    from rankadaptor.lora import allocators

    key = (name, pruned.spec, recipe, seed, steps, getattr(data, "identity", {}).get("sha256", str(data)))
    if key in _ALLOCATIONS:
        return _ALLOCATIONS[key]
    loaded = pruned.fresh()
    budget = uniform_budget(pruned.model, recipe.uniform_r)
    if not isinstance(data, RecoveryData):
        data = load_recovery_data(data, loaded.tokenizer, seq_len=recipe.seq_len)
    config = recipe.recovery_config(seed, max_steps=steps or recipe.steps)
    kw: dict[str, Any] = {}
    if name == "eva":
        pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else loaded.tokenizer.eos_token_id
        kw = {"batches": allocators.eva_batches(data, pad or 0, recipe.batch_size), "r": recipe.uniform_r}
    elif name == "para":
        kw = {"tokenizer": loaded.tokenizer, "data": data, "config": config, "high_rank": recipe.high_rank}
    elif name == "prunedlora":
        method = prunedlora_at_budget(pruned.model, recipe.high_rank, budget, config.max_steps)
        kw = {"tokenizer": loaded.tokenizer, "data": data, "config": config, "method": method}
    result = allocators.get_allocator(name)(loaded.model, budget=budget, **kw)
    _ALLOCATIONS[key] = result
    return result


def _static(allocator: str):
    """Train an allocator's plan from scratch as a static plan (standard LoRA init), held to the budget ± 1 %."""
    def run(pruned, recipe, seed, budget, out=None, plan=None, data=None, alloc_steps=None, **overrides):
        alloc = allocation(allocator, pruned, recipe, seed, data, alloc_steps)
        res = _recover(pruned, recipe, seed, out, data, plan=alloc.plan, **overrides)
        return MethodRun(f"static-{allocator}", res.model, res.record, True, adapter=str(out) if out else None,
                         static=True, allocation=alloc.to_dict())
    return run


def _eva(pruned, recipe, seed, budget, out=None, plan=None, data=None, **overrides):
    """PEFT's EVA: its allocation at the budget AND its initialisation (A from the activations' SVD)."""
    from rankadaptor.lora.allocators import EvaMethod

    alloc = allocation("eva", pruned, recipe, seed, data)
    res = _recover(pruned, recipe, seed, out, data, method=EvaMethod(alloc.plan, alloc.extra["components"]), **overrides)
    return MethodRun("eva", res.model, res.record, True, adapter=str(out) if out else None, static=True,
                     allocation=alloc.to_dict())


# name -> trainer(pruned, recipe, seed, budget, out=, plan=, data=, **overrides) -> MethodRun
METHODS: dict[str, Callable[..., MethodRun]] = {
    "uniform": _uniform,
    "lora-star": _lora_star,
    "adalora": _adalora,
    "prunedlora": _prunedlora,
    "para": _para,
    "plan": _given_plan,
    "eva": _eva,  # PEFT's EVA: explained-variance allocation + SVD initialisation, scaled to the budget
    "static-lora-star": _static("lora-star"),  # LoRA*'s 4/6/10/12 shape scaled to the budget
    "static-eva": _static("eva"),  # EVA's allocation, plain LoRA init
    "static-para": _static("para"),  # PARA's allocation from a short high-rank run, trained from scratch
    "static-prunedlora": _static("prunedlora"),  # PrunedLoRA's final allocation, trained from scratch
    "super-search": _super_cut("search"),  # RankAdaptor over cuts of one super-adapter (cheap fidelity)
    "super-para": _super_cut("para"),  # the same super-adapter, PARA's global threshold
    "super-uniform": _super_cut("uniform"),  # the same super-adapter, uniform truncation
    "super-energy": _super_cut("energy"),  # the same super-adapter, PEFT's per-layer energy rule
}
# methods that cut a wide adapter after training: their record's val_loss is the wide adapter's, not the cut's
CUT_AFTER_TRAINING = ("para", "super-search", "super-para", "super-uniform", "super-energy")
