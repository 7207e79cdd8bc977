"""RankAdaptor vs random search vs TPE vs uniform on the real model (issue 5, point 10).

SmolLM2-135M pruned 20 % by LLM-Pruner (element1; made once with ``rankadaptor prune``). A trial is
what ``rankadaptor search`` runs: recover the pruned model with LoRA at the proposed per-layer ranks
(``RecoverEvalObjective``: a few optimizer steps on the bundled Brown corpus) and measure the
held-out validation loss of that recovery (the cheapest, least noisy objective the design names;
seven-task accuracy at CPU-affordable document counts is noise). Every strategy gets the same
search space (ranks {2..12}, first 4 / last 2 layers fixed at 8, budget = uniform r=8 ± 5 %), the
same trial budget and the uniform plan as its first trial; then ``engine.finalize`` re-evaluates
its pick and the uniform plan with the same 3 seeds and reports the paired difference.

A trial is deterministic given (plan, seed) on this CPU, so evaluations are cached by that pair:
the uniform re-evaluations are computed once and shared by the strategies (same numbers they would
get on their own).

    python benchmarks/search_real.py --trials 10 --steps 5 --threads 1

Writes benchmarks/results/search_real.json and .md; scratch under benchmarks/work/search_real/.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work" / "search_real"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10, help="completed trials per strategy (uniform included)")
    ap.add_argument("--steps", type=int, default=5, help="recovery steps per trial")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--final-seeds", type=int, default=3)
    ap.add_argument("--strategies", default="rankadaptor,random,tpe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_real"))
    return ap.parse_args(argv)


def pruned_artefact(threads: int) -> Path:
    out = WORK / "pruned-20"
    if not out.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "rankadaptor", "--threads", str(threads), "prune", "smollm2-135m", "--method", "llm-pruner",
                        "--ratio", "0.2", "--importance", "element1", "--seed", "0", "--out", str(out)], check=True)
    return out


class CachedObjective:
    """Wraps the real objective; (plan, seed, fidelity) -> value computed once, wall time recorded."""

    def __init__(self, inner):
        self.inner, self.cache, self.seconds = inner, {}, []
        self.direction = inner.direction

    def identity(self):
        return self.inner.identity()

    def __call__(self, ranks, seed: int = 0, fidelity: str = "full") -> float:
        key = (tuple(int(r) for r in ranks), int(seed), fidelity)
        if key not in self.cache:
            t0 = time.perf_counter()
            self.cache[key] = self.inner(ranks, seed=seed, fidelity=fidelity)
            self.seconds.append(time.perf_counter() - t0)
        return self.cache[key]


def one_strategy(strategy, space, objective, args, identity):
    import optuna

    from rankadaptor.search.storage import open_storage
    from rankadaptor.search.engine import SearchConfig, finalize, history, open_study, run_search
    from rankadaptor.search.sampler import completed_data, make_sampler

    db = WORK / f"{strategy}-{args.seed}.db"
    db.unlink(missing_ok=True)  # a benchmark run starts its studies fresh
    sampler = make_sampler(strategy, space, seed=args.seed,
                           **(dict(n_initial=max(3, args.trials // 3)) if strategy != "random" else {}))
    study = open_study(f"{strategy}-{args.seed}", open_storage(f"sqlite:///{db}"), space, identity, strategy,
                       objective.direction, sampler)
    cfg = SearchConfig(n_trials=args.trials, patience=args.trials, final_seeds=args.final_seeds, seed=args.seed)
    t0 = time.perf_counter()
    run_search(study, space, objective, cfg)
    search_s = time.perf_counter() - t0
    X, y, _ = completed_data(space, study)  # y: larger is better (negated loss)
    report = finalize(study, space, objective, cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    uniform_idx = [i for i, r in enumerate(X) if (r == space.uniform()).all()]
    return {"strategy": strategy, "search_seconds": search_s,
            "trials_to_best": int(np.argmax(y)) + 1,
            "best_search_loss": float(-y.max()),
            "uniform_search_loss": float(-y[uniform_idx[0]]) if uniform_idx else None,
            "best_ranks": report["best"]["ranks"], "best_final_losses": report["best"]["scores"],
            "uniform_final_losses": report["uniform"]["scores"],
            "difference_vs_uniform": report.get("difference_vs_uniform"),
            "model_cv": report["model_cv"], "messages": report["messages"],
            "history": [{"number": h["number"], "value": h["value"], "ranks": h["ranks"]}
                        for h in history(study, space) if h["state"] == "COMPLETE"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    import optuna
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from rankadaptor.lora.ranks import layer_costs
    from rankadaptor.fileio import write_json_atomic
    from rankadaptor.models.loading import load_model
    from rankadaptor.provenance import provenance
    from rankadaptor.search.objective import RecoverEvalObjective
    from rankadaptor.search.space import SearchSpace

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    model_dir = pruned_artefact(args.threads)
    loaded = load_model(str(model_dir))
    n = loaded.model.config.num_hidden_layers
    base = dict(n_layers=n, layer_costs=tuple(layer_costs(loaded.model)))
    space = SearchSpace(**base, budget=SearchSpace(**base).uniform_budget(8), tolerance=0.05)
    del loaded
    recovery = dict(batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, threads=args.threads)
    inner = RecoverEvalObjective(str(model_dir), "loss", args.steps, recovery_kwargs=recovery)
    objective = CachedObjective(inner)
    identity = {"model": str(model_dir), **inner.identity()}
    runs = []
    for strategy in args.strategies.split(","):
        runs.append(one_strategy(strategy, space, objective, args, identity))
        logging.info("%s: %s", strategy, {k: v for k, v in runs[-1].items() if k != "history"})
    from rankadaptor.stats import mean_ci

    result = {"setting": {"model": "SmolLM2-135M pruned 20% (llm-pruner element1, seed 0)",
                          "objective": "held-out validation loss after recovery (lower is better)",
                          "trials_per_strategy": args.trials, "steps": args.steps, "batch_size": args.batch_size,
                          "seq_len": args.seq_len, "lr": args.lr, "final_seeds": args.final_seeds,
                          "space": space.to_dict(), "search_seed": args.seed},
              "runs": runs, "trial_seconds": mean_ci(objective.seconds).to_dict(),
              "n_evaluations": len(objective.seconds), "provenance": provenance(args.seed),
              "command": "python benchmarks/search_real.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"), result)
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


def markdown(result) -> str:
    from rankadaptor.stats import verdict_of

    s = result["setting"]
    lines = ["# Rank search on the real model: RankAdaptor vs random vs TPE vs uniform", "",
             f"{s['model']}; objective: {s['objective']}; {s['trials_per_strategy']} trials per strategy (the "
             f"uniform r=8 plan is trial 1 of each), each a recovery of {s['steps']} steps × {s['batch_size']}×"
             f"{s['seq_len']} tokens at lr {s['lr']}; budget uniform r=8 ± 5 %. One search per strategy (seed "
             f"{s['search_seed']}); its pick and uniform re-evaluated with {s['final_seeds']} seeds (paired). "
             f"Mean trial {result['trial_seconds']['mean']:.0f} s on "
             f"{result['provenance']['hardware'].get('processor', 'CPU')} ({result['provenance']['hardware'].get('cpu_count', '?')} cores), git {result['provenance']['git_commit']}.", "",
             "| strategy | trials to best | best loss in search | pick's LoRA params / uniform's | pick − uniform (3 seeds, 95 % CI) | verdict | model CV Spearman |",
             "|---|---|---|---|---|---|---|"]
    costs = s["space"]["layer_costs"]
    uniform_cost = sum(8 * c for c in costs)
    for r in result["runs"]:
        d = r["difference_vs_uniform"] or {}
        # the objective is a loss: report pick minus uniform in loss units (negative = pick is better)
        diff = (f"{-d['mean']:+.4f} ({-d['ci_high']:+.4f} .. {-d['ci_low']:+.4f})" if d else "n/a")
        verdict = {"no test": "no test", "not significant": "not significant"}.get(
            verdict_of(d), "pick better" if d and d["mean"] > 0 else "pick worse") if d else "n/a"
        cv, p = r["model_cv"].get("spearman"), r["model_cv"].get("p_value")
        cv_text = "n/a (too few trials)" if cv is None else f"{cv:+.2f} (p={p:.2f})"
        if r["best_ranks"] == [8] * len(costs):
            diff, verdict = "0 (the pick is the uniform plan)", "no trial beat uniform"
        ratio = sum(k * c for k, c in zip(r["best_ranks"], costs, strict=True)) / uniform_cost
        lines.append(f"| {r['strategy']} | {r['trials_to_best']} | {r['best_search_loss']:.4f} | {ratio:.3f} | {diff} | {verdict} | "
                     f"{cv_text} |")
    lines += ["", "Uniform r=8's loss in the search (trial 1): " +
              ", ".join(f"{r['strategy']} {r['uniform_search_loss']:.4f}" for r in result["runs"]
                        if r["uniform_search_loss"] is not None), "",
              f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
