"""What each unit of the demo computes, on a worker process (see ``rankadaptor.demo.run``).

``UnitWork`` holds the pieces every unit shares, loaded once per worker and reused (the pruned model,
the tokenised recovery corpus), and one method per stage: dense evaluation, pruning, evaluation
without recovery, a method of the experiment kit's table trained and measured
(``rankadaptor.experiments``), and the RankAdaptor search. Each stage returns its unit's result as a
JSON-ready dict; ``rankadaptor.demo.run.Demo`` adds the unit graph and runs it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rankadaptor.demo.presets import Preset

__all__ = ["UnitWork"]


class UnitWork:
    """The stages of the demo for one preset, model and run folder ``out``, on the experiment kit."""

    def __init__(self, cfg: Preset, out: Path, model_spec: str = "smollm2-135m"):
        from rankadaptor.experiments import ModelCache, Recipe

        self.cfg, self.out, self.model_spec = cfg, Path(out), model_spec
        self.pruned_dir = self.out / "pruned"
        self.adapters = self.out / "adapters"
        self.pruned = ModelCache(self.pruned_dir)  # loaded (and hashed) once per worker; units get copies
        self.recipe = Recipe(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr,
                             uniform_r=8, high_rank=cfg.high_rank, ppl_tokens=cfg.ppl_tokens,
                             eval_limit=cfg.eval_limit, eval_batch_size=cfg.eval_batch_size, threads=None,
                             gradient_checkpointing=cfg.gradient_checkpointing)
        self._data: Any = None  # the tokenised recovery corpus, once per worker

    # ---- shared pieces ------------------------------------------------------------------------
    def evaluate(self, model, tokenizer, seed: int) -> dict:
        from rankadaptor.experiments import measure

        return measure(model, tokenizer, self.recipe, seed=seed)

    def n_layers(self) -> int:
        return self.pruned.model.config.num_hidden_layers

    def recovery_data(self, tokenizer):
        """The default corpus tokenised as ``recover`` would (same blocks, same split), once per worker."""
        from rankadaptor.data import load_recovery_data

        if self._data is None:
            config = self.recipe.recovery_config(0)
            self._data = load_recovery_data(None, tokenizer, seq_len=config.seq_len, max_val=config.max_val)
        return self._data

    def uniform_budget(self) -> int:
        from rankadaptor.experiments import uniform_budget

        return uniform_budget(self.pruned.model, self.recipe.uniform_r)

    # ---- stages -------------------------------------------------------------------------------
    def dense(self) -> dict:
        from rankadaptor.models.loading import load_model

        loaded = load_model(self.model_spec)
        return {"identity": loaded.identity, "results": self.evaluate(loaded.model, loaded.tokenizer, 0),
                "generations": self.generations(loaded.model, loaded.tokenizer)}

    def prune(self) -> dict:
        from rankadaptor.experiments import prune_to

        if (self.pruned_dir / "pruning.json").exists():  # an interrupted unit that had saved the artefact
            from rankadaptor.fileio import read_json

            manifest = read_json(self.pruned_dir / "pruning.json", "pruning manifest")
        else:
            manifest = prune_to(self.pruned_dir, self.model_spec, self.cfg.prune_ratio)
        return {"params_before": manifest.get("params_before"), "params_after": manifest.get("params_after")}

    def no_recovery(self) -> dict:
        loaded = self.pruned.fresh()
        return {"results": self.evaluate(loaded.model, loaded.tokenizer, 0),
                "generations": self.generations(loaded.model, loaded.tokenizer)}

    def super_search(self, key: str, seed: int) -> dict:
        """One wide nested-rank adapter (the super-adapter), cut to the budget by RankAdaptor's search on
        its cheap fidelity (held-out loss of cuts, no training), then measured like every row."""
        result = self.train_and_eval(key, "super-search", seed, search_trials=self.cfg.super_trials,
                                     work=self.adapters / f"super-wide-s{seed}")
        return result

    def train_and_eval(self, key: str, method: str, seed: int, plan=None, **overrides) -> dict:
        """Train ``method`` from the kit's table at uniform r=8's budget, then measure it.

        A method that ends off the budget it claims is not measured: the unit records why, and the
        report lists it as refused instead of putting it in a table labelled with that budget."""
        from rankadaptor.experiments import OffBudget, train_method
        from rankadaptor.lora.ranks import live_module_ranks

        tokenizer = self.pruned.tokenizer
        try:
            run = train_method(method, self.pruned, self.recipe, seed, out=self.adapters / key, plan=plan,
                               data=self.recovery_data(tokenizer), **overrides)
        except OffBudget as exc:
            return {"method": method, "refused": str(exc)}
        summary = run.summary()
        curve = [(c["step"], c["loss"]) for c in run.record.get("loss_curve", [])]
        val = [(c["step"], c["val_loss"]) for c in run.record.get("val_curve", [])]
        cut_search = (run.record.get("cut") or {}).get("report")  # the super-adapter search's report folder
        return {**summary, "search_history": _search_history(Path(cut_search)) if cut_search else None, "trainable_params": run.budget["params"], "ranks": summary["final_ranks"],
                "module_ranks": live_module_ranks(run.model), "loss_curve": curve, "val_curve": val,
                "results": self.evaluate(run.model, tokenizer, seed),
                "generations": self.generations(run.model, tokenizer) if seed == self.cfg.seeds[0] else None}

    def generations(self, model, tokenizer) -> dict[str, str]:
        from rankadaptor.eval.generations import greedy_completions

        return greedy_completions(model, tokenizer, max_new_tokens=self.cfg.generate_tokens)

    def search(self) -> dict:
        """RankAdaptor search on held-out loss with short trials; returns the best ranks found."""
        from rankadaptor.lora.ranks import layer_costs
        from rankadaptor.search.objective import RecoverEvalObjective
        from rankadaptor.search.study import SearchSettings, run_study

        costs = layer_costs(self.pruned.model)
        kwargs = dict(batch_size=self.cfg.batch_size, seq_len=self.cfg.seq_len, lr=self.cfg.lr)
        objective = RecoverEvalObjective(str(self.pruned_dir), "loss", self.cfg.search_steps,
                                         limit=None, recovery_kwargs=kwargs)
        identity = {**objective.identity(), "model": self.model_spec, "pruned": str(self.pruned_dir)}
        plan_path = self.out / "search" / "ranks.json"
        # an interrupted unit's outputs are redrawn; the study itself resumes from its database
        if plan_path.exists():
            plan_path.unlink()
        shutil.rmtree(self.out / "search" / "report", ignore_errors=True)
        settings = SearchSettings(study="demo", storage=f"sqlite:///{self.out / 'search.db'}",
                                  trials=self.cfg.search_trials, n_initial=max(2, self.cfg.search_trials // 2),
                                  final_seeds=0, out=str(plan_path), report=str(self.out / "search" / "report"))
        result = run_study(settings, objective, costs, identity)
        report = result.report
        return {"ranks": report["best"]["ranks"], "plan": str(plan_path), "state": _jsonable(result.state),
                "history": _search_history(self.out / "search" / "report"),
                "messages": report["messages"], "model_cv": report["model_cv"]}


def _search_history(report_dir: Path) -> list[dict]:
    """The trials of a finished search (value, state, duration), from its report's summary.json."""
    from rankadaptor.fileio import read_json

    rows = read_json(report_dir / "summary.json", "search summary")["history"]
    return [{k: row.get(k) for k in ("number", "state", "value", "duration_s")} for row in rows]


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
