"""Can a performance model predict real rank-configuration measurements, and does meta-learning help?

Data: ../shared/data/rank-measurements (983 published measurements, LLaMA/Vicuna-7B pruned by
LLM-Pruner at 20/25/30/50 %; read from the shared folder, never shipped). Two questions:

1. Per setting, 5-fold out-of-fold Spearman of the MLP performance model (32-32-32) and of ridge
   regression, repeated over split seeds; mean with a 95 % t-interval across seeds.
2. Few-shot adaptation to a held-out setting from k trials (k = 5/10/20), starting from scratch,
   from pooled pre-training on the other seven settings, or from Reptile on them. Spearman on the
   remaining trials of the held-out setting; mean over draws per setting, then a 95 % interval
   across the settings (the independent units); paired differences vs scratch.
Also: run-to-run noise of identical configurations in the raw file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rankadaptor.fileio import write_json_atomic  # noqa: E402
from rankadaptor.provenance import provenance  # noqa: E402
from rankadaptor.search.meta import TASKS, adapt, load_measurements, pooled_pretrain, reptile  # noqa: E402
from rankadaptor.search.perf_model import MLPConfig, PerformanceModel  # noqa: E402
from rankadaptor.stats import mean_ci, paired_difference  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "rank-measurements"


def ridge_fit_predict(Xtr, ytr, Xte, alpha=1.0):
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-9
    A, B = (Xtr - mu) / sd, (Xte - mu) / sd
    w = np.linalg.solve(A.T @ A + alpha * np.eye(A.shape[1]), A.T @ (ytr - ytr.mean()))
    return B @ w + ytr.mean()


def oof_spearman(X, y, seed, fitter, folds=5):
    """Folds are grouped by configuration: repeats of one rank vector never straddle train and test."""
    _, group = np.unique(X, axis=0, return_inverse=True)
    group = group.ravel()
    fold_of_group = np.random.default_rng(seed).permutation(group.max() + 1) % folds
    pred = np.empty(len(y))
    for k in range(folds):
        te = np.flatnonzero(fold_of_group[group] == k)
        tr = np.flatnonzero(fold_of_group[group] != k)
        pred[te] = fitter(X[tr], y[tr], X[te], seed + k)
    return float(stats.spearmanr(pred, y).statistic) if np.std(pred) > 0 else 0.0


def few_shot_split(X, k, rng):
    """k trials of k distinct configurations; the test rows are every row of the other configurations."""
    _, group = np.unique(X, axis=0, return_inverse=True)
    group = group.ravel()
    chosen = rng.permutation(group.max() + 1)[:k]
    first = np.array([rng.choice(np.flatnonzero(group == g)) for g in chosen])
    return first, np.flatnonzero(~np.isin(group, chosen))


def mlp_fitter(config):
    return lambda Xtr, ytr, Xte, seed: PerformanceModel(Xtr.shape[1], config, seed).fit(Xtr, ytr).predict(Xte)


def raw_noise(path):
    recs = json.loads(Path(path).read_text())
    groups = defaultdict(list)
    for r in recs:
        if all(t in r["performance"] for t in TASKS):
            groups[(r["name"], tuple(r["rank_list"]))].append(np.mean([r["performance"][t] for t in TASKS]))
    reps = {k: v for k, v in groups.items() if len(v) > 1}
    sds = [float(np.std(v, ddof=1)) for v in reps.values()]
    ranges = [float(np.max(v) - np.min(v)) for v in reps.values()]
    return {"repeated_configs": len(reps), "repeats": sum(len(v) for v in reps.values()),
            "within_config_sd_mean": float(np.mean(sds)) if sds else None,
            "max_range": float(np.max(ranges)) if ranges else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA / "lara_merged_v4.json"))
    ap.add_argument("--raw", default=str(DATA / "lara_raw_20240621.json"))
    ap.add_argument("--objective", default="average")
    ap.add_argument("--split-seeds", type=int, default=3)
    ap.add_argument("--draws", type=int, default=10, help="few-shot draws per setting and k")
    ap.add_argument("--ks", default="5,10,20")
    ap.add_argument("--meta-iters", type=int, default=300)
    ap.add_argument("--skip-few-shot", action="store_true", help="only the per-setting CV table")
    ap.add_argument("--settings", default=None, help="comma-separated subset of settings (smoke runs)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_real_data"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    tasks = load_measurements(args.data, args.objective)
    if args.settings:
        tasks = {n: t for n, t in tasks.items() if n in args.settings.split(",")}
    config = MLPConfig()
    ks = [int(k) for k in args.ks.split(",")]

    cv = {}
    for name, task in tasks.items():
        mlp = [oof_spearman(task.X, task.y, s, mlp_fitter(config)) for s in range(args.split_seeds)]
        ridge = [oof_spearman(task.X, task.y, s, lambda a, b, c, _s: ridge_fit_predict(a, b, c, 10.0))
                 for s in range(args.split_seeds)]
        # no learning at all: "more total rank is better" (the measured plans do not share one budget)
        rank_sum = float(stats.spearmanr(task.X.sum(1), task.y).statistic)
        cv[name] = {"n": len(task.y), "unique_configs": int(len(np.unique(task.X, axis=0))),
                    "y_sd": float(np.std(task.y)), "mlp": mean_ci(mlp).to_dict(),
                    "ridge": mean_ci(ridge).to_dict(), "rank_sum_spearman": rank_sum}
        print(f"{name}: n={len(task.y)} MLP {mean_ci(mlp).fmt(1, 3)} ridge {mean_ci(ridge).fmt(1, 3)} "
              f"rank-sum {rank_sum:+.3f}", flush=True)

    few = {k: {m: {} for m in ("none", "pooled", "reptile")} for k in ks}
    for name, target in ([] if args.skip_few_shot else tasks.items()):
        sources = [t for n, t in tasks.items() if n != name]
        inits = {"none": None, "pooled": pooled_pretrain(sources, target.X.shape[1], config, seed=0),
                 "reptile": reptile(sources, target.X.shape[1], config, meta_iters=args.meta_iters, seed=0)}
        for k in ks:
            for method, init in inits.items():
                rhos = []
                for d in range(args.draws):
                    tr, te = few_shot_split(target.X, k, np.random.default_rng([d, k]))
                    pred = adapt(init, target.X[tr], target.y[tr], config, epochs=100, seed=d).predict(target.X[te])
                    rhos.append(float(stats.spearmanr(pred, target.y[te]).statistic) if np.std(pred) > 0 else 0.0)
                few[k][method][name] = float(np.mean(rhos))
        print(f"few-shot {name}: " + ", ".join(f"k={k} " + " ".join(f"{m}={few[k][m][name]:+.3f}" for m in few[k])
                                               for k in ks), flush=True)

    summary = {}
    for k in ([] if args.skip_few_shot else ks):
        names = list(tasks)
        row = {m: mean_ci([few[k][m][n] for n in names]).to_dict() for m in few[k]}
        for m in ("pooled", "reptile"):
            row[f"{m}_minus_none"] = paired_difference([few[k][m][n] for n in names], [few[k]["none"][n] for n in names])
        row["reptile_minus_pooled"] = paired_difference([few[k]["reptile"][n] for n in names],
                                                        [few[k]["pooled"][n] for n in names])
        summary[k] = row
    noise = raw_noise(args.raw) if Path(args.raw).is_file() else None
    result = {"objective": args.objective, "sizes": {n: len(t.y) for n, t in tasks.items()},
              "split_seeds": args.split_seeds, "draws": args.draws, "ks": ks, "meta_iters": args.meta_iters,
              "cv_per_setting": cv, "few_shot_per_setting": {str(k): v for k, v in few.items()},
              "few_shot_summary": {str(k): v for k, v in summary.items()}, "raw_noise": noise,
              "seconds": round(time.time() - t0, 1), "provenance": provenance(0)}
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"), result)
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r) -> str:
    lines = [f"# Performance model on real rank measurements (objective: {r['objective']})", "",
             f"5-fold out-of-fold Spearman (folds grouped by configuration), mean ± 95% CI over "
             f"{r['split_seeds']} split seeds. 'rank sum' = Spearman of the plain total rank with the score "
             "(no model; the measured plans do not share one parameter budget).", "",
             "| setting | n (unique) | sd(y) | MLP 32-32-32 | ridge | rank sum |", "|---|---|---|---|---|---|"]
    for name, c in r["cv_per_setting"].items():
        f = lambda d: f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        lines.append(f"| {name} | {c['n']} ({c['unique_configs']}) | {c['y_sd']:.4f} | {f(c['mlp'])} | "
                     f"{f(c['ridge'])} | {c['rank_sum_spearman']:+.3f} |")
    if r["few_shot_summary"]:
        lines += ["", f"Few-shot adaptation to a held-out setting (sources: the other settings). Spearman on the other "
              f"configurations of the setting, mean of {r['draws']} draws per setting, then mean ± 95% CI over the settings.", "",
                  "| k | scratch | pooled | Reptile | pooled−scratch | Reptile−scratch | Reptile−pooled |",
                  "|---|---|---|---|---|---|---|"]
    for k, row in r["few_shot_summary"].items():
        f = lambda d: f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        lines.append(f"| {k} | {f(row['none'])} | {f(row['pooled'])} | {f(row['reptile'])} | "
                     f"{f(row['pooled_minus_none'])} | {f(row['reptile_minus_none'])} | {f(row['reptile_minus_pooled'])} |")
    if r.get("raw_noise"):
        n = r["raw_noise"]
        lines += ["", f"Run-to-run noise (raw file): {n['repeated_configs']} configurations measured more than once "
                  f"({n['repeats']} runs); mean within-configuration sd of the 7-task average {n['within_config_sd_mean']:.4f}, "
                  f"largest range {n['max_range']:.4f}."]
    lines += ["", f"Runtime {r['seconds']} s, one CPU thread."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
