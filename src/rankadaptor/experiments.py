"""The experiment kit the demo and every benchmark share: one way to make each thing they compare.

* ``pruned_artefact(...)``: the pruned model, built once with ONE calibration definition and reused.
* ``measure(model, tokenizer, ...)``: held-out perplexity (the one definition in ``eval.perplexity``)
  and the seven zero-shot tasks (per-document results kept, so comparisons can be paired).
* ``train_method(name, ...)``: the method table: every way of spending a LoRA budget on the pruned
  model (uniform, LoRA*, AdaLoRA, PrunedLoRA at the budget, PARA after high-rank training, a given
  plan), each ending with its final LoRA parameter count checked against the budget it claims.
* ``write_results(name, result, markdown)``: results JSON + markdown with provenance and command.

A benchmark is then a loop over seeds and method names plus a table; see ``benchmarks/``.
"""

from __future__ import annotations

import copy
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from rankadaptor.errors import RankAdaptorError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "benchmarks" / "work"  # reusable artefacts (git-ignored)
RESULTS = ROOT / "benchmarks" / "results"

# LLM-Pruner's calibration as RankAdaptor §4.3 uses it (N = 10 samples): 10 sequences of 128 tokens,
# taken from the recovery corpus's training split (the Brown corpus), never from the held-out text.
CALIBRATION_SEQUENCES = 10
CALIBRATION_SEQ_LEN = 128
CALIBRATION_CHARS = 200_000  # the text the sequences are drawn from (its start: cheap to tokenise)


@dataclass(frozen=True)
class Recipe:
    """How each method is trained and measured in one experiment (equal for every method)."""

    steps: int = 30
    batch_size: int = 4
    seq_len: int = 128
    lr: float = 2e-4
    uniform_r: int = 8  # the budget every method is held to: uniform rank r's LoRA parameter count
    high_rank: int = 32  # start rank of PrunedLoRA and of the adapter PARA compresses
    ppl_tokens: int = 4096
    eval_limit: int | None = 50  # documents per task (None = full splits)
    eval_batch_size: int = 16
    threads: int | None = 1
    gradient_checkpointing: bool = False  # real scale on a GPU: less activation memory, ~1/3 more time

    def recovery_config(self, seed: int, **overrides):
        from rankadaptor.lora.recover import RecoveryConfig

        kw = dict(max_steps=self.steps, batch_size=self.batch_size, seq_len=self.seq_len, lr=self.lr, seed=seed,
                  threads=self.threads, gradient_checkpointing=self.gradient_checkpointing)
        return RecoveryConfig(**{**kw, **overrides})


# ---- the pruned model -------------------------------------------------------------------------------
def calibration_texts() -> list[str]:
    from rankadaptor.assets import text_corpus_path

    return [Path(text_corpus_path("train")).read_text(encoding="utf-8")[:CALIBRATION_CHARS]]


def prune_to(out: Path, model: str = "smollm2-135m", ratio: float = 0.2, method: str = "llm-pruner",
             importance: str = "element1") -> dict:
    """Prune ``model`` with the kit's calibration and save the artefact at ``out``; returns the manifest."""
    from rankadaptor.models.artefact import save_pruned
    from rankadaptor.models.loading import load_model
    from rankadaptor.prune.pruning import PruneConfig, prune_model

    loaded = load_model(model)
    config = PruneConfig(method=method, ratio=ratio, importance=importance, calibration=CALIBRATION_SEQUENCES,
                         seq_len=CALIBRATION_SEQ_LEN, seed=0)
    pruned, manifest = prune_model(loaded.model, loaded.tokenizer, config, calibration_texts(),
                                   identity=loaded.identity, inplace=True, calibration_source="brown-corpus train")
    save_pruned(pruned, loaded.tokenizer, manifest, out)
    return manifest


def pruned_artefact(model: str = "smollm2-135m", ratio: float = 0.2, method: str = "llm-pruner",
                    importance: str = "element1", work: Path = WORK) -> Path:
    """The pruned artefact for these settings, built on first use under ``work`` and reused after."""
    out = Path(work) / f"pruned-{model}-{method}-{importance}-{int(round(ratio * 100))}"
    if not out.exists():
        log.info("pruning %s by %s (%s) at %.0f %% -> %s", model, method, importance, 100 * ratio, out)
        prune_to(out, model, ratio, method, importance)
    return out


