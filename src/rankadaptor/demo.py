"""The main job, end to end on the offline default model (issue "make demo").

dense evaluation -> prune 20 % (llm-pruner, element1) -> evaluation without recovery
-> uniform r=8 and LoRA* recovery -> RankAdaptor search (held-out loss, short trials)
-> recovery with the found plan -> PARA (a high-rank adapter compressed to uniform r=8's budget)
-> PrunedLoRA (high rank pruned to the same budget, when available) -> AdaLoRA at that budget
-> a Table 2-style report (mean ± 95 % CI over seeds) and plots.

Every unit of work writes its result under ``RUN/units/`` atomically, so an interrupted run picks
up where it stopped; a unit whose settings changed is refused rather than silently mixed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from rankadaptor.errors import RankAdaptorError
from rankadaptor.fileio import read_json, write_json_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    name: str
    seeds: tuple[int, ...]
    steps: int  # recovery optimizer steps per run
    batch_size: int
    seq_len: int
    eval_limit: int | None  # documents per task (None = full splits)
    ppl_tokens: int  # held-out tokens for perplexity
    search_trials: int
    search_steps: int
    high_rank: int  # start rank of the PARA and PrunedLoRA adapters
    prune_ratio: float = 0.2
    calibration: int = 10
    eval_batch_size: int = 16
    lr: float = 2e-4


PRESETS: dict[str, Preset] = {
    # about two minutes: proves every stage runs; its numbers are noise
    "smoke": Preset("smoke", seeds=(0,), steps=2, batch_size=2, seq_len=64, eval_limit=4, ppl_tokens=1024,
                    search_trials=3, search_steps=1, high_rank=16),
    # the default: 22 min measured on 2 CPU cores (target 15); two seeds give an interval, a wide one
    "quick": Preset("quick", seeds=(0, 1), steps=8, batch_size=4, seq_len=128, eval_limit=10, ppl_tokens=2048,
                    search_trials=6, search_steps=4, high_rank=32),
    # the paper's scale (LLM-Pruner recipe: 2 epochs of batch 64 in the paper; here 2000 steps) for a GPU
    "paper": Preset("paper", seeds=(0, 1, 2), steps=2000, batch_size=64, seq_len=256, eval_limit=None,
                    ppl_tokens=200_000, search_trials=60, search_steps=200, high_rank=32, eval_batch_size=64),
}

METHOD_ORDER = ("uniform", "lora-star", "rankadaptor", "para", "prunedlora", "adalora")


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise RankAdaptorError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


class RunDir:
    """Results of finished units, keyed by name, each with the settings it was made with."""

    def __init__(self, root: Path, settings: dict):
        self.root = Path(root)
        self.units = self.root / "units"  # created by the first unit's write, so bad input leaves no directory
        self.settings = json.loads(json.dumps(settings))  # as it reads back from disk (tuples -> lists)

    def unit(self, key: str, fn: Callable[[], dict]) -> dict:
        path = self.units / f"{key}.json"
        if path.exists():
            done = read_json(path, f"demo unit {key}")
            if done.get("settings") != self.settings:
                raise RankAdaptorError(
                    f"{self.root} holds a run made with other settings (unit {key}); "
                    "use a new --out or the same --preset to resume it")
            log.info("resume: %s already done", key)
            return done["result"]
        t0 = time.perf_counter()
        result = fn()
        result["wall_s"] = time.perf_counter() - t0
        write_json_atomic(path, {"settings": self.settings, "result": result})
        return result


class Demo:
    def __init__(self, cfg: Preset, out: Path, model_spec: str = "smollm2-135m"):
        self.cfg, self.out, self.model_spec = cfg, Path(out), model_spec
        self.run = RunDir(self.out, {"preset": asdict(cfg), "model": model_spec})
        self.pruned_dir = self.out / "pruned"
        self.adapters = self.out / "adapters"
        self._heldout: list[str] | None = None

    # ---- shared pieces ------------------------------------------------------------------------
    def heldout(self) -> list[str]:
        if self._heldout is None:
            from rankadaptor.assets import text_corpus_path

            text = Path(text_corpus_path("heldout")).read_text(encoding="utf-8")
            self._heldout = [t for t in text.split("\n\n") if t.strip()]
        return self._heldout

    def evaluate(self, model, tokenizer, seed: int) -> dict:
        from rankadaptor.eval import evaluate, perplexity

        # the fast backend scores lm-eval's own requests; tests show it equals simple_evaluate
        res = evaluate(model, tokenizer, limit=self.cfg.eval_limit, batch_size=self.cfg.eval_batch_size, seed=seed,
                       backend="fast")
        res["perplexity"] = perplexity(model, tokenizer, self.heldout(), seq_len=256, max_tokens=self.cfg.ppl_tokens)
        return res

    def load_pruned(self):
        from rankadaptor.models.loading import load_model

        return load_model(str(self.pruned_dir))

    def recovery_config(self, seed: int, steps: int | None = None):
        from rankadaptor.lora.recover import RecoveryConfig

        c = self.cfg
        return RecoveryConfig(max_steps=steps or c.steps, batch_size=c.batch_size, seq_len=c.seq_len, seed=seed,
                              lr=c.lr)

    def uniform_budget(self) -> int:
        from rankadaptor.lora.ranks import RankPlan, count_lora_params

        loaded = self.load_pruned()
        return count_lora_params(loaded.model, RankPlan.uniform(loaded.model.config.num_hidden_layers, 8))

    # ---- stages -------------------------------------------------------------------------------
    def dense(self) -> dict:
        from rankadaptor.models.loading import load_model

        loaded = load_model(self.model_spec)
        return {"identity": loaded.identity, "results": self.evaluate(loaded.model, loaded.tokenizer, 0)}

    def prune(self) -> dict:
        from rankadaptor.assets import text_corpus_path
        from rankadaptor.models.loading import load_model
        from rankadaptor.prune.artefact import PruneConfig, prune_model, save_pruned

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
                         config=self.recovery_config(seed, steps), out=out, overwrite=True)
        rec = result.record
        return {"adapter": str(out), "trainable_params": rec.get("trainable_params"), "val_loss": rec.get("val_loss"),
                "seconds_per_step": rec.get("seconds_per_step"), "ranks": _ranks_of(rec),
                "results": self.evaluate(result.model, loaded.tokenizer, seed)}

    def para(self, seed: int, budget: int) -> dict:
        from peft import PeftModel

        from rankadaptor.lora.para import CompressConfig, compress
        from rankadaptor.lora.ranks import RankPlan
        from rankadaptor.lora.recover import recover

        high = self.adapters / f"high-r{self.cfg.high_rank}-s{seed}"
        if not (high / "recovery.json").exists():
            loaded = self.load_pruned()
            plan = RankPlan.uniform(loaded.model.config.num_hidden_layers, self.cfg.high_rank)
            recover(loaded.model, loaded.tokenizer, plan=plan, config=self.recovery_config(seed), out=high,
                    overwrite=True)
        out = self.adapters / f"para-s{seed}"
        report = compress(high, out, CompressConfig(target_params=budget), overwrite=True)
        loaded = self.load_pruned()
        model = PeftModel.from_pretrained(loaded.model, str(out)).eval()
        return {"adapter": str(out), "trainable_params": report.get("totals", {}).get("params_after"),
                "compress": {k: v for k, v in report.items() if k in ("totals", "settings")},
                "results": self.evaluate(model, loaded.tokenizer, seed)}

    def search(self) -> dict:
        """RankAdaptor search on held-out loss with short trials; returns the best ranks found."""
        import optuna

        from rankadaptor.cli.search import layer_costs
        from rankadaptor.search import engine
        from rankadaptor.search.objective import RecoverEvalObjective
        from rankadaptor.search.outputs import write_outputs
        from rankadaptor.search.sampler import make_sampler
        from rankadaptor.search.space import SearchSpace

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        loaded = self.load_pruned()
        n_layers = loaded.model.config.num_hidden_layers
        base = dict(n_layers=n_layers, layer_costs=tuple(layer_costs(loaded.model, n_layers)))
        space = SearchSpace(**base, budget=SearchSpace(**base).uniform_budget(8), tolerance=0.05)
        del loaded
        kwargs = dict(batch_size=self.cfg.batch_size, seq_len=self.cfg.seq_len, lr=self.cfg.lr)
        objective = RecoverEvalObjective(str(self.pruned_dir), "loss", self.cfg.search_steps,
                                         limit=None, recovery_kwargs=kwargs)
        identity = {**objective.identity(), "model": self.model_spec, "pruned": str(self.pruned_dir)}
        sampler = make_sampler("rankadaptor", space, seed=0, n_initial=max(2, self.cfg.search_trials // 2))
        study = engine.open_study("demo", f"sqlite:///{self.out / 'search.db'}", space, identity, "rankadaptor",
                                  objective.direction, sampler)
        config = engine.SearchConfig(n_trials=self.cfg.search_trials, final_seeds=0, seed=0)
        state = engine.run_search(study, space, objective, config)
        report = engine.finalize(study, space, objective, config)
        plan_path = self.out / "search" / "ranks.json"
        if plan_path.exists():
            plan_path.unlink()
        write_outputs(study, space, report, plan_path, self.out / "search" / "report", config, identity)
        return {"ranks": report["best"]["ranks"], "plan": str(plan_path), "state": _jsonable(state),
                "messages": report["messages"], "model_cv": report["model_cv"]}

    # ---- the whole pipeline -------------------------------------------------------------------
    def units(self) -> list[tuple[str, float, Callable[[], dict]]]:
        """(key, cost weight for the progress bar, work) in execution order."""
        from rankadaptor.lora.ranks import RankPlan
        from rankadaptor.lora.recover import get_method

        c = self.cfg
        train = c.steps * c.batch_size * c.seq_len / 1000.0
        ev = 7 * (c.eval_limit or 1000) * 0.6 + c.ppl_tokens / 1000.0
        units: list[tuple[str, float, Callable[[], dict]]] = [
            ("dense", ev, self.dense), ("prune", 20.0, self.prune), ("pruned-no-recovery", ev, self.no_recovery)]
        n_layers = lambda: self.load_pruned().model.config.num_hidden_layers  # noqa: E731
        for s in c.seeds:
            units.append((f"uniform-s{s}", train + ev, lambda s=s: self.recover_and_eval(
                f"uniform-s{s}", s, plan=RankPlan.uniform(n_layers(), 8))))
            units.append((f"lora-star-s{s}", train + ev, lambda s=s: self.recover_and_eval(
                f"lora-star-s{s}", s, plan=RankPlan.lora_star(n_layers()))))
        search_cost = c.search_trials * c.search_steps * c.batch_size * c.seq_len / 1000.0 * 1.3
        units.append(("search", search_cost, self.search))
        for s in c.seeds:
            units.append((f"rankadaptor-s{s}", train + ev, lambda s=s: self.recover_and_eval(
                f"rankadaptor-s{s}", s, plan=RankPlan(ranks=self.run.unit("search", self.search)["ranks"]))))
            units.append((f"para-s{s}", train * 1.2 + ev, lambda s=s: self.para(s, self.uniform_budget())))
        for name in ("prunedlora", "adalora"):
            try:
                cls = get_method(name)
            except RankAdaptorError:
                log.warning("recovery method %s is not available; its row is left out", name)
                continue
            for s in c.seeds:
                units.append((f"{name}-s{s}", train * 1.3 + ev, lambda s=s, cls=cls, name=name: self.recover_and_eval(
                    f"{name}-s{s}", s, method=_budget_method(cls, name, self))))
        return units

    def run_all(self, progress: bool = True) -> dict:
        from tqdm.auto import tqdm

        units = self.units()
        bar = tqdm(total=sum(w for _, w, _ in units), disable=not progress, unit="work",
                   bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}] {postfix}")
        done: dict[str, dict] = {}
        for key, weight, fn in units:
            bar.set_postfix_str(key)
            done[key] = self.run.unit(key, fn)
            bar.update(weight)
        bar.close()
        return self.report(done)

    def report(self, done: dict[str, dict]) -> dict:
        from rankadaptor.provenance import provenance
        from rankadaptor.report.demo_report import write_report

        return write_report(self.out, self.cfg, done, provenance(None))


def _budget_method(cls, name: str, demo: Demo):
    budget = demo.uniform_budget()
    if name == "prunedlora":
        # prune every step between a quarter-run warm-up and a quarter-run final phase, global scope
        # (non-uniform ranks), with the smallest k per event that the schedule check accepts
        from rankadaptor.lora.pruned_lora import PruneSchedule
        from rankadaptor.lora.ranks import RankPlan, linear_shapes

        steps, high = demo.cfg.steps, demo.cfg.high_rank
        model = demo.load_pruned().model
        shapes = linear_shapes(model)
        sizes = {n: sum(shapes[n]) for n in RankPlan.uniform(model.config.num_hidden_layers, high).module_ranks(model)}
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


def _ranks_of(record: dict) -> Any:
    plan = record.get("plan")
    if isinstance(plan, dict):
        return plan.get("ranks")
    return record.get("final_ranks")


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def run_demo(preset_name: str = "quick", out: str | Path | None = None, model: str = "smollm2-135m",
             progress: bool = True, device: str | None = None) -> dict:
    from rankadaptor.device import default_device

    cfg = preset(preset_name)
    out = Path(out or f"runs/demo-{cfg.name}")
    with default_device(device):  # every model the demo loads (dense, pruned, search trials) goes there
        return Demo(cfg, out, model).run_all(progress=progress)
