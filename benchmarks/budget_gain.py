"""Where the gain comes from: rank allocation or the wide-then-cut trajectory? (issue 14, item 7)

SmolLM2-135M pruned 20 % (the kit's artefact), every method held to uniform r=8's LoRA budget
(``experiments.train_method`` checks each final count), paired over seeds (seed s: the same data
order for every method), recovery of ``--steps`` (>= 4x the screening length ``--screen-steps``
that the short runs use: the searched plan's trials, PARA's and PrunedLoRA's allocation runs,
AdaLoRA's learning-rate grid). Measured with ``experiments.measure``: THE held-out perplexity
(Brown's held-out split) and the seven tasks, compared with uniform per document and window
(``eval.compare.compare_results``: paired bootstrap over documents x seeds) and on the recovery
corpus's validation loss (paired by seed, ``stats.paired_difference``).

The methods are data (``METHODS`` below: a label, a row of ``experiment_methods.METHODS`` and options);
``LEVERS`` names the paired contrasts that answer the question: a static allocation vs uniform
(does the allocation alone help?), a dynamic method vs its own allocation trained from scratch
(does the trajectory help?), EVA's initialisation vs its allocation alone. Add a method by adding
a row (``--methods-json FILE`` appends rows from a file). Every (method, seed) result is kept under
benchmarks/work/budget_gain/ and reused on a rerun (resumable).

    python benchmarks/budget_gain.py --seeds 5 --screen-steps 10 --steps 40       # the full size (hours)
    python benchmarks/budget_gain.py --seeds 2 --screen-steps 5 --steps 20 --eval-limit 10 \
        --ppl-tokens 2048 --search-trials 6 --out budget_gain_check               # a quick check (minutes)

``--eval-limit auto`` sizes the accuracy evaluation from a pilot: the finished units of the same
run at ``--pilot-limit`` documents per task (run it first), each method's comparison with uniform
gives the documents per task its seven-task average needs to detect ``--detect-points`` (observed
discordance, 80 % power: ``eval.compare.choose_documents``), and the median need, capped at
``--most-documents``, is the size; ``--choose-only`` prints the choice and stops. The results say
how the size was chosen.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
WORK = ROOT / "benchmarks" / "work" / "budget_gain"
# the full size (the defaults); a run below it in any of these says so above its table
FULL = {"seeds": 5, "steps": 40, "eval_limit": 50, "ppl_tokens": 4096, "search_trials": 16}

# key, label, experiment_methods.METHODS row, options: alloc_steps "screen" (allocation from a screening-length run),
# plan "searched" (the search's pick), lr_grid (multipliers of the recipe's lr tried at the screening length)
METHODS: list[dict] = [
    {"key": "uniform", "label": "uniform r=8", "method": "uniform"},
    {"key": "lora-star", "label": "LoRA* (4/6/10/12 scaled to the budget)", "method": "static-lora-star"},
    {"key": "eva", "label": "EVA (allocation + its initialisation)", "method": "eva"},
    {"key": "static-eva", "label": "EVA's allocation, plain init", "method": "static-eva"},
    {"key": "static-para", "label": "PARA's allocation of a short r=32 run, from scratch", "method": "static-para",
     "alloc_steps": "screen"},
    {"key": "static-prunedlora", "label": "PrunedLoRA's final allocation (short run), from scratch",
     "method": "static-prunedlora", "alloc_steps": "screen"},
    {"key": "searched", "label": "searched plan (RankAdaptor search, allocators as seeds)", "method": "plan",
     "plan": "searched"},
    {"key": "prunedlora", "label": "PrunedLoRA r=32 -> budget (dynamic)", "method": "prunedlora"},
    {"key": "para", "label": "r=32 trained, then PARA-compressed", "method": "para"},
    {"key": "adalora", "label": "AdaLoRA (lr tuned on a short grid)", "method": "adalora", "lr_grid": [1, 3, 10]},
    {"key": "super-uniform", "label": "super-adapter r=32 (nested), uniform truncation", "method": "super-uniform"},
    {"key": "super-search", "label": "super-adapter r=32 (nested), RankAdaptor's searched cut",
     "method": "super-search"},
    {"key": "super-para", "label": "super-adapter r=32 (nested), PARA's global threshold", "method": "super-para"},
    {"key": "super-energy", "label": "super-adapter r=32 (nested), PEFT's per-layer energy rule",
     "method": "super-energy"},
]
LEVERS: list[tuple[str, str, str]] = [  # (what it isolates, A, B): A - B
    ("allocation: PARA's ranks from scratch vs uniform", "static-para", "uniform"),
    ("allocation: PrunedLoRA's ranks from scratch vs uniform", "static-prunedlora", "uniform"),
    ("allocation: EVA's ranks (plain init) vs uniform", "static-eva", "uniform"),
    ("allocation: searched plan vs uniform", "searched", "uniform"),
    ("trajectory: r=32 then PARA vs PARA's ranks from scratch", "para", "static-para"),
    ("trajectory: PrunedLoRA vs its ranks from scratch", "prunedlora", "static-prunedlora"),
    ("initialisation: EVA's init vs EVA's ranks with plain init", "eva", "static-eva"),
    ("trajectory: nested r=32 truncated uniformly vs uniform r=8 from scratch", "super-uniform", "uniform"),
    ("allocation within the super-adapter: searched cut vs uniform truncation", "super-search", "super-uniform"),
    ("allocation within the super-adapter: searched cut vs PARA's threshold", "super-search", "super-para"),
    ("allocation within the super-adapter: searched cut vs the energy rule", "super-search", "super-energy"),
    ("searched cut of the super-adapter vs r=32 then PARA (each its own wide run)", "super-search", "para"),
]


def searched_plan(pruned, recipe, args, data):
    """A RankAdaptor search at the screening length (per layer), the allocators' plans as seeds; cached."""
    import optuna

    from rankadaptor.experiment_methods import allocation
    from rankadaptor.lora.ranks import RankPlan, module_costs
    from rankadaptor.search.objective import RecoverEvalObjective
    from rankadaptor.search.storage import open_storage
    from rankadaptor.search.study import SearchSettings, run_study

    path = WORK / f"searched-{args.search_trials}x{args.screen_steps}.json"
    if args.searched_plan:
        return RankPlan.from_json(args.searched_plan), {"from": args.searched_plan}
    if path.exists():
        saved = json.loads(path.read_text())
        return RankPlan.from_dict(saved["plan"]), saved["search"]
    seeds = [(name, allocation(name, pruned, recipe, 0, data, args.screen_steps).plan)
             for name in ("lora-star", "eva", "para", "prunedlora")]
    costs = module_costs(pruned.model)
    kwargs = dict(batch_size=recipe.batch_size, seq_len=recipe.seq_len, lr=recipe.lr, threads=recipe.threads)
    objective = RecoverEvalObjective(str(pruned.spec), "loss", args.screen_steps, recovery_kwargs=kwargs,
                                     final_tokens=recipe.ppl_tokens)
    settings = SearchSettings(study=f"budget-gain-{args.search_trials}x{args.screen_steps}", trials=args.search_trials,
                              seeds=seeds, n_initial=len(seeds) + 2, noise_every=max(2, args.search_trials // 3),
                              final_seeds=3, patience=args.search_trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    result = run_study(settings, objective, costs, objective.identity(),
                       storage=open_storage(f"sqlite:///{WORK / 'search.db'}"))
    plan = result.space.to_rank_plan(result.report["best"]["ranks"])
    info = {"seconds": time.perf_counter() - t0, "messages": result.report["messages"],
            "source": result.report["best"]["source"], "trials": args.search_trials, "steps": args.screen_steps}
    path.write_text(json.dumps({"plan": plan.to_dict(), "search": info}))
    return plan, info


def tuned_lr(pruned, recipe, args, row, data) -> tuple[float, list]:
    """The grid lr with the lowest validation loss after a screening-length run on seed 0 (cached)."""
    from rankadaptor.experiments import train_method

    path = WORK / f"lr-{row['key']}-{args.screen_steps}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        return saved["lr"], saved["grid"]
    short = replace(recipe, steps=args.screen_steps)
    grid = []
    for mult in row["lr_grid"]:
        run = train_method(row["method"], pruned, short, 0, data=data, lr=recipe.lr * mult)
        grid.append({"lr": recipe.lr * mult, "val_loss": run.record["val_loss"]})
    best = min(grid, key=lambda g: g["val_loss"])["lr"]
    path.write_text(json.dumps({"lr": best, "grid": grid}))
    return best, grid


def one_unit(row: dict, seed: int, pruned, recipe, args, data, context: dict) -> dict:
    """Train one method on one seed, measure it; the result is saved and reused."""
    from rankadaptor.experiments import measure, train_method

    path = unit_path(row, seed, args, args.eval_limit)
    if path.exists():
        return json.loads(path.read_text())
    kw: dict = {}
    if row.get("alloc_steps") == "screen":
        kw["alloc_steps"] = args.screen_steps
    elif row.get("alloc_steps"):
        kw["alloc_steps"] = int(row["alloc_steps"])
    if row.get("plan") == "searched":
        kw["plan"] = context["searched"][0]
    elif row.get("plan"):
        from rankadaptor.lora.ranks import RankPlan

        kw["plan"] = RankPlan.from_json(row["plan"])
    if row.get("lr_grid"):
        kw["lr"] = context[f"lr:{row['key']}"][0]
    kw.update(row.get("overrides", {}))
    t0 = time.perf_counter()
    run = train_method(row["method"], pruned, recipe, seed, data=data, **kw)
    seconds = time.perf_counter() - t0
    tokenizer = pruned.tokenizer
    res = measure(run.model, tokenizer, recipe, seed)
    unit = {"key": row["key"], "seed": seed, "summary": run.summary(), "seconds_total": seconds,
            "results": res, "budget": run.budget}
    path.write_text(json.dumps(unit, default=str))
    return unit


def unit_path(row: dict, seed: int, args, eval_limit: int) -> Path:
    """Where one method's run on one seed is saved: the name holds everything its result depends on."""
    name = f"{row['key']}-s{seed}-{args.steps}x{args.screen_steps}-{eval_limit}-{args.ppl_tokens}"
    if row.get("plan") == "searched":  # and the searched plan on the search's size (or the plan file given)
        name += f"-given-{Path(args.searched_plan).stem}" if args.searched_plan else f"-search{args.search_trials}"
    return WORK / f"{name}.json"


def choose_eval_limit(rows: list[dict], seeds: list[int], args) -> dict:
    """The accuracy evaluation's size from the pilot's units (``--eval-limit auto``)."""
    from rankadaptor.eval.compare import choose_documents

    missing = [unit_path(r, s, args, args.pilot_limit).name for r in rows for s in seeds
               if not unit_path(r, s, args, args.pilot_limit).exists()]
    if missing:
        raise SystemExit(f"--eval-limit auto needs the pilot at {args.pilot_limit} documents per task; "
                         f"{len(missing)} of its units are missing (e.g. {missing[0]}): run this command with "
                         f"--eval-limit {args.pilot_limit} first")
    results = {(r["key"], s): json.loads(unit_path(r, s, args, args.pilot_limit).read_text())["results"]
               for r in rows for s in seeds}
    pilots = {r["key"]: ([results[(r["key"], s)] for s in seeds], [results[("uniform", s)] for s in seeds])
              for r in rows if r["key"] != "uniform"}
    return choose_documents(pilots, detect=args.detect_points / 100, most=args.most_documents)


def compare(units: dict, a: str, b: str, seeds: list[int]) -> dict | None:
    from rankadaptor.eval.compare import compare_results
    from rankadaptor.stats import paired_difference

    if not all((a, s) in units and (b, s) in units for s in seeds):
        return None
    ra = [units[(a, s)]["results"] for s in seeds]
    rb = [units[(b, s)]["results"] for s in seeds]
    cmp = compare_results(ra, rb, names_a=[f"{a}-s{s}" for s in seeds], names_b=[f"{b}-s{s}" for s in seeds])
    val = None  # a cut adapter's record holds the wide adapter's validation loss, not its own: no comparison
    if not (_cut_row(units, a, seeds) or _cut_row(units, b, seeds)):
        val = paired_difference([units[(a, s)]["summary"]["val_loss"] for s in seeds],
                                [units[(b, s)]["summary"]["val_loss"] for s in seeds])
    return {"average": cmp["average"], "perplexity": cmp["perplexity"], "val_loss": val}


def total_seconds(summary: dict) -> float:
    """One run's compute on this machine: its training, the allocation run it needed, and for a cut row the
    wide adapter's training (its record's ``train_seconds``) plus the cut or the cheap search."""
    alloc = (summary.get("allocation") or {}).get("seconds") or 0.0
    cut = (summary.get("compute") or {}).get("cut_seconds") or 0.0
    return summary["train_seconds"] + alloc + cut


def _cut_row(units: dict, key: str, seeds: list[int]) -> bool:
    """A wide adapter cut to the budget after training (PARA, the super-adapter's cuts)."""
    from rankadaptor.experiment_methods import CUT_AFTER_TRAINING

    return any(units[(key, s)]["summary"]["method"] in CUT_AFTER_TRAINING for s in seeds if (key, s) in units)


def summarise(units: dict, rows: list[dict], seeds: list[int], search_seconds: float | None = None) -> dict:
    """Per method: ppl, average, val loss, compute, paired differences to uniform; the levers. ``search_seconds``:
    the RankAdaptor search that produced the searched plan (run once, shared by its seeds): its allocation cost."""
    from rankadaptor.metrics import paper_average
    from rankadaptor.stats import mean_ci

    table = {}
    for row in rows:
        mine = [units[(row["key"], s)] for s in seeds if (row["key"], s) in units]
        if not mine:
            continue
        alloc = mine[0]["summary"].get("allocation") or {}
        search = search_seconds if row.get("plan") == "searched" else None
        table[row["key"]] = {
            "label": row["label"], "seeds": [u["seed"] for u in mine],
            "params_relative": mine[0]["budget"]["relative"],
            "val_loss": None if _cut_row(units, row["key"], seeds)
            else mean_ci([u["summary"]["val_loss"] for u in mine]).to_dict(),
            "ppl": mean_ci([u["results"]["perplexity"]["perplexity"] for u in mine]).to_dict(),
            "average": mean_ci([paper_average(u["results"]["tasks"]) for u in mine]).to_dict(),
            "train_seconds": mean_ci([u["summary"]["train_seconds"] for u in mine]).to_dict(),
            "allocation_seconds": search or alloc.get("seconds"), "allocation_note": alloc.get("note"),
            "total_seconds": mean_ci([total_seconds(u["summary"]) + (search or 0.0) for u in mine]).to_dict(),
            "train_steps": mine[0]["summary"].get("steps"),  # every seed trains the same number of steps
            "search_forward_tokens": max(((u["summary"].get("compute") or {}).get("search_forward_tokens") or 0)
                                         for u in mine),
            "vs_uniform": None if row["key"] == "uniform" else compare(units, row["key"], "uniform", seeds)}
    levers = [{"lever": name, "a": a, "b": b, **(compare(units, a, b, seeds) or {})} for name, a, b in LEVERS]
    return {"table": table, "levers": [lv for lv in levers if "val_loss" in lv]}


def _ci(d: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if not d:
        return "—"
    mean = d.get("diff", d.get("mean"))
    return (f"{mean * scale:+.{digits}f} [{d['ci_low'] * scale:+.{digits}f}, {d['ci_high'] * scale:+.{digits}f}] "
            f"{d['verdict']}")


def _total(row: dict) -> str:
    return f"{row['total_seconds']['mean']:.0f}" if "total_seconds" in row else "—"  # results made before it existed


def choice_lines(choice: dict | None) -> list[str]:
    if not choice:
        return []
    return [f"Documents per task: {choice['documents']}, chosen from the pilot at {choice['pilot_documents']} "
            f"documents per task to detect {choice['detect'] * 100:g} points in the seven-task average "
            f"(`eval.compare.choose_documents`: the {choice['basis']}; median need "
            f"{choice['median_need'] or 'unknown'}, cap {choice['cap']}).", ""]


def reductions(setting: dict) -> list[str]:
    """What a run left out of the full size (``FULL``, and every row of ``METHODS``); empty for a full run."""
    out = [f"{setting[k]} {what} (full: {FULL[k]})" for k, what in
           (("steps", "steps"), ("eval_limit", "documents per task"), ("ppl_tokens", "perplexity tokens"))
           if setting[k] < FULL[k]]
    if len(setting["seeds"]) < FULL["seeds"]:
        out.append(f"{len(setting['seeds'])} seeds (full: {FULL['seeds']})")
    keys = {r["key"] for r in setting["methods"]}
    trials = setting.get("search_trials")
    if "searched" in keys and trials is not None and trials < FULL["search_trials"]:
        out.append(f"a {trials}-trial search (full: {FULL['search_trials']})")
    if not {r["key"] for r in METHODS} <= keys:
        out.append(f"{sum(r['key'] in keys for r in METHODS)} of the {len(METHODS)} methods")
    return out


def markdown(result: dict) -> str:
    s = result["setting"]
    reduced = reductions(s)
    lines = ["# Where the gain comes from: allocation or trajectory (SmolLM2-135M pruned 20 %, uniform-r8 budget)", "",
             (f"REDUCED SIZE: {', '.join(reduced)}. " if reduced else "") + f"Recovery {s['steps']} steps "
             f"× {s['batch_size']}×{s['seq_len']} tokens at lr {s['lr']} (screening length {s['screen_steps']}); seeds "
             f"{s['seeds']}; seven tasks on the first {s['eval_limit']} documents each, held-out perplexity on "
             f"{s['ppl_tokens']} Brown held-out tokens. Δ vs uniform: paired bootstrap over documents × seeds (average, "
             "points) and windows × seeds (perplexity); validation loss of the recovery corpus paired by seed ('—' for "
             "adapters cut after training: their record holds the wide adapter's loss, not the cut's). "
             "95 % intervals; 'no test' = fewer than 3 pairs or no spread.", "",
             *choice_lines(s.get("eval_limit_choice")),
             "| method | params / budget | held-out ppl | Δ ppl vs uniform | 7-task avg (%) | Δ avg vs uniform (pts) | "
             "Δ val loss vs uniform | train s (+ allocation s) | total s | steps | search fwd tokens |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in result["table"].items():
        v = r["vs_uniform"] or {}
        alloc = f" (+{r['allocation_seconds']:.0f})" if r.get("allocation_seconds") else ""
        lines.append(f"| {r['label']} | {r['params_relative']:.3f} | {r['ppl']['mean']:.2f} | {_ci(v.get('perplexity'), 1, 2)} | "
                     f"{100 * r['average']['mean']:.2f} | {_ci(v.get('average'), 100, 2)} | {_ci(v.get('val_loss'), 1, 4)} | "
                     f"{r['train_seconds']['mean']:.0f}{alloc} | {_total(r)} | {r.get('train_steps') or '—'} | "
                     f"{r.get('search_forward_tokens') or 0:,} |")
    lines += ["", f"Compute: 'total s' = training + the allocation run it needed + a cut row's wide training and its cut "
              f"or cheap search, on this machine; 'steps' = training steps of the final adapter (a cut row: of its wide "
              f"adapter); the allocation runs add {s['screen_steps']} steps each (PARA's and PrunedLoRA's short runs; "
              "EVA's is forward passes only); 'search fwd tokens' = tokens the super-adapter's cheap search scored.",
              "", "Levers (A − B, paired): held-out perplexity; 7-task average (pts); validation loss", ""]
    for lv in result["levers"]:
        lines.append(f"* {lv['lever']}: ppl {_ci(lv.get('perplexity'), 1, 2)}; avg {_ci(lv.get('average'), 100, 2)}; "
                     f"val loss {_ci(lv.get('val_loss'), 1, 4)}")
    if result.get("adalora_lr"):
        lines += ["", "AdaLoRA lr grid (validation loss after the screening length, seed 0): " +
                  ", ".join(f"{g['lr']:g}: {g['val_loss']:.4f}" for g in result["adalora_lr"]["grid"]) +
                  f"; chosen {result['adalora_lr']['lr']:g}"]
    if result.get("search"):
        lines += ["", f"Searched plan: {result['search']}"]
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=FULL["seeds"])
    ap.add_argument("--screen-steps", type=int, default=10)
    ap.add_argument("--steps", type=int, default=FULL["steps"], help="recovery length (>= 4x --screen-steps)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--eval-limit", default=str(FULL["eval_limit"]),
                    help="documents per task, or 'auto': chosen from the pilot at --pilot-limit (see above)")
    ap.add_argument("--pilot-limit", type=int, default=10)
    ap.add_argument("--detect-points", type=float, default=2.0,
                    help="--eval-limit auto: the seven-task average difference to detect, in points")
    ap.add_argument("--most-documents", type=int, default=1000, help="--eval-limit auto: the cap")
    ap.add_argument("--choose-only", action="store_true", help="--eval-limit auto: print the choice and stop")
    ap.add_argument("--ppl-tokens", type=int, default=FULL["ppl_tokens"])
    ap.add_argument("--search-trials", type=int, default=FULL["search_trials"])
    ap.add_argument("--searched-plan", default=None, help="a RankPlan JSON instead of running the search")
    ap.add_argument("--methods", default=None, help="comma-separated keys of METHODS to run (default all)")
    ap.add_argument("--methods-json", default=None, help="a JSON list of extra method rows (same keys as METHODS)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="budget_gain")
    args = ap.parse_args(argv)
    if args.steps < 4 * args.screen_steps:
        ap.error(f"--steps {args.steps} must be >= 4x --screen-steps {args.screen_steps} (issue 14)")
    if args.eval_limit != "auto" and not (args.eval_limit.isdigit() and int(args.eval_limit) > 0):
        ap.error(f"--eval-limit {args.eval_limit!r} must be a positive number of documents per task or 'auto'")
    if args.choose_only and args.eval_limit != "auto":
        ap.error("--choose-only goes with --eval-limit auto")
    import optuna
    import torch

    from rankadaptor.data import load_recovery_data
    from rankadaptor.experiments import ModelCache, Recipe, pruned_artefact, write_results

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    WORK.mkdir(parents=True, exist_ok=True)
    rows = list(METHODS) + (json.loads(Path(args.methods_json).read_text()) if args.methods_json else [])
    if args.methods:
        wanted = args.methods.split(",")
        rows = [r for r in rows if r["key"] in wanted or r["key"] == "uniform"]
    seeds = list(range(args.seeds))
    choice = None
    if args.eval_limit == "auto":
        choice = choose_eval_limit(rows, seeds, args)
        print(json.dumps(choice, indent=1))
        if args.choose_only:
            return 0
    args.eval_limit = choice["documents"] if choice else int(args.eval_limit)
    recipe = Recipe(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                    eval_limit=args.eval_limit, ppl_tokens=args.ppl_tokens, threads=args.threads)
    pruned = ModelCache(pruned_artefact())
    data = load_recovery_data(None, pruned.tokenizer, seq_len=recipe.seq_len)
    context: dict = {}
    if any(r.get("plan") == "searched" for r in rows):
        context["searched"] = searched_plan(pruned, recipe, args, data)
    for row in rows:
        if row.get("lr_grid"):
            context[f"lr:{row['key']}"] = tuned_lr(pruned, recipe, args, row, data)
    units = {}
    for seed in seeds:  # seed-major: a partial run already holds complete pairs
        for row in rows:
            unit = one_unit(row, seed, pruned, recipe, args, data, context)
            units[(row["key"], seed)] = unit
            logging.info("%s seed %d: val loss %.4f, ppl %.2f, %.0f s", row["key"], seed, unit["summary"]["val_loss"],
                         unit["results"]["perplexity"]["perplexity"], unit["seconds_total"])
    setting = {"steps": args.steps, "screen_steps": args.screen_steps, "batch_size": args.batch_size,
               "seq_len": args.seq_len, "lr": args.lr, "seeds": seeds, "eval_limit": args.eval_limit,
               "ppl_tokens": args.ppl_tokens, "methods": rows, "eval_limit_choice": choice,
               "search_trials": None if args.searched_plan else args.search_trials}
    setting["validation"] = bool(reductions(setting))  # below the full size in any way (the table says which)
    result = {"setting": setting,
              **summarise(units, rows, seeds, context["searched"][1].get("seconds") if "searched" in context else None)}
    for row in rows:
        if f"lr:{row['key']}" in context:
            lr, grid = context[f"lr:{row['key']}"]
            result[f"{row['key']}_lr"] = {"lr": lr, "grid": grid}
    if "searched" in context:
        result["search"] = {"plan_ranks": context["searched"][0].ranks, **context["searched"][1]}
    result["command"] = "python benchmarks/budget_gain.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_results(args.out, result, markdown(result), seed=0)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
