"""What each unit of the demo computes, on a worker process (see ``rankadaptor.demo.run``).

``UnitWork`` holds the pieces every unit shares, loaded once per worker and reused (the pruned model,
the tokenised recovery corpus, the held-out texts, uniform r=8's parameter budget), and one method
per stage: dense evaluation, pruning, evaluation without recovery, recovery with a rank plan or a
recovery method followed by evaluation, PARA, and the RankAdaptor search. Each stage returns its unit's
result as a JSON-ready dict; ``rankadaptor.demo.run.Demo`` adds the unit graph and runs it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rankadaptor.errors import RankAdaptorError

if TYPE_CHECKING:
    from rankadaptor.demo.presets import Preset

__all__ = ["UnitWork", "texts_for_tokens"]


class UnitWork:
    """The stages of the demo for one preset, model and run folder ``out``."""

    def __init__(self, cfg: Preset, out: Path, model_spec: str = "smollm2-135m"):
        self.cfg, self.out, self.model_spec = cfg, Path(out), model_spec
        self.pruned_dir = self.out / "pruned"
        self.adapters = self.out / "adapters"
        self._heldout: list[str] | None = None
        self._pruned = None  # the pruned model as loaded once; units get copies
        self._data: dict[int, Any] = {}  # tokenised recovery corpus per sequence length
        self._budget: int | None = None

    # ---- shared pieces ------------------------------------------------------------------------
    def heldout(self, tokenizer) -> list[str]:
        """The held-out texts perplexity needs for its first ``ppl_tokens`` tokens, not all 600 kB."""
        if self._heldout is None:
            from rankadaptor.assets import text_corpus_path

            text = Path(text_corpus_path("heldout")).read_text(encoding="utf-8")
            self._heldout = [t for t in text.split("\n\n") if t.strip()]
        return texts_for_tokens(self._heldout, tokenizer, self.cfg.ppl_tokens)

    def evaluate(self, model, tokenizer, seed: int) -> dict:
        from rankadaptor.eval import evaluate, perplexity

        # the fast backend scores lm-eval's own requests; tests show it equals simple_evaluate
        res = evaluate(model, tokenizer, limit=self.cfg.eval_limit, batch_size=self.cfg.eval_batch_size, seed=seed,
                       backend="fast")
        res["perplexity"] = perplexity(model, tokenizer, self.heldout(tokenizer), seq_len=256,
                                       max_tokens=self.cfg.ppl_tokens)
        return res

    def load_pruned(self):
        """A fresh copy of the pruned model and tokenizer (equal to a reload, without reading and
        hashing 430 MB of weights again for every unit)."""
        import copy

        from rankadaptor.models.loading import LoadedModel, load_model

        if self._pruned is None:
            self._pruned = load_model(str(self.pruned_dir))
        p = self._pruned
        return LoadedModel(model=copy.deepcopy(p.model), tokenizer=copy.deepcopy(p.tokenizer),
                           identity=dict(p.identity))

    def n_layers(self) -> int:
        if self._pruned is None:
            self.load_pruned()
        return self._pruned.model.config.num_hidden_layers

    def recovery_config(self, seed: int, steps: int | None = None):
        from rankadaptor.lora.recover import RecoveryConfig

        c = self.cfg
        return RecoveryConfig(max_steps=steps or c.steps, batch_size=c.batch_size, seq_len=c.seq_len, seed=seed,
                              lr=c.lr)

    def recovery_data(self, tokenizer):
        """The default corpus tokenised as ``recover`` would (same blocks, same split), once per worker."""
        from rankadaptor.data import load_recovery_data

        config = self.recovery_config(0)
        if config.seq_len not in self._data:
            self._data[config.seq_len] = load_recovery_data(None, tokenizer, seq_len=config.seq_len,
                                                            max_val=config.max_val)
        return self._data[config.seq_len]

    def uniform_budget(self) -> int:
        from rankadaptor.lora.ranks import RankPlan, count_lora_params

        if self._budget is None:
            self.load_pruned()
            self._budget = count_lora_params(self._pruned.model, RankPlan.uniform(self.n_layers(), 8))
        return self._budget

    # ---- stages -------------------------------------------------------------------------------
    def dense(self) -> dict:
        from rankadaptor.models.loading import load_model

        loaded = load_model(self.model_spec)
        return {"identity": loaded.identity, "results": self.evaluate(loaded.model, loaded.tokenizer, 0)}

    def prune(self) -> dict:
        from rankadaptor.assets import text_corpus_path
        from rankadaptor.models.loading import load_model
        from rankadaptor.models.artefact import save_pruned
        from rankadaptor.prune.pruning import PruneConfig, prune_model

        loaded = load_model(self.model_spec)
        text = Path(text_corpus_path("train")).read_text(encoding="utf-8")
        config = PruneConfig(method="llm-pruner", ratio=self.cfg.prune_ratio, importance="element1",
                             calibration=self.cfg.calibration)
        model, manifest = prune_model(loaded.model, loaded.tokenizer, config, texts=text, identity=loaded.identity,
                                      inplace=True)
        if not self.pruned_dir.exists():
            save_pruned(model, loaded.tokenizer, manifest, self.pruned_dir)
        return {"params_before": manifest.get("params_before"), "params_after": manifest.get("params_after")}

    def no_recovery(self) -> dict:
        loaded = self.load_pruned()
        return {"results": self.evaluate(loaded.model, loaded.tokenizer, 0)}

    def recover_and_eval(self, key: str, seed: int, plan=None, method=None, steps: int | None = None) -> dict:
        from rankadaptor.lora.recover import recover

        loaded = self.load_pruned()
        out = self.adapters / key
        result = recover(loaded.model, loaded.tokenizer, plan=plan, method=method,
                         config=self.recovery_config(seed, steps), data=self.recovery_data(loaded.tokenizer),
                         out=out, overwrite=True)
        rec = result.record
        return {"adapter": str(out), "trainable_params": rec.get("trainable_params"), "val_loss": rec.get("val_loss"),
                "seconds_per_step": rec.get("seconds_per_step"), "ranks": _ranks_of(rec),
                "results": self.evaluate(result.model, loaded.tokenizer, seed)}

    def para(self, seed: int, budget: int) -> dict:
        from peft import PeftModel

        from rankadaptor.compress.para import CompressConfig, compress
        from rankadaptor.lora.ranks import RankPlan
        from rankadaptor.lora.recover import recover

        high = self.adapters / f"high-r{self.cfg.high_rank}-s{seed}"
        if not (high / "recovery.json").exists():
            loaded = self.load_pruned()
            plan = RankPlan.uniform(self.n_layers(), self.cfg.high_rank)
            recover(loaded.model, loaded.tokenizer, plan=plan, config=self.recovery_config(seed),
                    data=self.recovery_data(loaded.tokenizer), out=high, overwrite=True)
        out = self.adapters / f"para-s{seed}"
        report = compress(high, out, CompressConfig(target_params=budget), overwrite=True)
        loaded = self.load_pruned()
        model = PeftModel.from_pretrained(loaded.model, str(out)).eval()
        return {"adapter": str(out), "trainable_params": report.get("totals", {}).get("params_after"),
                "compress": {k: v for k, v in report.items() if k in ("totals", "settings")},
                "results": self.evaluate(model, loaded.tokenizer, seed)}

    def search(self) -> dict:
        """RankAdaptor search on held-out loss with short trials; returns the best ranks found."""
        from rankadaptor.lora.ranks import layer_costs
        from rankadaptor.search.objective import RecoverEvalObjective
        from rankadaptor.search.study import SearchSettings, run_study

        loaded = self.load_pruned()
        costs = layer_costs(loaded.model)
        del loaded
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
                "messages": report["messages"], "model_cv": report["model_cv"]}

    def budget_method(self, name: str):
        """The recovery method ``name`` (prunedlora or adalora) set to uniform r=8's parameter budget."""
        from rankadaptor.lora.methods import get_method

        cls = get_method(name)
        budget = self.uniform_budget()
        if name == "prunedlora":
            # prune every step between a quarter-run warm-up and a quarter-run final phase, global scope
            # (non-uniform ranks), with the smallest k per event that the schedule check accepts
            from rankadaptor.lora.pruned_lora import PruneSchedule
            from rankadaptor.lora.ranks import RankPlan, linear_shapes

            steps, high = self.cfg.steps, self.cfg.high_rank
            self.n_layers()
            model = self._pruned.model  # read only: shapes and module names
            shapes = linear_shapes(model)
            sizes = {n: sum(shapes[n]) for n in RankPlan.uniform(self.n_layers(), high).module_ranks(model)}
            kw = dict(init_rank=high, target_params=budget, scope="global", prune_every=1,
                      warmup_steps=max(1, steps // 4), final_steps=steps // 4)
            for k in range(1, high + 1):
                try:
                    PruneSchedule(**kw, prune_k=k).check_reachable(sizes, steps)
                    return cls(**kw, prune_k=k)
                except RankAdaptorError:
                    continue
            raise RankAdaptorError(f"PrunedLoRA cannot reach the r=8 budget from r={high} in {steps} steps")
        return cls(target_params=budget)


def texts_for_tokens(texts: list[str], tokenizer, n_tokens: int) -> list[str]:
    """The shortest prefix of ``texts`` whose token stream (as ``eval.perplexity`` builds it: each text
    tokenised alone, one EOS between texts) has ``n_tokens`` tokens; perplexity over the first
    ``n_tokens`` tokens is then the same as over all texts, without tokenising the rest."""
    sep = 1 if tokenizer.eos_token_id is not None else 0
    out, length = [], -sep
    for text in texts:
        out.append(text)
        length += sep + len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if length >= n_tokens:
            break
    return out


def _ranks_of(record: dict) -> Any:
    plan = record.get("plan")
    if isinstance(plan, dict):
        return plan.get("ranks")
    return record.get("final_ranks")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