class ModelCache:
    """A model loaded once (and hashed once); every ``fresh()`` is an independent deep copy."""

    def __init__(self, spec: str | Path):
        self.spec = str(spec)
        self._loaded = None

    def fresh(self):
        from rankadaptor.models.loading import LoadedModel

        p = self._load()
        return LoadedModel(model=copy.deepcopy(p.model), tokenizer=p.tokenizer, identity=dict(p.identity))

    @property
    def model(self):  # read-only access (shapes, module names, budgets)
        return self._load().model

    @property
    def tokenizer(self):  # shared, never modified: no copy of the model needed to read it
        return self._load().tokenizer

    def _load(self):
        if self._loaded is None:
            from rankadaptor.models.loading import load_model

            self._loaded = load_model(self.spec)
        return self._loaded


# ---- what every method is measured by ---------------------------------------------------------------
def measure(model, tokenizer, recipe: Recipe = Recipe(), seed: int = 0, tasks=None) -> dict:
    """The seven tasks (per-document results kept) and THE held-out perplexity over the first
    ``recipe.ppl_tokens`` tokens (``eval.perplexity``: per-window NLLs kept for paired comparisons)."""
    from rankadaptor.eval import evaluate, heldout_perplexity

    res = evaluate(model, tokenizer, tasks=tasks, limit=recipe.eval_limit, batch_size=recipe.eval_batch_size,
                   seed=seed, backend="fast")
    res["perplexity"] = heldout_perplexity(model, tokenizer, n_tokens=recipe.ppl_tokens).to_dict()
    return res


# ---- budgets ----------------------------------------------------------------------------------------
def uniform_budget(model, r: int = 8) -> int:
    """LoRA parameters of uniform rank ``r`` on every targeted module: the budget methods are held to."""
    from rankadaptor.lora.ranks import RankPlan, count_lora_params, decoder_layer_names

    return count_lora_params(model, RankPlan.uniform(len(decoder_layer_names(model)), r))


def budget_check(params: int, budget: int, largest_component: int) -> dict:
    """At the budget means: not above it, and less than one (largest) rank component below it;
    ``within_1pct`` is the looser test a static plan (whose count is fixed by its ranks) must pass."""
    gap = int(budget) - int(params)
    return {"params": int(params), "budget": int(budget), "gap": gap, "relative": params / budget,
            "at_budget": bool(0 <= gap < largest_component), "within_1pct": bool(abs(params - budget) <= 0.01 * budget)}


def largest_component(model) -> int:
    """Parameters of one rank component of the widest targeted module (d_in + d_out)."""
    from rankadaptor.lora.ranks import RankPlan, decoder_layer_names, linear_shapes

    shapes = linear_shapes(model)
    modules = RankPlan.uniform(len(decoder_layer_names(model)), 1).module_ranks(model)
    return max(sum(shapes[n]) for n in modules)


# ---- the method table -------------------------------------------------------------------------------
def prunedlora_at_budget(model, init_rank: int, target_params: int, steps: int, **overrides):
    """PrunedLoRA sized to the run: global scope, timing derived from the step count by
    ``PrunedLoRAMethod.for_budget`` (reaches the target with fine-tuning after the last event, or raises)."""
    from rankadaptor.lora.pruned_lora import PrunedLoRAMethod

    return PrunedLoRAMethod.for_budget(model, target_params, steps, init_rank=init_rank, scope="global", **overrides)


