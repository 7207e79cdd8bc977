"""Search strategies on synthetic objectives whose optimum is known (issue 14, item 3).

Two objectives from ``rankadaptor.search.synthetic`` (the same functions ``--objective`` imports):
``additive`` (unequal layer importances, additive in log-rank) and ``neighbour_pairs`` (plus
interactions between neighbouring layers). Setting: 30 layers (SmolLM2-135M's depth), first 4 /
last 2 fixed at rank 8, candidates {2..12}, budget = uniform r=8 ± 1 %. Every strategy runs
through ``run_study`` exactly as the CLI does (common random numbers, noise repeats every 8
trials, final re-evaluation of the pick on 3 fresh seeds), 25 trials, at noise sd 0.002 and 0.01,
over several search seeds; search seed s uses landscape s for every strategy, so strategies are
compared paired by seed.

Reported per (objective, noise, strategy), mean with a 95 % t-interval over seeds: the fraction
of the oracle gain the final pick reaches (true value of the pick minus uniform's, over the best
plan found by 20k samples + hill climbing on the truth minus uniform's), trials to the best
measured trial, and the proposal overhead; and the paired difference of the fraction to random
and TPE. ``--overhead`` also times one proposal (fit + pool scoring + climb) at 10,000 candidates
on the real model's per-layer and per-module spaces.

    python benchmarks/search_compare.py --seeds 20 --overhead  # the committed table (~40 min on one core)
    python benchmarks/search_compare.py --seeds 2 --noise 0.002 --objectives additive   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

STRATEGIES = {  # label -> SearchSettings fields
    "rankadaptor-hierarchical": {"strategy": "rankadaptor", "surrogate": "hierarchical"},
    "rankadaptor-ridge": {"strategy": "rankadaptor", "surrogate": "ridge"},
    "rankadaptor-mlp": {"strategy": "rankadaptor", "surrogate": "mlp"},
    "random": {"strategy": "random"},
    "tpe": {"strategy": "tpe"},
    "gp": {"strategy": "gp"},
    # the default as the CLI runs it: its convergence test may stop the search before the trial budget
    "rankadaptor-hierarchical-converging": {"strategy": "rankadaptor", "surrogate": "hierarchical", "patience": 8},
    # trials spent on learning only: UCB with kappa 100 all but maximises the model's own uncertainty (a
    # D-optimal-like design); the pick is still the model's optimum. Shows what Thompson sampling's focus on
    # plausible optima buys over pure exploration (it is why Thompson is the default)
    "rankadaptor-hierarchical-variance": {"strategy": "rankadaptor", "surrogate": "hierarchical",
                                         "acquisition": "ucb", "kappa": 100.0},
}
# how the default was chosen (surrogate, acquisition): on search seeds this table never reports
DEVELOPMENT = ("the default (hierarchical surrogate, Thompson sampling; the final model weighing the measured noise "
               "by its degrees of freedom) was chosen on search seeds 100-109 (`--seed-offset 100 --seeds 10`), and "
               "Thompson sampling kept over pure exploration on seeds 100-159 (`search_compare_dev.md`), not on the "
               "seeds reported here")
DEFAULT_LABEL = "rankadaptor-hierarchical"  # rankadaptor.search.surrogates.DEFAULT_SURROGATE
CONVERGING_LABEL = "rankadaptor-hierarchical-converging"
VARIANCE_LABEL = "rankadaptor-hierarchical-variance"
# rows read as a difference to the default on the same seeds: row label -> the key of that difference
PAIRED_WITH_DEFAULT = {
    CONVERGING_LABEL: "vs_full_budget",  # what stopping early cost: the same searches run to the budget
    VARIANCE_LABEL: "vs_default",  # what Thompson's focus on plausible optima buys over learning alone
}
SETTING = {"space": "30 layers, first 4 / last 2 fixed at r=8, candidates 2..12, budget uniform-8 ± 1 %"}
DEVELOPMENT_SEEDS = 100  # search seeds from here on are for development; the committed table reports 0-19


def one_run(objective_name: str, noise: float, label: str, seed: int, trials: int, pool: int) -> dict:
    import optuna

    from rankadaptor.search import synthetic
    from rankadaptor.search.study import SearchSettings, make_space, run_study

    costs = [1.0] * 30
    # patience = trials: the convergence test never stops a search early here, so every strategy spends the
    # same number of trials (random, TPE and GP make no model predictions and never converge; the surrogate
    # strategies stopped after 19-24 of 25 trials on every reported additive seed when it was on); the
    # "-converging" row keeps the CLI's test to show what stopping early saves and costs
    fields = {"patience": trials, **STRATEGIES[label]}
    settings = SearchSettings(study=f"{label}-{seed}", trials=trials, pool=pool, seed=seed, final_seeds=3,
                              n_initial=8, noise_every=8, cv_every=5, **fields)
    space = make_space(settings, costs)
    objective = getattr(synthetic, objective_name)(space, noise=noise, seed=1000 + seed)  # landscape per seed
    t0 = time.perf_counter()
    result = run_study(settings, objective, costs, objective.identity(), storage=optuna.storages.InMemoryStorage())
    seconds = time.perf_counter() - t0
    best_ref = synthetic.oracle(objective, space, seed=seed)
    truth_uniform = float(objective.truth(space.uniform())[0])
    oracle_gain = float(objective.truth(best_ref)[0]) - truth_uniform
    values = [t.value for t in result.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    report = result.report
    overhead = [t.user_attrs["propose_seconds"] for t in result.study.get_trials(deepcopy=False)
                if "propose_seconds" in t.user_attrs]
    gain = float(objective.truth(report["best"]["ranks"])[0]) - truth_uniform
    return {"objective": objective_name, "noise": noise, "strategy": label, "seed": seed,
            "true_gain": gain, "oracle_gain": oracle_gain, "fraction": gain / oracle_gain,
            "trials_to_best": int(np.argmax(values)) + 1, "pick_source": report["best"]["source"],
            "verdict_vs_uniform": report.get("difference_vs_uniform", {}).get("verdict"),
            "noise_line": report["messages"][0], "model_cv_spearman": report["model_cv"]["spearman"],
            "propose_seconds": float(np.mean(overhead)) if overhead else None,
            "objective_calls": report["objective_calls"], "trials_run": report["objective_calls"]["trials"],
            "seconds": round(seconds, 1)}


def run_all(partial: Path, objectives: list[str], noises: list[float], strategies: list[str], seeds: list[int],
            trials: int, pool: int) -> list[dict]:
    """Every (objective, noise, seed, strategy) search at ``trials``; finished runs are read from ``partial``
    (a JSON line per run, shared with search_trials.py) and new ones appended to it, so a rerun resumes."""
    partial.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in partial.read_text().splitlines()] if partial.exists() else []
    done = [r for r in done if "trials_run" in r]  # runs made before every strategy spent the full budget: redo
    have = {(r["objective"], r["noise"], r["strategy"], r["seed"], r.get("trials")) for r in done}
    for objective in objectives:
        for noise in noises:
            for seed in seeds:
                for label in strategies:
                    if (objective, noise, label, seed, trials) in have:
                        continue
                    run = {**one_run(objective, noise, label, seed, trials, pool), "trials": trials}
                    done.append(run)
                    with partial.open("a") as fh:
                        fh.write(json.dumps(run) + "\n")
                    print(json.dumps({k: run[k] for k in ("objective", "noise", "strategy", "seed", "trials",
                                                         "fraction", "trials_to_best", "seconds")}), flush=True)
    wanted = {(o, n, s) for o in objectives for n in noises for s in strategies}
    return [r for r in done if (r["objective"], r["noise"], r["strategy"]) in wanted and r["seed"] in seeds
            and r.get("trials") == trials]


def summarise(runs: list[dict]) -> dict:
    from rankadaptor.stats import mean_ci

    table = {}
    for key in sorted({(r["objective"], r["noise"], r["strategy"]) for r in runs}):
        rs = sorted((r for r in runs if (r["objective"], r["noise"], r["strategy"]) == key), key=lambda r: r["seed"])
        row = {"fraction": mean_ci([r["fraction"] for r in rs]).to_dict(),
               "trials_to_best": mean_ci([r["trials_to_best"] for r in rs]).to_dict(),
               "oracle_gain": mean_ci([r["oracle_gain"] for r in rs]).to_dict(), "n_runs": len(rs),
               "trials_run": [r["trials_run"] for r in rs],
               "seeds": [r["seed"] for r in rs]}
        if rs[0]["propose_seconds"] is not None:
            row["propose_seconds"] = float(np.mean([r["propose_seconds"] for r in rs]))
        for other in ("random", "tpe"):
            if key[2] != other and (d := _paired(runs, rs, other)) is not None:
                row[f"vs_{other}"] = d
        if key[2] in PAIRED_WITH_DEFAULT and (d := _paired(runs, rs, DEFAULT_LABEL)) is not None:
            row[PAIRED_WITH_DEFAULT[key[2]]] = d
        table["|".join(map(str, key))] = row
    return table


def _paired(runs: list[dict], cell: list[dict], other: str) -> dict | None:
    """The cell's fraction minus another strategy's on the same objective, noise and seeds (None below 2 seeds)."""
    from rankadaptor.stats import paired_difference

    objective, noise = cell[0]["objective"], cell[0]["noise"]
    base = {r["seed"]: r["fraction"] for r in runs if (r["objective"], r["noise"], r["strategy"]) ==
            (objective, noise, other)}
    common = [r for r in cell if r["seed"] in base]
    if len(common) < 2:
        return None
    return paired_difference([r["fraction"] for r in common], [base[r["seed"]] for r in common])


def overhead(pool: int = 10_000, repeats: int = 3) -> dict:
    """Seconds per proposal (fit + pool scoring + climb) on the real pruned model's spaces, 25 trials of history."""
    import optuna

    from rankadaptor.experiments import ModelCache, pruned_artefact
    from rankadaptor.lora.ranks import module_costs
    from rankadaptor.search.sampler import RankAdaptorSampler
    from rankadaptor.search.space import plan_hash
    from rankadaptor.search.study import SearchSettings, make_space
    from rankadaptor.search.synthetic import additive

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    costs = module_costs(ModelCache(pruned_artefact()).model)
    out = {}
    for granularity in ("layer", "module"):
        for surrogate in ("hierarchical", "ridge", "mlp"):
            space = make_space(SearchSettings(study="o", trials=25, granularity=granularity), costs)
            obj = additive(space, noise=0.002, seed=0)
            X = space.sample(25, 0)
            study = optuna.create_study(direction="maximize")
            for x in X:
                study.add_trial(optuna.trial.create_trial(value=obj(x, seed=0), params={}, distributions={},
                                                          user_attrs={"ranks": x.tolist(), "plan_hash": plan_hash(x)}))
            sampler = RankAdaptorSampler(space, surrogate=surrogate, pool_size=pool, n_initial=8, cv_every=1000)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                sampler.propose(study)
                times.append(time.perf_counter() - t0)
            out[f"{granularity}/{surrogate}"] = {"median_seconds": float(np.median(times)), "pool": pool,
                                                 "units": int(space.n_free)}
    return out


