"""The experiment kit the demo and every benchmark share: one way to make each thing they compare.

* ``pruned_artefact(...)``: the pruned model, built once with ONE calibration definition and reused.
* ``measure(model, tokenizer, ...)``: held-out perplexity (the one definition in ``eval.perplexity``)
  and the seven zero-shot tasks (per-document results kept, so comparisons can be paired).
* ``train_method(name, ...)``: one row of the method table (``experiment_methods.METHODS``: every way
  of spending a LoRA budget on the pruned model), ending with its final LoRA parameter count checked
  against the budget it claims; the budget itself is ``uniform_budget`` here.
* ``write_results(name, result, markdown)``: results JSON + markdown with provenance and command.

A benchmark is then a loop over seeds and method names plus a table; see ``benchmarks/``.
"""

from __future__ import annotations

import copy
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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


# ---- a trained method and the budget it is held to ------------------------------------------------
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
                "compute": rec.get("compute")}  # a cut row's training + cut (+ search): experiment_methods._super_cut


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

    ``name`` is a key of ``experiment_methods.METHODS``; ``plan`` is the RankPlan for ``"plan"``; ``data``
    a tokenised ``RecoveryData`` (shared across runs) or a path; ``out`` where to save the adapter (PARA
    always needs a folder: its wide adapter is written beside ``out``).
    """
    # imported here, not at the top: the trainers build on this module (MethodRun, ModelCache, the budget)
    from rankadaptor.experiment_methods import METHODS

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
