"""Rank search on the real model: RankAdaptor vs random vs TPE vs GP vs uniform (issue 14, item 9).

SmolLM2-135M pruned 20 % by LLM-Pruner (the kit's artefact, ``experiments.pruned_artefact``). A trial
is what ``rankadaptor search`` runs: recover the pruned model with LoRA at the proposed per-layer
ranks (``RecoverEvalObjective``: ``--steps`` optimizer steps on the Brown training split) and
measure the validation loss of the recovery corpus. Every strategy runs through ``run_study`` with
the same space (ranks {2..12}, first 4 / last 2 layers at 8, budget = uniform r=8 ± 1 %), the same
number of trials, common random numbers (every trial on the search seed), noise repeats every
``--noise-every`` trials, and ``--search-seeds`` independent searches; the final pick of each search
and the uniform plan are re-evaluated on ``--final-seeds`` fresh seeds at fidelity "final": the
same recovery length, scored on Brown's held-out split, which the search never saw.

The model and tokenised data are loaded once; evaluations are cached by (plan, seed, fidelity)
(a CPU recovery is deterministic), so the uniform plan's trials and repeats are computed once per
search seed and shared by the strategies. Each finished search is saved under
benchmarks/work/search_real/ and skipped on a rerun (resumable).

    python benchmarks/search_real.py                                  # ~2 h of one core
    python benchmarks/search_real.py --strategies rankadaptor --search-seeds 1 --trials 4   # a look
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
WORK = ROOT / "benchmarks" / "work" / "search_real"


class CachedObjective:
    """The real objective with its evaluations cached by (plan, seed, fidelity); wall time per evaluation kept."""

    def __init__(self, inner):
        self.inner, self.cache, self.seconds = inner, {}, {"screen": [], "full": [], "final": []}
        self.direction = inner.direction

    def identity(self):
        return self.inner.identity()

    def __call__(self, ranks, seed: int = 0, fidelity: str = "full") -> float:
        key = (tuple(int(r) for r in ranks), int(seed), fidelity)
        if key not in self.cache:
            t0 = time.perf_counter()
            self.cache[key] = self.inner(ranks, seed=seed, fidelity=fidelity)
            self.seconds[fidelity].append(time.perf_counter() - t0)
        return self.cache[key]


def one_search(strategy: str, seed: int, objective, costs, args) -> dict:
    from rankadaptor.search.storage import open_storage
    from rankadaptor.search.study import SearchSettings, run_study

    WORK.mkdir(parents=True, exist_ok=True)
    db = WORK / f"{strategy}-{seed}.db"
    settings = SearchSettings(study=f"{strategy}-{seed}", trials=args.trials, strategy=strategy, seed=seed,
                              n_initial=args.n_initial, noise_every=args.noise_every, final_seeds=args.final_seeds,
                              patience=args.trials, cv_every=1)
    t0 = time.perf_counter()
    result = run_study(settings, objective, costs, {"benchmark": "search_real", **objective.identity()},
                       storage=open_storage(f"sqlite:///{db}"))
    seconds = time.perf_counter() - t0
    trials = [t for t in result.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    values = [t.value for t in trials]  # losses: lower is better
    uniform = result.space.uniform().tolist()
    uni = next(t.value for t in trials if t.user_attrs["ranks"] == uniform)
    beat = next((i + 1 for i, v in enumerate(values) if v < uni), None)
    report = result.report
    return {"strategy": strategy, "seed": seed, "search_seconds": seconds, "trials_to_beat_uniform": beat,
            "trials_to_best": int(np.argmin(values)) + 1, "best_search_loss": float(min(values)),
            "uniform_search_loss": float(uni), "pick": report["best"], "uniform_final": report["uniform"]["scores"],
            "difference_vs_uniform": report.get("difference_vs_uniform"), "finalists": report["finalists"],
            "noise": report["noise"], "model_cv": report["model_cv"], "messages": report["messages"],
            "objective_calls": report["objective_calls"],
            "propose_seconds": [t.user_attrs["propose_seconds"] for t in trials if "propose_seconds" in t.user_attrs],
            "history": [{"number": t.number, "value": t.value, "ranks": t.user_attrs["ranks"],
                         "proposal": t.user_attrs.get("proposal"), "seeded_from": t.user_attrs.get("seeded_from")}
                        for t in trials]}


def summarise(runs: list[dict], trial_seconds: float | None) -> dict:
    from rankadaptor.stats import mean_ci, paired_difference

    table = {}
    for strategy in dict.fromkeys(r["strategy"] for r in runs):
        rs = [r for r in runs if r["strategy"] == strategy]
        # pick minus uniform on the fresh seeds, in loss (negative = the pick is better), per search and pooled
        per_search = [float(np.mean(np.subtract(r["pick"]["scores"], r["uniform_final"]))) for r in rs]
        pooled_pick = [s for r in rs for s in r["pick"]["scores"]]
        pooled_uni = [s for r in rs for s in r["uniform_final"]]
        beats = [r["trials_to_beat_uniform"] for r in rs]
        overhead = [s for r in rs for s in r["propose_seconds"]]
        table[strategy] = {
            "searches": len(rs),
            "trials_to_beat_uniform": mean_ci([b for b in beats if b is not None]).to_dict() if any(
                b is not None for b in beats) else None,
            "never_beat_uniform": sum(b is None for b in beats),
            "pick_minus_uniform_per_search": per_search,
            "pick_minus_uniform_across_searches": mean_ci(per_search).to_dict(),
            "pick_minus_uniform_pooled": paired_difference(pooled_pick, pooled_uni),
            "picks_that_are_uniform": sum(r["pick"]["source"] == "uniform" for r in rs),
            "noise_sd": [r["noise"].get("noise_sd") for r in rs],
            "plans_differ_by_more_than_noise": [r["noise"].get("differ") for r in rs],
            "propose_seconds_median": float(np.median(overhead)) if overhead else None,
            "overhead_fraction_of_trial": (float(np.median(overhead)) / trial_seconds
                                           if overhead and trial_seconds else None)}
    return table


def markdown(result: dict) -> str:
    s = result["setting"]
    lines = ["# Rank search on the real model: RankAdaptor vs random vs TPE vs GP vs uniform", "",
             f"{s['model']}; trial = recovery of {s['steps']} steps × {s['batch_size']}×{s['seq_len']} tokens at lr "
             f"{s['lr']}, scored by the validation loss of the recovery corpus; {s['trials']} trials per search "
             f"(uniform first, {s['n_initial']}-plan initial design), common random numbers, noise repeats every "
             f"{s['noise_every']} trials; {s['search_seeds']} searches per strategy (search seeds "
             f"{s['search_seed_list']}); each search's pick and uniform re-evaluated on {s['final_seeds']} fresh seeds "
             f"(same recovery length, held-out loss on Brown's held-out split). Budget uniform r=8 ± 1 %. Mean trial "
             f"{result['trial_seconds']:.0f} s on one thread.", "",
             "| strategy | trials to beat uniform (searches that never did) | pick − uniform, held-out loss, mean over "
             "searches [95 % CI] | pooled over searches × seeds [95 % CI], verdict | picks that are uniform | "
             "s / proposal (share of a trial) |", "|---|---|---|---|---|---|"]
    for strategy, row in result["table"].items():
        t = row["trials_to_beat_uniform"]
        beat = "never" if t is None else f"{t['mean']:.1f}"
        a, p = row["pick_minus_uniform_across_searches"], row["pick_minus_uniform_pooled"]
        a_txt = f"{a['mean']:+.4f} [{a['ci_low']:+.4f}, {a['ci_high']:+.4f}]" if a["n"] > 1 else f"{a['mean']:+.4f}"
        over = row["propose_seconds_median"]
        over_txt = "—" if over is None else f"{over:.2f} ({100 * row['overhead_fraction_of_trial']:.1f} %)"
        lines.append(f"| {strategy} | {beat} ({row['never_beat_uniform']} of {row['searches']}) | {a_txt} | "
                     f"{p['mean']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}] {p['verdict']} | "
                     f"{row['picks_that_are_uniform']} of {row['searches']} | {over_txt} |")
    lines += ["", "Negative = the pick has a lower held-out loss than uniform. Per search:", ""]
    for r in result["runs"]:
        lines.append(f"* {r['strategy']} seed {r['seed']}: {r['messages'][0]}; pick {r['pick']['source']}, "
                     f"{'; '.join(r['messages'][1:])}")
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10, help="completed trials per search (uniform included)")
    ap.add_argument("--steps", type=int, default=5, help="recovery steps per trial and per final re-evaluation")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--n-initial", type=int, default=4)
    ap.add_argument("--noise-every", type=int, default=4)
    ap.add_argument("--final-seeds", type=int, default=5)
    ap.add_argument("--final-tokens", type=int, default=4096)
    ap.add_argument("--search-seeds", type=int, default=3)
    ap.add_argument("--strategies", default="rankadaptor,random,tpe,gp")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="search_real")
    args = ap.parse_args(argv)
    import optuna
    import torch

    from rankadaptor.experiments import ModelCache, pruned_artefact, write_results
    from rankadaptor.lora.ranks import module_costs
    from rankadaptor.search.objective import RecoverEvalObjective

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    model_dir = pruned_artefact()
    costs = module_costs(ModelCache(model_dir).model)
    recovery = dict(batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, threads=args.threads)
    objective = CachedObjective(RecoverEvalObjective(str(model_dir), "loss", args.steps, recovery_kwargs=recovery,
                                                     final_tokens=args.final_tokens))
    runs = []
    for seed in range(args.search_seeds):
        for strategy in args.strategies.split(","):
            done = WORK / f"{strategy}-{seed}-{args.trials}x{args.steps}.json"
            if done.exists():
                runs.append(json.loads(done.read_text()))
                continue
            run = one_search(strategy, seed, objective, costs, args)
            done.write_text(json.dumps(run))
            runs.append(run)
            logging.info("%s seed %d: %s", strategy, seed, run["messages"])
    screen = objective.seconds["full"]
    trial_seconds = float(np.median(screen)) if screen else None
    result = {"setting": {"model": "SmolLM2-135M pruned 20 % (llm-pruner element1, the kit's artefact)",
                          "trials": args.trials, "steps": args.steps, "batch_size": args.batch_size,
                          "seq_len": args.seq_len, "lr": args.lr, "n_initial": args.n_initial,
                          "noise_every": args.noise_every, "final_seeds": args.final_seeds,
                          "final_tokens": args.final_tokens, "search_seeds": args.search_seeds,
                          "search_seed_list": list(range(args.search_seeds)), "strategies": args.strategies.split(",")},
              "table": summarise(runs, trial_seconds), "runs": runs, "trial_seconds": trial_seconds or float("nan"),
              "evaluation_seconds": {k: (float(np.median(v)) if v else None) for k, v in objective.seconds.items()}}
    result["command"] = "python benchmarks/search_real.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_results(args.out, result, markdown(result), seed=0)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