def markdown(result: dict) -> str:
    s = result["setting"]
    seeds = s.get("seed_list", list(range(s["seeds"])))
    chosen = (f"a development run: search seeds the committed table (`search_compare.md`, seeds 0-19) never "
              f"reports" if min(seeds) >= DEVELOPMENT_SEEDS else DEVELOPMENT)
    lines = ["# Search strategies on synthetic objectives with a known optimum", "",
             f"{s['space']}; {s['trials']} trials per search for every strategy (the convergence test switched "
             f"off, except in the {CONVERGING_LABEL} row: the default as the CLI runs it, patience 8; uniform "
             "first, noise repeats every 8 trials, pick re-evaluated on 3 fresh seeds); "
             f"{s['seeds']} search seeds per cell (landscape s for seed s, so strategies are paired by seed); "
             "mean ± 95 % t-interval over seeds; search seeds "
             f"{seeds}; {chosen}. Fraction = (true value of the final "
             "pick − uniform's) / (oracle − uniform's); oracle = best of 20k samples + trade hill climbing on the truth.",
             "", "| objective | noise sd | strategy | fraction of oracle gain | trials run | trials to best | "
             "vs random (paired) | vs TPE (paired) | s / proposal |", "|---|---|---|---|---|---|---|---|---|"]
    for key, row in result["table"].items():
        objective, noise, strategy = key.split("|")
        cells = [_difference(row[f"vs_{other}"], 2) if f"vs_{other}" in row else "—" for other in ("random", "tpe")]
        f, t = row["fraction"], row["trials_to_best"]
        per = f"{row['propose_seconds']:.2f}" if "propose_seconds" in row else "—"
        ran = row["trials_run"]
        lines.append(f"| {objective} | {noise} | {strategy} | {f['mean']:.2f} [{f['ci_low']:.2f}, {f['ci_high']:.2f}] | "
                     f"{np.mean(ran):.1f} ({min(ran)}-{max(ran)}) | {t['mean']:.1f} [{t['ci_low']:.1f}, "
                     f"{t['ci_high']:.1f}] | {cells[0]} | {cells[1]} | {per} |")
    stops = [(key.split("|"), row) for key, row in result["table"].items() if "vs_full_budget" in row]
    if stops:
        lines += ["", "Stopping at convergence (the CLI's default) vs the same searches run to the trial budget, "
                  "fraction of the oracle gain, paired by seed:", ""]
        for (objective, noise, _), row in stops:
            d, ran = row["vs_full_budget"], row["trials_run"]
            early = sum(r < s["trials"] for r in ran)
            lines.append(f"* {objective}, sd {noise}: {early} of {len(ran)} searches stopped early ({np.mean(ran):.1f} "
                         f"trials on average); {_difference(d, 3)}")
    explore = [(key.split("|"), row) for key, row in result["table"].items() if "vs_default" in row]
    if explore:
        lines += ["", f"Trials spent on learning alone ({VARIANCE_LABEL}: UCB with kappa 100, the model's own "
                  f"uncertainty) minus the default's Thompson sampling, fraction of the oracle gain, paired by seed:", ""]
        lines += [f"* {objective}, sd {noise}: {_difference(row['vs_default'], 3)}" for (objective, noise, _), row in explore]
    goal = result.get("goal")
    if goal:
        lines += ["", f"Goal (issue 14): the default ({DEFAULT_LABEL}) reaches >= 70 % of the oracle gain at noise sd "
                  f"0.002 and is significantly ahead of random and TPE: {goal}"]
    if result.get("overhead"):
        lines += ["", "Proposal overhead (fit + scoring 10,000 pooled plans + trade climbing; 25 trials of history; "
                  "real pruned SmolLM2-135M spaces; one thread):", ""]
        trial, trial_cpu = real_trial_seconds()
        here = result.get("processor")
        same = trial is not None and trial_cpu == here  # a share across two machines would mean nothing
        for k, v in result["overhead"].items():
            share = f" ({v['median_seconds'] / trial:.1%} of a real screening trial)" if same else ""
            lines.append(f"* {k} ({v['units']} free units): {v['median_seconds']:.2f} s{share}")
        if trial:
            lines += ["", f"A real screening trial (5 steps on the pruned model, one thread) takes {trial:.1f} s on "
                      f"{trial_cpu}, the median measured by `python benchmarks/super_sweep.py --part throughput` "
                      "(`results/super_sweep.json`); issue 14's goal is a proposal under 5 % of it."]
            if not same:
                lines.append(f"These proposals were timed on another processor ({here}), so no share is stated: "
                             "re-run the throughput part on this machine to compare.")
    lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def _difference(d: dict, digits: int) -> str:
    """A paired difference as 'mean [low, high] verdict'."""
    verdict = d.get("verdict", "significant" if d["significant"] else "not significant")
    return f"{d['mean']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}] {verdict}"


