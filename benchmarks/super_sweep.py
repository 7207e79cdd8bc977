"""Wide-then-cut on SmolLM2-135M pruned 20 % (issue 15, item 6): compression sweep, compute, throughput.

* ``--part sweep``: per seed one nested-rank super-adapter (r = 32, the kit's recipe;
  ``experiment_methods.super_adapter``), and optionally a plain LoRA r = 32 trained the same way; each cut
  to 25 / 50 / 75 / 90 % fewer LoRA parameters by PARA's global threshold, uniform truncation (SVD
  and prefix cuts), PEFT's per-layer energy rule and RankAdaptor on the cheap fidelity
  (``--search-trials`` scores). Held-out perplexity (first ``--ppl-tokens`` Brown held-out tokens)
  of every cut, in memory (``compress.cut.InMemoryCut``, equal to the written adapter by test);
  paired by seed against PARA and against the uncompressed adapter.
* ``--part throughput``: one real screening trial as ``rankadaptor search`` runs it (recover 5
  steps of 4 x 128 and the validation loss, ``RecoverEvalObjective``) against one cheap score, on
  the same plans; evaluations per minute; per-trial storage cost of ``engine.run_search`` (one
  ``study.optimize`` per trial) and of the batched driver (``study.add_trials``), on SQLite.
* ``--part search500``: end-to-end time of a 500-evaluation super-adapter search at uniform-r8's
  budget (seed 0), where its time goes, and its pick's held-out perplexity.

Each part saves what it measured as it goes (``benchmarks/work/super_sweep/state.json``) and
resumes; the results file is rebuilt from everything measured so far after every part.

    /work/bin/heavy python benchmarks/super_sweep.py --part sweep --seeds 0 1 2
    /work/bin/heavy python benchmarks/super_sweep.py --part throughput
    /work/bin/heavy python benchmarks/super_sweep.py --part search500

Writes benchmarks/results/super_sweep.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "super_sweep"
REDUCTIONS = (0.25, 0.5, 0.75, 0.9)
# method -> (allocation, cut); "search" is RankAdaptor on the cheap fidelity at that budget
CUT_METHODS = {"para": ("para", "svd"), "uniform": ("uniform", "svd"), "uniform-prefix": ("uniform", "prefix"),
               "energy": ("energy", "svd"), "search": ("search", "svd")}
PLAIN_METHODS = ("para", "uniform", "uniform-prefix")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("sweep", "throughput", "search500", "report"), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--reductions", type=float, nargs="+", default=list(REDUCTIONS))
    p.add_argument("--search-trials", type=int, default=80)
    p.add_argument("--search-blocks", type=int, default=4)
    p.add_argument("--ppl-tokens", type=int, default=2048)
    p.add_argument("--plain", action="store_true", help="also cut a plain (not nested) r=32 LoRA per seed")
    p.add_argument("--screen-trials", type=int, default=3, help="real screening trials timed (throughput)")
    p.add_argument("--cheap-trials", type=int, default=20, help="cheap scores timed (throughput)")
    p.add_argument("--storage-trials", type=int, default=100, help="trials written per storage path (throughput)")
    p.add_argument("--trials", type=int, default=500, help="evaluations of the search500 part")
    return p.parse_args(argv)


class Kit:
    """The pruned model, recipe, held-out text and recovery data, shared by the parts."""

    def __init__(self, args):
        import torch

        torch.set_num_threads(1)
        from rankadaptor import experiments as ex
        from rankadaptor.search.super_fidelity import search_split

        self.ex, self.args = ex, args
        self.recipe = ex.Recipe()
        self.pruned = ex.ModelCache(ex.pruned_artefact())
        self.loaded = self.pruned.fresh()
        self.tok = self.loaded.tokenizer
        self.split = search_split(self.tok, args.search_blocks, self.recipe.seq_len)

    def heldout(self, model) -> float:
        from rankadaptor.eval import heldout_perplexity

        return float(heldout_perplexity(model, self.tok, n_tokens=self.args.ppl_tokens).ppl)

    def wide(self, seed: int, nested: bool = True) -> Path:
        from rankadaptor.experiment_methods import super_adapter

        return super_adapter(self.pruned, self.recipe, seed, nested=nested)

    def space(self, budget, study="sweep", trials=1, **kw):
        from rankadaptor.lora.ranks import module_costs
        from rankadaptor.search.study import make_space
        from rankadaptor.search.super_search import super_settings

        self.costs = module_costs(self.loaded.model)
        settings = super_settings(rank=self.recipe.high_rank, costs=self.costs, study=study, trials=trials,
                                  budget=budget, **{"finalize": False, **kw})
        return settings, make_space(settings, self.costs)

    def objective(self, wide: Path, space, how: str = "svd"):
        from rankadaptor.search.super_fidelity import SuperFidelity

        return SuperFidelity(self.loaded.model, self.tok, wide, space, self.split, how,
                             identity=self.loaded.identity)


# ---- part: the compression sweep -----------------------------------------------------------------------
def run_sweep(kit: Kit, state: dict, save) -> None:
    import math

    from rankadaptor.compress.cut import rule_ranks
    from rankadaptor.fileio import read_json

    sweep = state.setdefault("sweep", {})
    for seed in kit.args.seeds:
        for nested in (True, False) if kit.args.plain else (True,):
            kind = "nested" if nested else "plain"
            wide = kit.wide(seed, nested)
            record = read_json(wide / "recovery.json", what="super-adapter record")
            key = f"{kind}/seed{seed}"
            entry = sweep.setdefault(key, {"seed": seed, "kind": kind, "adapter": str(wide), "cuts": {},
                                           "train_seconds": record["train_seconds"], "train_steps": record["total_steps"],
                                           "train_tokens": record["total_steps"] * kit.recipe.batch_size * kit.recipe.seq_len})
            objective = None
            for red in kit.args.reductions:
                for method, (rule, how) in CUT_METHODS.items():
                    name = f"{method} -{int(round(red * 100))}%"
                    if name in entry["cuts"] or (not nested and method not in PLAIN_METHODS):
                        continue
                    if objective is None or objective.how != how:
                        if objective is not None:
                            objective.close()
                        objective = kit.objective(wide, kit.space("uniform:8")[1], how)
                    budget = int(math.floor((1 - red) * objective.adapter.params))
                    t0 = time.perf_counter()
                    info = {}
                    if rule == "search":
                        ranks, info = _search(kit, objective, budget, study_name(kind, seed, method, red))
                    else:
                        ranks = rule_ranks(rule, objective.adapter, budget)
                    objective.cut.set_ranks(ranks)
                    entry["cuts"][name] = {"method": method, "reduction": red, "budget": budget,
                                           "params": objective.cut.params(), "ppl": kit.heldout(kit.loaded.model),
                                           "cut_seconds": time.perf_counter() - t0, **info}
                    save()
                    print(key, name, entry["cuts"][name]["ppl"], flush=True)
            if "uncompressed" not in entry:
                objective = objective or kit.objective(wide, kit.space("uniform:8")[1])
                objective.cut.set_ranks({n: m.r for n, m in objective.adapter.modules.items()})
                entry["uncompressed"] = kit.heldout(kit.loaded.model)
                save()
            if objective is not None:
                objective.close()


def study_name(kind: str, seed: int, method: str, reduction: float) -> str:
    """The cut's study: a name storage accepts (letters, digits, '.', '_', '-'), unlike the table's row label."""
    return f"{kind}-seed{seed}-{method}-{int(round(reduction * 100))}"


def _search(kit: Kit, objective, budget: int, study: str) -> tuple[dict, dict]:
    """RankAdaptor on the cheap fidelity at ``budget`` ± 1 % (an in-memory study: the part resumes per cut)."""
    import optuna

    from rankadaptor.search.super_search import run_super_search

    from rankadaptor.search.super_search import below_budget

    centre, tolerance = below_budget(budget)  # within 1 % below the budget: the rules fill it from below
    settings, space = kit.space(centre, study=study, trials=kit.args.search_trials, budget_tolerance=tolerance)
    objective.space = space
    before = dict(objective.stats)
    result = run_super_search(settings, objective, kit.costs, {"study": study},
                              storage=optuna.storages.InMemoryStorage())
    trials = result.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    best = min(trials, key=lambda t: t.value)
    ranks = objective.module_ranks(best.user_attrs["ranks"])
    evaluations = objective.stats["evaluations"] - before["evaluations"]
    return ranks, {"evaluations": evaluations, "search_seconds": result.state["seconds"],
                   "search_forward_tokens": evaluations * kit.split.identity["tokens"],
                   "best_design": best.user_attrs.get("seeded_from") or best.user_attrs.get("design")
                   or best.user_attrs.get("proposal"),
                   "plan": best.user_attrs["ranks"]}


# ---- part: throughput ---------------------------------------------------------------------------------
def run_throughput(kit: Kit, state: dict, save) -> None:
    """A real screening trial vs a cheap score on the same plans; storage cost per trial on SQLite."""
    from rankadaptor.search.objective import RecoverEvalObjective

    out = state.setdefault("throughput", {})
    _, space = kit.space("uniform:8")
    plans = [space.uniform()] + list(space.sample(max(kit.args.screen_trials, kit.args.cheap_trials), 0))
    if len(out.get("screen_seconds", [])) < kit.args.screen_trials:
        # a screening trial as `rankadaptor search --multi-fidelity --objective loss --screen-steps 5` runs it
        real = RecoverEvalObjective(str(kit.pruned.spec), target="loss", steps=5,
                                    recovery_kwargs={"batch_size": 4, "seq_len": 128, "lr": kit.recipe.lr})
        out.setdefault("screen_seconds", [])
        for ranks in plans[len(out["screen_seconds"]):kit.args.screen_trials]:
            t = time.perf_counter()
            real(ranks, seed=0, fidelity="screen")
            out["screen_seconds"].append(time.perf_counter() - t)
            save()
    if len(out.get("cheap_seconds", [])) < kit.args.cheap_trials:
        objective = kit.objective(kit.wide(0), space)
        objective(plans[-1])  # first forward pays one-off costs (allocations); not a trial's cost
        seconds = []
        for ranks in plans[:kit.args.cheap_trials]:
            objective.cache.clear()  # a trial's cost, not a cache hit's
            t = time.perf_counter()
            objective(ranks)
            seconds.append(time.perf_counter() - t)
        out["cheap_seconds"] = seconds
        out["cheap_tokens"] = kit.split.identity["tokens"]
        objective.close()
        save()
    if "storage" not in out:
        out["storage"] = storage_costs(kit.args.storage_trials, kit.space("uniform:8")[1])
        save()
    screen, cheap = statistics.median(out["screen_seconds"]), statistics.median(out["cheap_seconds"])
    out["ratio"] = cheap / screen
    out["cheap_per_minute"] = 60 / statistics.mean(out["cheap_seconds"])
    save()


def storage_costs(n: int, space) -> dict:
    """Seconds per trial on a fresh SQLite file: engine.run_search (one study.optimize per trial, random
    proposals so no model is fitted, an objective that costs nothing) vs the batched study.add_trials."""
    import tempfile

    import optuna

    from rankadaptor.search import engine
    from rankadaptor.search.sampler import make_sampler
    from rankadaptor.search.space import plan_hash
    from rankadaptor.search.storage import open_storage

    class Free:
        direction = "minimize"

        def __call__(self, ranks, seed=0, fidelity="full"):
            return float(sum(int(r) for r in ranks) % 97)

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{tmp}/engine.db")
        study = engine.open_study("engine", storage, space, {}, "random", "minimize",
                                  make_sampler("random", space, seed=0))
        t = time.perf_counter()
        engine.run_search(study, space, Free(), engine.SearchConfig(n_trials=n, patience=10 * n, noise_every=0))
        out["engine_seconds_per_trial"] = (time.perf_counter() - t) / n
        storage = open_storage(f"sqlite:///{tmp}/batched.db")
        study = engine.open_study("batched", storage, space, {}, "rankadaptor", "minimize",
                                  optuna.samplers.RandomSampler(seed=0))
        dist = {p: space.distribution() for p in space.param_names()}
        plans = space.sample(n, 0)
        t = time.perf_counter()
        for i in range(0, n, 8):
            study.add_trials([optuna.trial.create_trial(
                params=space.to_params(r), distributions=dist, value=float(j),
                user_attrs={"ranks": [int(x) for x in r], "plan_hash": plan_hash(r), "fidelity": "super"})
                for j, r in enumerate(plans[i:i + 8])])
        out["batched_seconds_per_trial"] = (time.perf_counter() - t) / n
    out["trials"] = n
    return out


# ---- part: a 500-evaluation search ---------------------------------------------------------------------
def run_search500(kit: Kit, state: dict, save) -> None:
    import shutil

    from rankadaptor.search.super_search import run_super_search

    if "search500" in state:
        return
    work = WORK / "search500"
    shutil.rmtree(work, ignore_errors=True)  # a part is one timed run: it starts afresh
    work.mkdir(parents=True)
    settings, space = kit.space("uniform:8", study="search500", trials=kit.args.trials, final_seeds=0,
                                storage=f"sqlite:///{work / 'study.db'}", finalize=True, out=str(work / "plan.json"),
                                patience=kit.args.trials)  # all 500 evaluations: the time of that many is the question
    objective = kit.objective(kit.wide(0), space)
    t = time.perf_counter()
    result = run_super_search(settings, objective, kit.costs, {"study": "search500"})
    seconds = time.perf_counter() - t  # end to end: prior, design, search, finalisation, the cut written
    import optuna

    trials = result.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    best = min(trials, key=lambda t: t.value)
    by_design = {t.user_attrs.get("seeded_from") or t.user_attrs["design"]: t.value for t in trials
                 if t.user_attrs.get("seeded_from") or t.user_attrs.get("design")}
    objective.cut.set_ranks(objective.module_ranks(best.user_attrs["ranks"]))
    ppl_best, params = kit.heldout(kit.loaded.model), objective.cut.params()
    objective.cut.set_ranks(objective.module_ranks(space.uniform()))
    ppl_uniform = kit.heldout(kit.loaded.model)
    values = [t.value for t in trials]
    state["search500"] = {"seconds": seconds, "evaluations": len(trials), "state": result.state,
                          "best": {"ranks": best.user_attrs["ranks"], "cheap": best.value,
                                   "found_at": values.index(best.value) + 1, "ppl": ppl_best,
                                   "design": best.user_attrs.get("seeded_from") or best.user_attrs.get("design"),
                                   "params": params},
                          "designs_cheap": by_design, "uniform_ppl": ppl_uniform,
                          "best_so_far": [min(values[:i + 1]) for i in range(len(values))]}
    objective.close()
    save()


# ---- the results file ----------------------------------------------------------------------------------
def summarise(state: dict) -> dict:
    """Paired (by seed) held-out perplexity differences: each cut vs PARA at the same reduction and vs the
    uncompressed adapter; compute per method."""
    from rankadaptor.stats import mean_ci, paired_difference

    out = {}
    for kind in ("nested", "plain"):
        entries = [e for k, e in state.get("sweep", {}).items() if e["kind"] == kind]
        if not entries:
            continue
        names = sorted({n for e in entries for n in e["cuts"]}, key=lambda n: (int(n.split("-")[-1][:-1]), n))
        rows = {}
        for name in names:
            have = [e for e in entries if name in e["cuts"]]
            ppl = [e["cuts"][name]["ppl"] for e in have]
            method, red = name.rsplit(" ", 1)
            para = [e for e in have if f"para {red}" in e["cuts"]]
            full = [e for e in have if "uncompressed" in e]
            rows[name] = {
                "ppl": mean_ci(ppl).to_dict(), "seeds": [e["seed"] for e in have],
                "params": [e["cuts"][name]["params"] for e in have],
                "budget": [e["cuts"][name]["budget"] for e in have],
                "vs_para": paired_difference([e["cuts"][name]["ppl"] for e in para],
                                             [e["cuts"][f"para {red}"]["ppl"] for e in para]) if len(para) else None,
                "vs_uncompressed": paired_difference([e["cuts"][name]["ppl"] for e in full],
                                                     [e["uncompressed"] for e in full]) if len(full) else None,
                "compute": {"train_seconds": statistics.mean(e["train_seconds"] for e in have),
                            "train_steps": have[0]["train_steps"], "train_tokens": have[0]["train_tokens"],
                            "cut_seconds": statistics.mean(e["cuts"][name]["cut_seconds"] for e in have),
                            "search_forward_tokens": statistics.mean(
                                e["cuts"][name].get("search_forward_tokens", 0) for e in have)}}
        out[kind] = rows
    return out


def _ci(d: dict | None, digits: int = 2) -> str:
    if not d:
        return "–"
    if d["n"] < 3 or d["ci_low"] is None or d["ci_low"] != d["ci_low"] or d["ci_low"] == d["ci_high"]:
        return f"{d['mean']:+.{digits}f} (no test, n={d['n']})"
    star = " *" if d.get("significant") else ""
    return f"{d['mean']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]{star}"


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = ["# Wide-then-cut on SmolLM2-135M pruned 20 %: compression sweep, compute, throughput", ""]
    for kind, rows in result["summary"].items():
        lines += [f"## Compression sweep, {kind} r=32 adapters (held-out perplexity, {s['ppl_tokens']} tokens)", "",
                  "| cut | LoRA params (mean) | PPL | − PARA (paired) | − uncompressed (paired) | train steps | "
                  "cut s | search fwd tokens |", "|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            ppl = r["ppl"]
            ppl_cell = f"{ppl['mean']:.2f}" + (f" ± {(ppl['ci_high'] - ppl['ci_low']) / 2:.2f}" if ppl["n"] >= 2 else "")
            c = r["compute"]
            lines.append(f"| {name} | {statistics.mean(r['params']):,.0f} | {ppl_cell} | "
                         f"{_ci(r['vs_para']) if not name.startswith('para ') else '0'} | {_ci(r['vs_uncompressed'])} | "
                         f"{c['train_steps']} | {c['cut_seconds']:.0f} | {c['search_forward_tokens']:,.0f} |")
        lines += ["", "`*`: the paired 95 % interval excludes 0 (negative = lower perplexity = better).", ""]
    t = result.get("throughput")
    if t and "ratio" in t:
        st = t.get("storage", {})
        lines += ["## Cheap fidelity vs a real screening trial", "",
                  f"* real screening trial (recover 5 steps of 4×128 + validation loss, {len(t['screen_seconds'])} "
                  f"plans): median {statistics.median(t['screen_seconds']):.1f} s",
                  f"* cheap score ({t['cheap_tokens']} search-split tokens, {len(t['cheap_seconds'])} plans): median "
                  f"{statistics.median(t['cheap_seconds']):.2f} s = **1/{1 / t['ratio']:.0f}** of a screening trial; "
                  f"{t['cheap_per_minute']:.1f} evaluations per minute on one thread",
                  f"* storage per trial on SQLite: engine.run_search {1000 * st.get('engine_seconds_per_trial', 0):.0f} ms "
                  f"(random proposals, free objective), batched add_trials "
                  f"{1000 * st.get('batched_seconds_per_trial', 0):.1f} ms ({st.get('trials')} trials each)", ""]
    s5 = result.get("search500")
    if s5:
        times = s5["state"]["times"]
        lines += [f"## A {s5['evaluations']}-evaluation search at uniform-r8's budget (seed 0)", "",
                  f"* end to end {s5['seconds'] / 60:.1f} min ({60 * s5['evaluations'] / s5['seconds']:.1f} evaluations "
                  f"per minute): scoring {times['evaluate']:.0f} s, performance model {times['model']:.0f} s, pool and "
                  f"acquisition {times['pool']:.0f} s, storage {times['storage']:.1f} s; meta-learning prior "
                  f"{s5['state']['meta_prior'].get('seconds', 0):.0f} s",
                  f"* best cheap score {s5['best']['cheap']:.4f} found at evaluation {s5['best']['found_at']} "
                  f"(design: {s5['best']['design'] or 'model proposal'}); initial design: " +
                  ", ".join(f"{k} {v:.4f}" for k, v in s5["designs_cheap"].items()),
                  f"* held-out perplexity: pick {s5['best']['ppl']:.2f} ({s5['best']['params']:,} params) vs uniform "
                  f"truncation {s5['uniform_ppl']:.2f} (one seed: no interval)", ""]
    lines += [f"Command: `{result['command']}`; git {result['provenance'].get('git_commit')}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    from rankadaptor.fileio import read_json, write_json_atomic

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "state.json"
    state = read_json(path, what="sweep state") if path.exists() else {}

    def save():
        write_json_atomic(path, state)

    if args.part != "report":
        kit = Kit(args)
        {"sweep": run_sweep, "throughput": run_throughput, "search500": run_search500}[args.part](kit, state, save)
    from rankadaptor import experiments as ex
    from rankadaptor.provenance import provenance

    result = {"benchmark": "super_sweep", "settings": {k: v for k, v in vars(args).items() if k != "part"},
              "recipe": ex.recipe_dict(ex.Recipe()), "summary": summarise(state), "sweep": state.get("sweep", {}),
              "throughput": state.get("throughput"), "search500": state.get("search500"),
              "command": "python " + " ".join(sys.argv), "provenance": provenance(args.seeds[0])}
    ex.write_results("super_sweep", result, markdown(result), seed=args.seeds[0])
    print(markdown(result))


if __name__ == "__main__":
    main()
