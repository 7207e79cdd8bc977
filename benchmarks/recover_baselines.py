"""Recovery baselines on SmolLM2-135M pruned 20 % by llm-pruner: uniform r vs LoRA* vs AdaLoRA, equal budget.

Prunes once (element1 Taylor, seed 0, Brown train text as calibration), then for every seed and
method trains LoRA with ``rankadaptor.lora.recover`` on the Brown train split and measures:
held-out perplexity (Brown held-out split, first ``--ppl-tokens`` tokens), seven-task zero-shot
accuracy on the first ``--limit`` documents per task (``rankadaptor.eval.evaluate``), the
validation loss, time per step and peak RSS. LoRA*'s parameter count is what it is (its ranks are
fixed by the paper); AdaLoRA's final budget is set equal to uniform r's parameter count.
Tables: mean and 95 % t-interval over seeds. Results are written after every run (resumable).

    /tmp/heavy .venv/bin/python benchmarks/recover_baselines.py --seeds 0 1 2 --steps 10 --limit 10

Writes benchmarks/results/recover_baselines.json and .md; scratch under benchmarks/work/recover_baselines/.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
METHODS = ("uniform", "lora-star", "adalora")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prune-ratio", type=float, default=0.2)
    p.add_argument("--dense", action="store_true", help="skip pruning (labelled 'dense' in the results)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--uniform-r", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--limit", type=int, default=10, help="documents per task for the seven-task accuracy")
    p.add_argument("--ppl-tokens", type=int, default=4096)
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
    from rankadaptor.prune.artefact import PruneConfig, load_pruned, load_pruned_tokenizer, prune_model, save_pruned

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
    from rankadaptor.assets import text_corpus_path
    from rankadaptor.eval import evaluate, perplexity

    t0 = time.perf_counter()
    ppl = perplexity(model, tok, [text_corpus_path("heldout").read_text()], seq_len=args.seq_len,
                     max_tokens=args.ppl_tokens)
    res = evaluate(model, tok, limit=args.limit, seed=seed)
    accs = {t: v["acc"] for t, v in res["tasks"].items()}
    return {"ppl": ppl, "acc": accs, "avg_acc": res["average"]["acc"], "eval_seconds": time.perf_counter() - t0}


def one_run(base, tok, args, method: str, seed: int) -> dict:
    from rankadaptor.lora.adalora import AdaLoraMethod
    from rankadaptor.lora.ranks import RankPlan, count_lora_params, decoder_layer_names
    from rankadaptor.lora.recover import RecoveryConfig, recover

    model = copy.deepcopy(base)
    n = len(decoder_layer_names(model))
    cfg = RecoveryConfig(max_steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                         seed=seed, threads=args.threads)
    plan, algo = None, None
    if method == "uniform":
        plan = RankPlan.uniform(n, args.uniform_r)
    elif method == "lora-star":
        plan = RankPlan.lora_star(n)
    else:
        algo = AdaLoraMethod(uniform_r=args.uniform_r)
    from rankadaptor.assets import text_corpus_path

    res = recover(model, tok, plan, cfg, data=str(text_corpus_path("train")), method=algo)
    rec = res.record
    params = rec.get("adalora_effective_params") or count_lora_params(model, plan)
    row = {"method": method, "seed": seed, "lora_params": params, "trainable_params": rec["trainable_params"],
           "val_loss": rec["val_loss"], "first_loss": rec["loss_curve"][0]["loss"],
           "last_loss": rec["loss_curve"][-1]["loss"], "seconds_per_step": rec["seconds_per_step"],
           "peak_rss_mb": rec["peak_rss_mb"]}
    if "adalora" in rec:
        row["adalora"] = {k: rec["adalora"][k] for k in ("target_params", "init_r", "target_r", "tinit", "tfinal")}
    row.update(measure(res.model, tok, args, seed))
    return row


def summarise(rows: list[dict]) -> dict:
    from rankadaptor.stats import mean_ci

    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        out[method] = {}
        for key in ("ppl", "avg_acc", "val_loss", "seconds_per_step", "peak_rss_mb", "lora_params"):
            ci = mean_ci([r[key] for r in rs])
            out[method][key] = {"mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n}
    return out


def write(out: Path, payload: dict) -> None:
    from rankadaptor.fileio import write_json_atomic

    write_json_atomic(out, payload)
    lines = [f"# recover_baselines ({payload['setup']['model_state']})", "",
             f"steps {payload['setup']['steps']} × batch {payload['setup']['batch_size']} × seq "
             f"{payload['setup']['seq_len']}, lr {payload['setup']['lr']}, accuracy on the first "
             f"{payload['setup']['limit']} docs per task, seeds {payload['setup']['seeds']}; mean [95 % t-CI]", "",
             "| method | LoRA params | held-out ppl | 7-task avg acc | val loss | s/step | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    if payload.get("no_recovery"):
        b = payload["no_recovery"]
        lines.append(f"| none (pruned, no LoRA) | 0 | {b['ppl']:.2f} | {b['avg_acc']:.3f} | | | |")

    def fmt(c, p=3):
        return f"{c['mean']:.{p}f} [{c['low']:.{p}f}, {c['high']:.{p}f}]" if c["n"] > 1 else f"{c['mean']:.{p}f}"

    for m, s in payload["summary"].items():
        lines.append(f"| {m} | {s['lora_params']['mean']:,.0f} | {fmt(s['ppl'], 2)} | {fmt(s['avg_acc'])} | "
                     f"{fmt(s['val_loss'])} | {s['seconds_per_step']['mean']:.2f} | {s['peak_rss_mb']['mean']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    import torch

    from rankadaptor.provenance import provenance

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = HERE / "work" / "recover_baselines"
    work.mkdir(parents=True, exist_ok=True)
    base, tok, state = pruned_model(args, work)
    setup = {**{k: v for k, v in vars(args).items() if k != "out"},
             "model_state": "dense (not pruned)" if args.dense else f"pruned {args.prune_ratio:.0%} llm-pruner"}
    payload = json.loads(out.read_text()) if out.exists() else {}
    if payload.get("setup") != setup:
        payload = {"setup": setup, "model": state, "runs": []}
    if "no_recovery" not in payload:
        payload["no_recovery"] = measure(base, tok, args, 0)
    done = {(r["method"], r["seed"]) for r in payload["runs"]}
    for seed in args.seeds:
        for method in args.methods:
            if (method, seed) in done:
                continue
            row = one_run(base, tok, args, method, seed)
            print(json.dumps({k: row[k] for k in ("method", "seed", "lora_params", "ppl", "avg_acc", "val_loss",
                                                  "seconds_per_step")}), flush=True)
            payload["runs"].append(row)
            payload["summary"] = summarise(payload["runs"])
            payload["provenance"] = provenance(args.seeds[0])
            write(out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