@dataclass
class MethodRun:
    """One trained method: the PeftModel, its recovery record and the budget check of its final count."""

    name: str
    model: Any
    record: dict
    targets_budget: bool  # the method aims at the budget (AdaLoRA, PrunedLoRA, PARA, uniform): refused off it
    budget: dict = field(default_factory=dict)  # budget_check(...) of the final count
    adapter: str | None = None
    static: bool = False  # a plan fitted to the budget by an allocator: held to ±1 % (its count is set by its ranks)
    allocation: dict | None = None  # the allocator's record (raw ranks, how they were fitted)

    def summary(self) -> dict:
        rec = self.record
        return {"method": self.name, "adapter": self.adapter, "budget": self.budget, "val_loss": rec.get("val_loss"),
                "train_seconds": rec.get("train_seconds"), "seconds_per_step": rec.get("seconds_per_step"),
                "steps": rec.get("total_steps"), "trainable_params": rec.get("trainable_params"),
                "final_ranks": _final_ranks(rec), "allocation": self.allocation,
                "compute": rec.get("compute")}  # a cut row's wide training + cut (+ search), see _super_cut


def _final_ranks(record: dict) -> Any:
    if isinstance(record.get("plan"), dict):
        return record["plan"]["ranks"]
    for key in ("prunedlora", "adalora"):
        if key in record and isinstance(record[key], dict) and "final_ranks" in record[key]:
            return record[key]["final_ranks"]
    return record.get("adalora_final_ranks") or record.get("final_ranks")


def final_params(name: str, record: dict, model) -> int:
    """The method's final LoRA parameter count, as its own record states it."""
    from rankadaptor.lora.ranks import RankPlan, count_lora_params

    if "final_params" in record:  # e.g. PARA's compressed count
        return int(record["final_params"])
    if "adalora_effective_params" in record:
        return int(record["adalora_effective_params"])
    if "prunedlora" in record:
        return int(record["prunedlora"]["final_params"])
    if isinstance(record.get("plan"), dict):
        return count_lora_params(model, RankPlan.from_dict(record["plan"]))
    raise RankAdaptorError(f"method {name!r}: its recovery record states no final LoRA parameter count")


class OffBudget(RankAdaptorError):
    """A method ended off the budget it claims; its result must not be reported under that budget."""


def train_method(name: str, pruned: ModelCache, recipe: Recipe, seed: int, out: Path | None = None, plan=None,
                 data=None, **overrides) -> MethodRun:
    """Train method ``name`` on a fresh copy of the pruned model at uniform-r's budget.

    ``name`` is a key of ``METHODS``; ``plan`` is the RankPlan for ``"plan"``; ``data`` a tokenised
    ``RecoveryData`` (shared across runs) or a path; ``out`` where to save the adapter (PARA always
    needs a folder: its wide adapter is written beside ``out``).
    """
    if name not in METHODS:
        raise RankAdaptorError(f"method {name!r} unknown; valid: {sorted(METHODS)}")
    budget = uniform_budget(pruned.model, recipe.uniform_r)
    run = METHODS[name](pruned, recipe, seed, budget, out=out, plan=plan, data=data, **overrides)
    run.budget = budget_check(final_params(name, run.record, pruned.model), budget, largest_component(pruned.model))
    if name == "super-search" and not (run.budget["within_1pct"] and run.budget["gap"] >= 0):
        raise OffBudget(f"method {name!r} ended at {run.budget['params']:,} LoRA parameters, not within 1 % "
                               f"below the budget {budget:,}; its result is not reported")
    if run.targets_budget and not (run.budget["at_budget"] or (run.static and run.budget["within_1pct"])):
        raise OffBudget(f"method {name!r} ended at {run.budget['params']:,} LoRA parameters, not at the "
                               f"budget {budget:,} it claims (gap {run.budget['gap']:,}); its result is not reported")
    return run


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


# ---- results ----------------------------------------------------------------------------------------
def write_results(name: str, result: dict, markdown: str, seed: int | None = None,
                  results_dir: Path = RESULTS) -> dict[str, Path]:
    """``results_dir/name.json`` (result + provenance + command) and ``name.md``, both atomically."""
    from rankadaptor.fileio import write_json_atomic, write_text_atomic
    from rankadaptor.provenance import provenance

    payload = {**result, "command": "python " + " ".join(sys.argv), "provenance": provenance(seed)}
    json_path = write_json_atomic(Path(results_dir) / f"{name}.json", payload)
    md_path = write_text_atomic(Path(results_dir) / f"{name}.md", markdown.rstrip() + "\n")
    return {"json": json_path, "markdown": md_path}


def recipe_dict(recipe: Recipe) -> dict:
    return asdict(recipe)
