"""Recovery baselines on SmolLM2-135M pruned 20 % by llm-pruner: uniform r vs LoRA* vs AdaLoRA vs PrunedLoRA.

Prunes once (element1 Taylor, seed 0, Brown train text as calibration), then for every seed and
method trains LoRA with ``rankadaptor.lora.recover`` on the Brown train split and measures:
held-out perplexity (Brown held-out split, first ``--ppl-tokens`` tokens), seven-task zero-shot
accuracy on the first ``--limit`` documents per task (``rankadaptor.eval.evaluate``; acc, acc_norm
and LLM-Pruner's reported metric per task as ``report/tables.py`` uses), the validation loss,
time per step and peak RSS. LoRA*'s parameter count is what it is (its ranks are fixed by the
paper); AdaLoRA's final budget and PrunedLoRA's target (from ``--init-rank``, global scope) are
uniform r's parameter count. Tables: mean and 95 % t-interval over seeds, and the difference to
uniform r paired by seed (``rankadaptor.stats.paired_difference``). Results are written after
every run; re-running with the same settings resumes.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/recover_baselines.py --seeds 0 1 2 --steps 30 --limit 30

Writes benchmarks/results/recover_baselines.json and .md; scratch under benchmarks/work/recover_baselines/.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
METHODS = ("uniform", "lora-star", "adalora", "prunedlora")
# AdaLoRA starts from E = 0 with P, Q ~ N(0, 0.02) (the authors' and PEFT's init), so at LoRA's lr its
# update is tens of times smaller over a short run; this extra (not run by default) checks ten times the lr
EXTRA_METHODS = ("adalora-lr10",)
SUMMARY_KEYS = ("ppl", "avg_reported", "avg_acc", "avg_acc_norm", "val_loss", "seconds_per_step", "peak_rss_mb",
                "lora_params")
PAIRED_KEYS = ("ppl", "avg_reported", "avg_acc", "avg_acc_norm", "val_loss")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prune-ratio", type=float, default=0.2)
    p.add_argument("--dense", action="store_true", help="skip pruning (labelled 'dense' in the results)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS + EXTRA_METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--uniform-r", type=int, default=8)
    p.add_argument("--init-rank", type=int, default=32, help="PrunedLoRA's initial rank R0")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--limit", type=int, default=30, help="documents per task for the seven-task accuracy")
    p.add_argument("--ppl-tokens", type=int, default=4096)
    p.add_argument("--backend", choices=("fast", "lm_eval"), default="fast", help="seven-task scorer")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "recover_baselines.json"))
    return p.parse_args(argv)


def pruned_model(args, work: Path):
    """The pruned artefact (made once, kept in the work folder) or the dense model with --dense."""
    from rankadaptor.models.loading import load_model

    if args.dense:
        loaded = load_model(args.model)
        return loaded.model, loaded.tokenizer, {"pruned": False, "model": loaded.identity}
    from rankadaptor.assets import text_corpus_path
    from rankadaptor.models.artefact import load_pruned, load_pruned_tokenizer, save_pruned
    from rankadaptor.prune.pruning import PruneConfig, prune_model

    out = work / f"pruned-{int(round(args.prune_ratio * 100))}"
    if not out.exists():
        loaded = load_model(args.model)
        cfg = PruneConfig(ratio=args.prune_ratio, importance="element1", seed=0)
        model, manifest = prune_model(loaded.model, loaded.tokenizer, cfg, [text_corpus_path("train").read_text()[:200000]],
                                      identity=loaded.identity, inplace=True, calibration_source="brown-corpus train")
        save_pruned(model, loaded.tokenizer, manifest, out)
    return load_pruned(out), load_pruned_tokenizer(out), {"pruned": True, "ratio": args.prune_ratio,
                                                           "method": "llm-pruner element1", "artefact": str(out)}


def measure(model, tok, args, seed) -> dict:
    """Held-out perplexity and the seven tasks: acc, acc_norm and the metric LLM-Pruner reports per task."""
    from rankadaptor.assets import text_corpus_path
    from rankadaptor.eval import evaluate, perplexity
    from rankadaptor.report.tables import REPORTED_METRIC, task_score

    t0 = time.perf_counter()
    ppl = perplexity(model, tok, [text_corpus_path("heldout").read_text()], seq_len=args.seq_len,
                     max_tokens=args.ppl_tokens)
    res = evaluate(model, tok, limit=args.limit, seed=seed, backend=args.backend)
    tasks = {t: {"acc": v["acc"], "acc_norm": v["acc_norm"], "reported": task_score(v, t),
                 "reported_metric": REPORTED_METRIC.get(t, "acc"), "n": v["n"]} for t, v in res["tasks"].items()}
    return {"ppl": ppl, "tasks": tasks, "avg_reported": sum(t["reported"] for t in tasks.values()) / len(tasks),
            "avg_acc": res["average"]["acc"], "avg_acc_norm": res["average"]["acc_norm"],
            "eval_seconds": time.perf_counter() - t0}


def layer_sizes(model, r: int) -> dict[str, int]:
    """{module: d_in + d_out} for the targeted modules (parameters per rank component)."""
    from rankadaptor.lora.ranks import RankPlan, decoder_layer_names, linear_shapes

    shapes = linear_shapes(model)
    return {n: sum(shapes[n]) for n in RankPlan.uniform(len(decoder_layer_names(model)), r).module_ranks(model)}


def prunedlora_method(model, init_rank: int, target_params: int, steps: int, **overrides):
    """PrunedLoRA sized to the run: global scope, prune every step between a quarter-run warm-up and a
    quarter-run final phase, with the smallest k per event that reaches the target (checked up front)."""
    from rankadaptor.errors import RankAdaptorError
    from rankadaptor.lora.pruned_lora import PrunedLoRAMethod, PruneSchedule

    sizes = layer_sizes(model, init_rank)
    kw = dict(init_rank=init_rank, target_params=target_params, scope="global", prune_every=1,
              warmup_steps=max(1, steps // 4), final_steps=steps // 4, **overrides)
    for k in range(1, init_rank + 1):
        try:
            PruneSchedule(**kw, prune_k=k).check_reachable(sizes, steps)
        except RankAdaptorError:
            continue
        return PrunedLoRAMethod(**kw, prune_k=k)
    raise RankAdaptorError(f"PrunedLoRA cannot reach {target_params} params from r={init_rank} in {steps} steps")


def one_run(base, tok, args, method: str, seed: int) -> dict:
    from rankadaptor.assets import text_corpus_path
    from rankadaptor.lora.adalora import AdaLoraMethod
    from rankadaptor.lora.ranks import RankPlan, count_lora_params, decoder_layer_names
    from rankadaptor.lora.recover import RecoveryConfig, recover

    model = copy.deepcopy(base)
    n = len(decoder_layer_names(model))
    lr = args.lr * 10 if method == "adalora-lr10" else args.lr
    cfg = RecoveryConfig(max_steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=lr,
                         seed=seed, threads=args.threads)
    budget = count_lora_params(model, RankPlan.uniform(n, args.uniform_r))
    plan, algo = None, None
    if method == "uniform":
        plan = RankPlan.uniform(n, args.uniform_r)
    elif method == "lora-star":
        plan = RankPlan.lora_star(n)
    elif method.startswith("adalora"):
        algo = AdaLoraMethod(uniform_r=args.uniform_r)
    else:
        algo = prunedlora_method(model, args.init_rank, budget, args.steps)
    res = recover(model, tok, plan, cfg, data=str(text_corpus_path("train")), method=algo)
    rec = res.record
    if method.startswith("adalora"):
        params = rec["adalora_effective_params"]
    elif method == "prunedlora":
        params = rec["prunedlora"]["final_params"]
    else:
        params = count_lora_params(base, plan)
    row = {"method": method, "seed": seed, "lr": lr, "lora_params": params, "budget": budget,
           "budget_gap": budget - params, "trainable_params": rec["trainable_params"],
           "val_loss": rec["val_loss"], "first_loss": rec["loss_curve"][0]["loss"],
           "last_loss": rec["loss_curve"][-1]["loss"], "seconds_per_step": rec["seconds_per_step"],
           "peak_rss_mb": rec["peak_rss_mb"], "loss_curve": [round(c["loss"], 4) for c in rec["loss_curve"]]}
    if method != "uniform" and method != "lora-star":
        # equal budget means: at most the budget, and less than one (largest) component below it
        row["within_one_component"] = 0 <= budget - params < max(layer_sizes(base, 1).values())
    if method.startswith("adalora"):
        row["adalora"] = {k: rec["adalora"][k] for k in ("target_params", "init_r", "target_r", "tinit", "tfinal")}
        row["adalora"]["rank_history"] = rec["adalora_rank_history"]
        row["final_ranks"] = sorted(rec["adalora_final_ranks"].values())
    if method == "prunedlora":
        pl = rec["prunedlora"]
        row["prunedlora"] = {k: pl["schedule"][k] for k in ("init_rank", "prune_every", "prune_k", "scope",
                                                            "warmup_steps", "final_steps", "scorer")}
        row["prunedlora"]["events"] = [{k: e[k] for k in ("step", "removed", "params")} for e in pl["events"]]
        row["final_ranks"] = sorted(pl["final_ranks"].values())
    row.update(measure(res.model, tok, args, seed))
    return row


def summarise(rows: list[dict]) -> dict:
    """Per method: mean [95 % CI] of every key, and the difference to uniform paired by seed."""
    from rankadaptor.stats import mean_ci, paired_difference

    out = {}
    base = {r["seed"]: r for r in rows if r["method"] == "uniform"}
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        out[method] = {key: mean_ci([r[key] for r in rs]).to_dict() for key in SUMMARY_KEYS}
        tasks = rs[0]["tasks"]
        out[method]["tasks"] = {t: mean_ci([r["tasks"][t]["reported"] for r in rs]).to_dict() for t in tasks}
        paired = [r for r in rs if r["seed"] in base]
        if method != "uniform" and len(paired) >= 2:
            out[method]["vs_uniform"] = {
                key: paired_difference([r[key] for r in paired], [base[r["seed"]][key] for r in paired])
                for key in PAIRED_KEYS}
    return out


def _ci(c: dict, p: int = 3, scale: float = 1.0) -> str:
    m = c["mean"] * scale
    if c["n"] < 2:
        return f"{m:.{p}f}"
    return f"{m:.{p}f} [{c['ci_low'] * scale:.{p}f}, {c['ci_high'] * scale:.{p}f}]"


def _diff(d: dict, p: int = 3, scale: float = 1.0) -> str:
    from rankadaptor.stats import verdict_of

    verdict = {"significant": "", "not significant": " not significant",
               "no test": " no test (n < 3 or zero spread)"}[verdict_of(d)]
    return f"{d['mean'] * scale:+.{p}f} [{d['ci_low'] * scale:+.{p}f}, {d['ci_high'] * scale:+.{p}f}]{verdict}"


def write_markdown(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write(out: Path, payload: dict) -> None:
    from rankadaptor.fileio import write_json_atomic

    write_json_atomic(out, payload)
    write_markdown(out.with_suffix(".md"), markdown(payload))


def markdown(payload: dict) -> str:
    """The results tables (also what benchmarks/readme_tables.py puts in the README)."""
    from rankadaptor.report.tables import TASK_LABEL, TASK_ORDER

    s = payload["setup"]
    lines = [f"# recover_baselines ({s['model_state']})", "",
             f"{s['steps']} steps × batch {s['batch_size']} × seq {s['seq_len']} tokens, lr {s['lr']} (linear decay), "
             f"{s['threads']} torch thread(s); accuracy on the first {s['limit']} docs of each task ({s['backend']} scorer), "
             f"perplexity on the first {s['ppl_tokens']} Brown held-out tokens; seeds {s['seeds']}. "
             "Mean [95 % t-interval over seeds]. 'avg (LLM-Pruner)' averages acc for BoolQ/PIQA/WinoG/ARC-e "
             "and acc_norm for HellaS/ARC-c/OBQA; 'avg acc_norm' is over the five tasks that define it. "
             "Peak RSS is the benchmark process's peak so far (ru_maxrss; runs share one process), so it "
             "never decreases from run to run; s/step is wall time on a shared 2-core machine (noisy).", "",
             "| method | LoRA params | held-out ppl | avg (LLM-Pruner) | avg acc | avg acc_norm | val loss | s/step | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    if payload.get("no_recovery"):
        b = payload["no_recovery"]
        lines.append(f"| none (pruned, no LoRA) | 0 | {b['ppl']:.2f} | {b['avg_reported']:.3f} | {b['avg_acc']:.3f} "
                     f"| {b['avg_acc_norm']:.3f} | | | |")
    def label(m: str) -> str:
        n = payload["summary"][m]["ppl"]["n"]
        return m if n == len(s["seeds"]) else f"{m} (n={n})"

    for m, r in payload["summary"].items():
        lines.append(f"| {label(m)} | {r['lora_params']['mean']:,.0f} | {_ci(r['ppl'], 2)} | {_ci(r['avg_reported'])} | "
                     f"{_ci(r['avg_acc'])} | {_ci(r['avg_acc_norm'])} | {_ci(r['val_loss'])} | "
                     f"{r['seconds_per_step']['mean']:.2f} | {r['peak_rss_mb']['mean']:.0f} |")
    other_lr = {r["method"]: r["lr"] for r in payload["runs"] if r.get("lr", s["lr"]) != s["lr"]}
    if other_lr:
        lines += ["", "Trained at another lr (everything else equal): "
                  + ", ".join(f"{m} at lr {lr:g}" for m, lr in other_lr.items()) + "."]
    lines += ["", "Difference to uniform r (method − uniform, paired by seed), mean [95 % t-interval]:", "",
              "| method | Δ ppl | Δ avg (LLM-Pruner) | Δ avg acc | Δ avg acc_norm | Δ val loss |", "|---|---|---|---|---|---|"]
    for m, r in payload["summary"].items():
        if "vs_uniform" in r:
            d = r["vs_uniform"]
            lines.append(f"| {label(m)} | {_diff(d['ppl'], 2)} | {_diff(d['avg_reported'])} | {_diff(d['avg_acc'])} | "
                         f"{_diff(d['avg_acc_norm'])} | {_diff(d['val_loss'])} |")
    tasks = [t for t in TASK_ORDER if t in next(iter(payload["summary"].values()))["tasks"]]
    lines += ["", "Per task (LLM-Pruner's metric), mean [95 % t-interval]:", "",
              "| method | " + " | ".join(TASK_LABEL[t] for t in tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    if payload.get("no_recovery"):
        b = payload["no_recovery"]["tasks"]
        lines.append("| none | " + " | ".join(f"{b[t]['reported']:.3f}" for t in tasks) + " |")
    for m, r in payload["summary"].items():
        lines.append(f"| {label(m)} | " + " | ".join(_ci(r["tasks"][t]) for t in tasks) + " |")
    budgets = [r for r in payload["runs"] if "within_one_component" in r]
    if budgets:
        lines += ["", "Budget check (final LoRA params vs uniform r's count):", ""]
        for r in budgets:
            lines.append(f"* {r['method']} seed {r['seed']}: {r['lora_params']:,} of {r['budget']:,} "
                         f"(gap {r['budget_gap']:,}, within one component: {r['within_one_component']}); "
                         f"final ranks {min(r['final_ranks'])}–{max(r['final_ranks'])}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import torch

    from rankadaptor.fileio import write_json_atomic
    from rankadaptor.provenance import provenance

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = HERE / "work" / "recover_baselines"
    work.mkdir(parents=True, exist_ok=True)
    base, tok, state = pruned_model(args, work)
    setup = {**{k: v for k, v in vars(args).items() if k not in ("out", "methods", "seeds")},
             "seeds": args.seeds,
             "model_state": "dense (not pruned)" if args.dense else f"pruned {args.prune_ratio:.0%} llm-pruner"}
    payload = json.loads(out.read_text()) if out.exists() else {}
    same = {k: v for k, v in payload.get("setup", {}).items() if k != "seeds"} == {k: v for k, v in setup.items()
                                                                                  if k != "seeds"}
    if not same:
        payload = {"setup": setup, "model": state, "runs": []}
    payload["setup"] = setup
    if "no_recovery" not in payload:
        payload["no_recovery"] = measure(base, tok, args, 0)
        payload["provenance"] = provenance(args.seeds[0])
        write_json_atomic(out, payload)  # the unrecovered row survives an interrupted first run
    done = {(r["method"], r["seed"]) for r in payload["runs"]}
    for seed in args.seeds:
        for method in args.methods:
            if (method, seed) in done:
                continue
            row = one_run(base, tok, args, method, seed)
            print(json.dumps({k: row[k] for k in ("method", "seed", "lora_params", "ppl", "avg_reported", "val_loss",
                                                  "seconds_per_step")}), flush=True)
            payload["runs"].append(row)
            payload["summary"] = summarise(payload["runs"])
            payload["provenance"] = provenance(args.seeds[0])
            write(out, payload)
    if payload["runs"]:  # tables follow the current code even when every run was already done
        payload["summary"] = summarise(payload["runs"])
        write(out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