def real_trial_seconds() -> tuple[float | None, str | None]:
    """The median real screening trial measured by super_sweep's throughput part, and the processor it ran on."""
    path = ROOT / "benchmarks" / "results" / "super_sweep.json"
    if not path.exists():
        return None, None
    record = json.loads(path.read_text())
    seconds = record.get("throughput", {}).get("screen_seconds")
    cpu = record.get("provenance", {}).get("hardware", {}).get("processor")
    return (float(np.median(seconds)), cpu) if seconds else (None, None)


def goal_line(table: dict) -> str:
    out = []
    for key, row in table.items():
        objective, noise, strategy = key.split("|")
        if strategy != DEFAULT_LABEL or float(noise) != 0.002:
            continue
        reached = row["fraction"]["mean"] >= 0.7
        if not all(f"vs_{o}" in row for o in ("random", "tpe")):
            out.append(f"{objective}: not judged (fraction {row['fraction']['mean']:.2f}; random and TPE not run)")
            continue
        ahead = all(row[f"vs_{o}"]["ci_low"] > 0 for o in ("random", "tpe"))
        out.append(f"{objective}: {'MET' if reached and ahead else 'NOT met'} (fraction {row['fraction']['mean']:.2f}, "
                   f"ahead of random and TPE: {'yes' if ahead else 'no'})")
    return "; ".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=25)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="search seeds offset .. offset+seeds-1 (develop on seeds the committed table does not report)")
    ap.add_argument("--noise", default="0.002,0.01")
    ap.add_argument("--objectives", default="additive,neighbour_pairs")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--pool", type=int, default=10_000)
    ap.add_argument("--overhead", action="store_true", help="also time one proposal on the real model's spaces")
    ap.add_argument("--partial", default=str(ROOT / "benchmarks" / "work" / "search_compare.jsonl"),
                    help="finished runs are appended here and skipped on a rerun (resumable)")
    ap.add_argument("--out", default="search_compare")
    args = ap.parse_args(argv)
    import logging

    import optuna
    import torch

    from rankadaptor.experiments import write_results

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seeds = list(range(args.seed_offset, args.seed_offset + args.seeds))
    runs = run_all(Path(args.partial), args.objectives.split(","), [float(x) for x in args.noise.split(",")],
                   args.strategies.split(","), seeds, args.trials, args.pool)
    table = summarise(runs)
    result = {"setting": {**SETTING, "trials": args.trials, "seeds": args.seeds,
                          "seed_list": seeds, "pool": args.pool,
                          "strategies": {k: STRATEGIES[k] for k in args.strategies.split(",")}},
              "table": table, "goal": goal_line(table), "runs": runs}
    if args.overhead:
        from rankadaptor.provenance import hardware

        result["overhead"] = overhead(args.pool)
        result["processor"] = hardware()["processor"]
    result["command"] = "python benchmarks/search_compare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    paths = write_results(args.out, result, markdown(result), seed=0)
    print(markdown(result))
    print(paths)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
