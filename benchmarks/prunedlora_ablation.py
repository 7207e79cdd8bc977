"""PrunedLoRA scorer ablation (issue 18): which importance decides what is pruned, and does the OBS
compensation of the kept components help?

SmolLM2-135M pruned 20 % by LLM-Pruner (the kit's artefact), LoRA r=32 on every projection pruned
during training to uniform r=8's LoRA parameter count, global scope, the same schedule for every
configuration (``PrunedLoRAMethod.for_budget``: derived from the step count). Four scorers
(second-order OBS, first-order Taylor |γ|, activation energy, weight magnitude), each with and
without the compensation update, plus uniform r=8 trained the same way as the reference; every
configuration on the same seeds (same batches, same LoRA init), so differences are paired.
Each finished run is one JSON under ``benchmarks/work/prunedlora_ablation/`` (a re-run resumes);
the table is rebuilt from them after every run.

Measured (``rankadaptor.experiments.measure``): held-out perplexity (THE definition, per-window
NLLs kept) and the seven tasks (per-document results kept); paired differences by seed
(``rankadaptor.stats.paired_difference``) and by document × seed (``rankadaptor.eval.compare``).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/prunedlora_ablation.py --seeds 0 1 2

Writes benchmarks/results/prunedlora_ablation.json and .md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from rankadaptor import experiments as ex

SCORERS = ("obs", "taylor", "activation", "magnitude")
CONFIGS = {f"{s}{'' if comp else '-nocomp'}": {"scorer": s, "compensate": comp}
           for s in SCORERS for comp in (True, False)}
REFERENCE = "uniform"
WORK = ex.WORK / "prunedlora_ablation"
# (A, B, why): the comparisons the table reports, A − B
PAIRS = ([(s, f"{s}-nocomp", "compensation") for s in SCORERS]
         + [(g, a, "gradient vs activation") for g in ("obs", "taylor") for a in ("activation",)]
         + [(f"{g}-nocomp", "activation-nocomp", "gradient vs activation") for g in ("obs", "taylor")]
         + [("obs", "taylor", "second vs first order"), ("obs", "magnitude", "gradient vs weights"),
            ("obs", REFERENCE, "PrunedLoRA vs uniform r=8")])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--configs", nargs="+", default=[*CONFIGS, REFERENCE], choices=[*CONFIGS, REFERENCE])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--eval-limit", type=int, default=50, help="documents per task")
    p.add_argument("--ppl-tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="prunedlora_ablation", help="results name under benchmarks/results/")
    p.add_argument("--work", default=str(WORK), help="one JSON per finished run (a re-run resumes from them)")
    return p.parse_args(argv)


def one_run(pruned: ex.ModelCache, tokenizer, recipe: ex.Recipe, data, config: str, seed: int) -> dict:
    """Train one configuration on a fresh copy of the pruned model, check its budget, measure it."""
    from rankadaptor.errors import RankAdaptorError
    from rankadaptor.lora.pruned_lora import PrunedLoRAMethod
    from rankadaptor.lora.recover import recover

    budget = ex.uniform_budget(pruned.model, recipe.uniform_r)
    if config == REFERENCE:
        run = ex.train_method("uniform", pruned, recipe, seed, data=data)
        model, record, check = run.model, run.record, run.budget
        extra = {}
    else:
        method = PrunedLoRAMethod.for_budget(pruned.model, budget, recipe.steps, init_rank=recipe.high_rank,
                                             scope="global", **CONFIGS[config])
        loaded = pruned.fresh()
        res = recover(loaded.model, loaded.tokenizer, method=method, config=recipe.recovery_config(seed), data=data)
        model, record = res.model, res.record
        pl = record["prunedlora"]
        check = pl["budget"]
        if not check["at_budget"]:
            raise RankAdaptorError(f"{config} seed {seed} ended at {check['final_params']:,} LoRA parameters, not at "
                                   f"the budget {budget:,}; not reported")
        ranks = sorted(pl["final_ranks"].values())
        extra = {"schedule": {k: pl["schedule"][k] for k in ("init_rank", "warmup_steps", "prune_every", "prune_k",
                                                             "final_steps", "scope", "scorer", "compensate",
                                                             "damping", "fisher", "max_gate_change")},
                 "events": [{k: e[k] for k in ("step", "removed", "params", "predicted_loss_increase",
                                               "min_compensation_scale")} for e in pl["events"]],
                 "final_ranks": {"min": ranks[0], "median": ranks[len(ranks) // 2], "max": ranks[-1]}}
    t0 = time.perf_counter()
    measured = ex.measure(model, tokenizer, recipe, seed=seed)
    return {"config": config, "seed": seed, **extra, "budget": check, "val_loss": record["val_loss"],
            "train_seconds": record["train_seconds"], "seconds_per_step": record["seconds_per_step"],
            "eval_seconds": time.perf_counter() - t0, "measure": measured}


# ---- summary -----------------------------------------------------------------------------------------
def _ppl(row: dict) -> float:
    return row["measure"]["perplexity"]["perplexity"]


def _avg(row: dict) -> float:
    from rankadaptor.metrics import paper_average

    return paper_average(row["measure"]["tasks"])


def summarise(rows: list[dict], seeds: list[int]) -> dict:
    """Per configuration: mean [95 % t-interval] over seeds; per pair in ``PAIRS``: paired differences."""
    from rankadaptor.eval.compare import compare_results
    from rankadaptor.stats import mean_ci, paired_difference

    by = {}
    for r in rows:
        by.setdefault(r["config"], {})[r["seed"]] = r
    configs = {}
    for name, runs in by.items():
        rs = [runs[s] for s in sorted(runs)]
        configs[name] = {"n": len(rs), "params": mean_ci([r["budget"].get("final_params", r["budget"].get("params"))
                                                          for r in rs]).to_dict(),
                         **{key: mean_ci([f(r) for r in rs]).to_dict() for key, f in
                            (("ppl", _ppl), ("avg", _avg), ("val_loss", lambda r: r["val_loss"]),
                             ("train_seconds", lambda r: r["train_seconds"]))}}
    pairs = []
    for a, b, why in PAIRS:
        common = [s for s in seeds if s in by.get(a, {}) and s in by.get(b, {})]
        if len(common) < 2:
            continue
        ra, rb = [by[a][s] for s in common], [by[b][s] for s in common]
        cmp = compare_results([r["measure"] for r in ra], [r["measure"] for r in rb],
                              names_a=[f"{a}-s{s}" for s in common], names_b=[f"{b}-s{s}" for s in common])
        pairs.append({"a": a, "b": b, "why": why, "seeds": common,
                      "ppl_by_seed": paired_difference([_ppl(r) for r in ra], [_ppl(r) for r in rb]),
                      "val_loss_by_seed": paired_difference([r["val_loss"] for r in ra], [r["val_loss"] for r in rb]),
                      "ppl_windows": cmp["perplexity"], "average": cmp["average"],
                      "tasks": {t: v[v["metric"]] for t, v in cmp["tasks"].items()}})
    return {"configs": configs, "pairs": pairs}


def _ci(c: dict, digits: int = 2, scale: float = 1.0) -> str:
    if c["n"] < 2:
        return f"{c['mean'] * scale:.{digits}f}"
    return f"{c['mean'] * scale:.{digits}f} [{c['ci_low'] * scale:.{digits}f}, {c['ci_high'] * scale:.{digits}f}]"


def _diff(d: dict, key_low="ci_low", key_high="ci_high", mean="mean", digits=2, scale=1.0) -> str:
    from rankadaptor.stats import verdict_of

    v = d.get("verdict") or verdict_of(d)
    return (f"{d[mean] * scale:+.{digits}f} [{d[key_low] * scale:+.{digits}f}, {d[key_high] * scale:+.{digits}f}] "
            f"{v}")


def markdown(payload: dict) -> str:
    s, summ = payload["setup"], payload["summary"]
    sched = payload.get("schedule") or {}
    lines = [f"# PrunedLoRA scorer ablation ({s['model_state']})", "",
             f"LoRA r={s['high_rank']} on every projection pruned during training to uniform r={s['uniform_r']}'s "
             f"{s['budget']:,} LoRA parameters (global scope); {s['steps']} steps × batch {s['batch_size']} × "
             f"seq {s['seq_len']}, lr {s['lr']} (linear decay), {s['threads']} torch thread(s); the same schedule "
             f"for every scorer (warm-up {sched.get('warmup_steps')}, an event after every {sched.get('prune_every')} "
             f"step(s) up to step {s['steps'] - (sched.get('final_steps') or 0)}, {sched.get('prune_k')} × modules "
             f"components per event at most, {sched.get('final_steps')} final steps), damping "
             f"{sched.get('damping')} of the Fisher's mean diagonal, {sched.get('fisher')}-level gate gradients, "
             f"compensation within ±{sched.get('max_gate_change')} per gate. Seeds {s['seeds']} (same batches and "
             f"LoRA init across configurations). Held-out perplexity on the first {s['ppl_tokens']} Brown "
             f"held-out tokens; accuracy on the first {s['eval_limit']} documents per task; 'avg' is LLM-Pruner's "
             "metric averaged over the seven tasks. Mean [95 % t-interval over seeds]. Train seconds on a shared "
             "2-core machine (noisy).", "",
             "| configuration | scorer | compensation | LoRA params | held-out ppl | avg (LLM-Pruner) | val loss "
             "| train s |", "|---|---|---|---|---|---|---|---|"]
    for name in [*CONFIGS, REFERENCE]:
        if name not in summ["configs"]:
            continue
        c = summ["configs"][name]
        scorer, comp = (CONFIGS[name]["scorer"], "yes" if CONFIGS[name]["compensate"] else "no") \
            if name in CONFIGS else ("(uniform r=8, no pruning)", "")
        label = name if c["n"] == len(s["seeds"]) else f"{name} (n={c['n']})"
        lines.append(f"| {label} | {scorer} | {comp} | {c['params']['mean']:,.0f} | {_ci(c['ppl'])} | "
                     f"{_ci(c['avg'], 3)} | {_ci(c['val_loss'], 3)} | {c['train_seconds']['mean']:.0f} |")
    lines += ["", "Paired differences A − B. Perplexity: t-interval over seeds (paired by seed), and a paired "
              "bootstrap over the held-out windows × seeds; accuracy: paired bootstrap over documents × seeds "
              "(`rankadaptor.eval.compare`), in points. 'no test': fewer than 3 pairs or no spread.", "",
              "| A | B | question | Δ ppl by seed | Δ ppl windows × seeds | Δ avg (pts) | Δ val loss by seed |",
              "|---|---|---|---|---|---|---|"]
    for p in summ["pairs"]:
        w = p["ppl_windows"]
        lines.append(f"| {p['a']} | {p['b']} | {p['why']} | {_diff(p['ppl_by_seed'])} | "
                     f"{_diff(w, mean='diff') if w else '-'} | {_diff(p['average'], mean='diff', scale=100)} | "
                     f"{_diff(p['val_loss_by_seed'], digits=3)} |")
    off = sorted({r["config"] for r in payload["runs"] if not r["budget"]["at_budget"]})
    lines += ["", f"Budget check: all {len(payload['runs'])} runs end at the budget (at most it, and less than one "
              "rank component below it)." if not off else f"Budget check: OFF BUDGET: {off}."]
    return "\n".join(lines) + "\n"


# ---- main --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    from dataclasses import asdict

    import torch

    from rankadaptor.data import load_recovery_data
    from rankadaptor.fileio import read_json, write_json_atomic
    from rankadaptor.lora.pruned_lora import PrunedLoRAMethod

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = ex.Recipe(steps=args.steps, eval_limit=args.eval_limit, ppl_tokens=args.ppl_tokens, threads=args.threads)
    pruned = ex.ModelCache(ex.pruned_artefact())
    tokenizer = pruned.tokenizer  # loads the model once; runs get deep copies
    data = load_recovery_data(None, tokenizer, seq_len=recipe.seq_len, max_val=recipe.recovery_config(0).max_val)
    budget = ex.uniform_budget(pruned.model, recipe.uniform_r)
    setup = {**ex.recipe_dict(recipe), "seeds": args.seeds, "budget": budget, "model_state": "SmolLM2-135M pruned 20 % "
             "by LLM-Pruner (element1)", "pruned": pruned.spec.rsplit("/", 1)[-1]}
    # the schedule every PrunedLoRA configuration shares (it depends only on the sizes, budget and steps)
    schedule = PrunedLoRAMethod.for_budget(pruned.model, budget, recipe.steps, init_rank=recipe.high_rank,
                                           scope="global").resolved
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    key = {k: v for k, v in setup.items() if k != "seeds"}

    def write_table() -> str:
        rows = []
        for path in sorted(work.glob("*-s*.json")):
            saved = read_json(path, what="ablation run")
            if saved.get("setup") == key and saved["config"] in args.configs and saved["seed"] in args.seeds:
                rows.append({k: v for k, v in saved.items() if k != "setup"})
        payload = {"setup": setup, "schedule": asdict(schedule), "complete": len(rows) == len(args.configs) * len(
            args.seeds), "runs": rows, "summary": summarise(rows, args.seeds)}
        text = markdown(payload)
        ex.write_results(args.out, payload, text, seed=args.seeds[0])
        return text

    for seed in args.seeds:  # seed-major: a partial result is balanced across configurations
        for config in args.configs:
            path = work / f"{config}-s{seed}.json"
            if path.exists() and read_json(path, what="ablation run").get("setup") == key:
                continue
            row = one_run(pruned, tokenizer, recipe, data, config, seed)
            write_json_atomic(path, {"setup": key, **row})
            print(json.dumps({"config": config, "seed": seed, "ppl": _ppl(row), "avg": _avg(row),
                              "train_seconds": round(row["train_seconds"])}), flush=True)
            write_table()  # the table so far, after every finished run
    print(write_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
