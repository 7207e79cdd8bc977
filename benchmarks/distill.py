"""Distilled vs plain LoRA recovery of SmolLM2-135M pruned 20 %, paired by seed at equal steps.

Both variants train uniform r=8 LoRA with the kit's recipe (``rankadaptor.experiments.Recipe``:
steps, batch, lr) from the same seed (same LoRA init, same batches); the distilled one learns
from the unpruned SmolLM2-135M as well (``rankadaptor.lora.distill``: alpha, T below). Each model
is measured by the kit's ``measure`` (THE held-out perplexity, seven tasks on the first
``eval_limit`` documents). Time per step is the median over steps 2.. of each run. The table gives
per variant the mean [95 % t-interval] over seeds and distilled − plain paired by seed
(``rankadaptor.stats.paired_difference``; "no test" below 3 seeds or without spread).

Resumable per run: each (variant, seed) is saved under benchmarks/work/distill/ when done and not
redone; the results are rewritten after every run.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/distill.py --seeds 0 1 2

Writes benchmarks/results/distill.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("plain", "distill")
KEYS = (("ppl", "held-out perplexity", 2), ("avg", "seven-task average (reported metric, %)", 1),
        ("val_loss", "validation loss", 3), ("seconds_per_step", "s / step", 2))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=None, help="default: the kit's Recipe.steps")
    p.add_argument("--limit", type=int, default=None, help="documents per task (default: the kit's eval_limit)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--work", default=str(HERE / "work" / "distill"))
    p.add_argument("--name", default="distill", help="results file name under benchmarks/results/")
    return p.parse_args(argv)


def recipe_of(args):
    from dataclasses import replace

    from rankadaptor.experiments import Recipe

    recipe = Recipe()
    if args.steps is not None:
        recipe = replace(recipe, steps=args.steps)
    if args.limit is not None:
        recipe = replace(recipe, eval_limit=args.limit)
    return recipe


def one_run(variant: str, seed: int, args, pruned, teacher, data) -> dict:
    """Train one variant from a fresh copy of the pruned model and measure it."""
    import torch

    from rankadaptor.experiments import measure
    from rankadaptor.lora.distill import DistillConfig, Distiller
    from rankadaptor.lora.ranks import RankPlan, decoder_layer_names
    from rankadaptor.lora.recover import recover
    from rankadaptor.metrics import paper_average

    recipe = recipe_of(args)
    loaded = pruned.fresh()
    plan = RankPlan.uniform(len(decoder_layer_names(loaded.model)), recipe.uniform_r)
    distill = None
    if variant == "distill":
        distill = Distiller(teacher.model, DistillConfig(alpha=args.alpha, temperature=args.temperature),
                            identity=teacher.identity, tokenizer=teacher.tokenizer)
    torch.manual_seed(seed)
    res = recover(loaded.model, loaded.tokenizer, plan, recipe.recovery_config(seed), data=data, distill=distill)
    rec = res.record
    t0 = time.perf_counter()
    scores = measure(res.model, loaded.tokenizer, recipe, seed=seed)
    steps = [c["seconds"] for c in rec["loss_curve"]]
    return {"variant": variant, "seed": seed, "val_loss": rec["val_loss"],
            "seconds_per_step": statistics.median(steps[1:] or steps), "train_seconds": rec["train_seconds"],
            "loss_curve": [round(c["loss"], 4) for c in rec["loss_curve"]],
            "kl_curve": [round(c["kl"], 4) for c in rec["loss_curve"]] if distill else None,
            "ppl": scores["perplexity"]["perplexity"], "avg": 100 * paper_average(scores["tasks"]),
            "tasks": {t: {k: v.get(k) for k in ("acc", "acc_norm", "n")} for t, v in scores["tasks"].items()},
            "eval": scores, "measure_seconds": time.perf_counter() - t0,
            "dtype": rec["dtype"], "lora_dtype": rec["lora_dtype"], "distill": rec.get("distill")}


def summarise(runs: list[dict]) -> dict:
    from rankadaptor.stats import mean_ci, paired_difference

    out = {v: {k: mean_ci([r[k] for r in runs if r["variant"] == v]).to_dict() for k, _, _ in KEYS}
           for v in VARIANTS if any(r["variant"] == v for r in runs)}
    plain = {r["seed"]: r for r in runs if r["variant"] == "plain"}
    pairs = [(r, plain[r["seed"]]) for r in runs if r["variant"] == "distill" and r["seed"] in plain]
    if pairs:
        out["distill_minus_plain"] = {k: paired_difference([a[k] for a, _ in pairs], [b[k] for _, b in pairs])
                                      for k, _, _ in KEYS}
    return out


def compare_documents(runs: list[dict]) -> dict | None:
    """The seven-task average and perplexity, distilled − plain, by ``eval.compare``'s paired bootstrap over
    documents (and perplexity windows) × seeds: the same documents, so a document-level interval."""
    from rankadaptor.eval.compare import compare_results

    a = [r["eval"] for r in runs if r["variant"] == "distill"]
    b = [r["eval"] for r in runs if r["variant"] == "plain"]
    if not a or not b:
        return None
    out = compare_results(a, b, names_a=[f"distill seed {r['seed']}" for r in runs if r["variant"] == "distill"],
                          names_b=[f"plain seed {r['seed']}" for r in runs if r["variant"] == "plain"])
    return {"average": out["average"], "perplexity": out["perplexity"], "settings": out["settings"]}


def markdown(results: dict) -> str:
    from rankadaptor.stats import verdict_of

    s, r = results["summary"], results["settings"]
    lines = [f"# Distilled vs plain recovery ({r['model']} pruned {int(100 * r['prune_ratio'])} %, "
             f"{len(r['seeds'])} seeds)", "",
             f"Uniform r={r['recipe']['uniform_r']} LoRA, {r['recipe']['steps']} steps × {r['recipe']['batch_size']} × "
             f"{r['recipe']['seq_len']} tokens, lr {r['recipe']['lr']}, seeds {r['seeds']}; distillation from the "
             f"unpruned model with alpha {r['alpha']}, T {r['temperature']}. Perplexity: the first "
             f"{r['recipe']['ppl_tokens']} held-out tokens; accuracy: the first {r['recipe']['eval_limit']} documents "
             "of each of the seven tasks (LLM-Pruner's reported metric). Mean [95 % CI] over seeds; the last column "
             "is distilled − plain paired by seed.", "",
             "| | plain | distilled | distilled − plain | verdict |", "|---|---|---|---|---|"]
    for key, label, digits in KEYS:
        cells = [_ci(s[v][key], digits) if v in s else "–" for v in VARIANTS]
        d = s.get("distill_minus_plain", {}).get(key)
        diff = _ci(d, digits) if d else "–"
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {diff} | {verdict_of(d) if d else '–'} |")
    docs = results.get("documents")
    if docs:
        avg, ppl = docs["average"], docs["perplexity"]
        lines += ["", f"Over documents × seeds ({docs['settings']['method']}, {docs['settings']['n_boot']} replicates): "
                  f"seven-task average distilled − plain {100 * avg['diff']:+.2f} points "
                  f"[{100 * avg['ci_low']:+.2f}, {100 * avg['ci_high']:+.2f}], {avg['verdict']}"
                  + (f"; perplexity {ppl['diff']:+.3f} [{ppl['ci_low']:+.3f}, {ppl['ci_high']:+.3f}], {ppl['verdict']}"
                     if ppl else "") + "."]
    lines += ["", f"Hardware: {results['hardware']}; seconds per step are the median of steps 2.. of each run, "
              "measured with other jobs on the machine."]
    return "\n".join(lines) + "\n"


def _ci(c: dict, digits: int) -> str:
    if c["n"] < 2:
        return f"{c['mean']:.{digits}f}"
    return f"{c['mean']:.{digits}f} [{c['ci_low']:.{digits}f}, {c['ci_high']:.{digits}f}]"


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from rankadaptor.data import load_recovery_data
    from rankadaptor.experiments import ModelCache, pruned_artefact, recipe_dict, write_results
    from rankadaptor.models.loading import load_model
    from rankadaptor.provenance import provenance

    recipe = recipe_of(args)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    artefact = pruned_artefact(args.model, 0.2)
    pruned = ModelCache(artefact)
    teacher = load_model(args.model)
    data = load_recovery_data(None, pruned.tokenizer, seq_len=recipe.seq_len)
    settings = {"model": args.model, "prune_ratio": 0.2, "artefact": str(artefact), "seeds": args.seeds,
                "alpha": args.alpha, "temperature": args.temperature, "recipe": recipe_dict(recipe)}
    runs = []
    for seed in args.seeds:
        for variant in VARIANTS:
            path = work / f"{variant}-seed{seed}-steps{recipe.steps}-limit{recipe.eval_limit}.json"
            if path.exists():
                run = json.loads(path.read_text())
                if run.get("settings") != settings | {"seeds": None}:
                    raise SystemExit(f"{path} was made with other settings; remove it or change --work")
            else:
                run = {**one_run(variant, seed, args, pruned, teacher, data), "settings": settings | {"seeds": None}}
                path.write_text(json.dumps(run))
            runs.append(run)
            results = {"settings": settings, "runs": [{k: v for k, v in r.items() if k != "eval"} for r in runs],
                       "summary": summarise(runs), "documents": compare_documents(runs),
                       "hardware": provenance(None)["hardware"]}
            paths = write_results(args.name, results, markdown(results))
    print(paths["markdown"].read_text())


if __name__ == "__main__":
    main()
