"""Pruned without recovery (the analogue of RankAdaptor's Table 9) on SmolLM2-135M.

For every (method, ratio) the script prunes the base model in a fresh child process (so peak
memory is that configuration's own), then measures parameters, held-out perplexity, pruning
wall time, peak RSS and, when ``rankadaptor.eval.evaluate`` is available and ``--limit`` > 0,
seven-task zero-shot accuracy on the first ``--limit`` documents of each task.

    .venv/bin/python benchmarks/prune_table9.py --limit 100

Writes benchmarks/results/prune_table9.json and .md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORK = HERE / "work" / "prune_table9"


def _perplexity(model, tok, text: str, n_seq: int, seq_len: int) -> float:
    """Held-out perplexity by the shared evaluator on the first n_seq x seq_len tokens."""
    from rankadaptor.eval import perplexity

    return float(perplexity(model, tok, [text], seq_len=seq_len, max_tokens=n_seq * seq_len))


def one(args) -> dict:
    """Child process: prune one configuration and measure it."""
    import torch

    torch.set_num_threads(args.threads)
    from rankadaptor.assets import text_corpus_path
    from rankadaptor.models.loading import load_model
    from rankadaptor.prune.pruning import PruneConfig, prune_model

    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    row = {"method": args.method, "ratio": args.ratio, "importance": args.importance if args.method == "llm-pruner" else None}
    if args.ratio > 0:
        calib = text_corpus_path("train").read_text()
        cfg = PruneConfig(method=args.method, ratio=args.ratio, importance=args.importance,
                          calibration=args.calibration, seq_len=128, seed=args.seed)
        t0 = time.perf_counter()
        model, man = prune_model(model, tok, cfg, [calib], identity=loaded.identity, inplace=True,
                                 calibration_source="brown-corpus train")
        row["prune_wall_s"] = time.perf_counter() - t0
        row.update(params=man["params_after"], params_before=man["params_before"],
                   achieved_ratio=man["achieved_ratio"], layer_ratio=man["layer_ratio"],
                   removed_layers=man["removed_layers"],
                   kv_groups=[layer["num_key_value_heads"] for layer in man["layers"]],
                   channels=[layer["intermediate_size"] for layer in man["layers"]])
    else:
        from rankadaptor.prune.width import count_params

        row.update(params=count_params(model), prune_wall_s=0.0, achieved_ratio=0.0)
    row["peak_rss_mib_after_prune"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    held = text_corpus_path("heldout").read_text()
    t0 = time.perf_counter()
    row["ppl"] = _perplexity(model, tok, held, args.ppl_seqs, args.ppl_len)
    row["ppl_wall_s"] = time.perf_counter() - t0
    if args.limit > 0:
        from rankadaptor.eval import evaluate

        t0 = time.perf_counter()
        res = evaluate(model, tok, limit=args.limit, seed=args.seed, batch_size=args.batch_size, backend=args.backend)
        row["eval_wall_s"] = time.perf_counter() - t0
        row["tasks"] = {k: _main_metric(v) for k, v in res["tasks"].items()}
        row["tasks_full"] = {k: {m: v.get(m) for m in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "n")}
                             for k, v in res["tasks"].items()}
        row["average"] = res["average"]
    return row


def _main_metric(v: dict) -> float:
    """acc_norm where the task defines it (lm-eval convention for papers' tables), else acc."""
    return v["acc_norm"] if v.get("acc_norm") is not None else v["acc"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--ratios", default="0.2,0.25,0.3,0.5")
    p.add_argument("--methods", default="llm-pruner,shortgpt")
    p.add_argument("--importance", default="element1")
    p.add_argument("--calibration", type=int, default=10)
    p.add_argument("--ppl-seqs", type=int, default=16, help="held-out windows for perplexity")
    p.add_argument("--ppl-len", type=int, default=256)
    p.add_argument("--limit", type=int, default=0, help="documents per task for accuracy (0: perplexity only)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--backend", choices=("fast", "lm_eval"), default="fast",
                   help="evaluator: fast (lm-eval's requests, shared contexts; tested equal) or lm_eval itself")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="prune_table9", help="results file stem under benchmarks/results/")
    p.add_argument("--no-base", action="store_true", help="skip the unpruned reference row")
    p.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ratio", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.single:
        Path(args.part).write_text(json.dumps(one(args)))
        return 0

    WORK.mkdir(parents=True, exist_ok=True)
    jobs = ([] if args.no_base else [("base", 0.0)]) + [(m, float(r)) for m in args.methods.split(",") for r in args.ratios.split(",")]
    rows = []
    for method, ratio in jobs:
        part = WORK / f"{args.name}_{method}_{ratio}_limit{args.limit}_{args.backend}.json"
        cmd = [sys.executable, __file__, "--single", "--method", method, "--ratio", str(ratio), "--part", str(part),
               "--model", args.model, "--importance", args.importance, "--calibration", str(args.calibration),
               "--ppl-seqs", str(args.ppl_seqs), "--ppl-len", str(args.ppl_len), "--limit", str(args.limit),
               "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--threads", str(args.threads)]
        if part.exists():  # resume: a finished configuration is kept (delete benchmarks/work/prune_table9 to redo)
            print(f"[prune_table9] {method} {ratio}: kept from {part}", flush=True)
        else:
            print(f"[prune_table9] {method} {ratio}", flush=True)
            subprocess.run(cmd + ["--backend", args.backend], check=True)
        rows.append(json.loads(part.read_text()))
        print(f"[prune_table9]   -> {json.dumps({k: rows[-1].get(k) for k in ('params', 'ppl', 'prune_wall_s', 'average')})}", flush=True)

    from rankadaptor.fileio import write_json_atomic
    from rankadaptor.provenance import provenance

    out = {
        "benchmark": args.name,
        "model": args.model,
        "settings": {k: v for k, v in vars(args).items() if k not in ("single", "method", "ratio", "part", "no_base")},
        "notes": ("No recovery. Perplexity: brown-corpus held-out split, first ppl_seqs x ppl_len tokens. "
                  "Peak memory: max RSS of the child process that loads the base model, prunes it (and computes "
                  "gradients for Taylor importance), measured right after pruning. Accuracy (if present): "
                  "acc_norm where defined else acc, on the first `limit` documents per task; avg = mean of those "
                  "seven numbers (tasks_full has acc, acc_norm, stderr and n per task)."),
        "rows": rows,
        "provenance": provenance(args.seed),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / f"{args.name}.json", out)
    (RESULTS / f"{args.name}.md").write_text(table(out))
    print(table(out))
    return 0


def table(out: dict) -> str:
    rows = out["rows"]
    tasks = sorted({t for r in rows for t in r.get("tasks", {})})
    head = ["method", "ratio", "params (M)", "removed %", "ppl", "prune s", "peak RSS MiB"] + tasks + (["avg"] if tasks else [])
    lines = [f"# Pruned without recovery: {out['model']}", "",
             f"Settings: {json.dumps(out['settings'])}", "", out["notes"], "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        avg = r.get("average", {})
        cells = [r["method"], f"{r['ratio']:.2f}", f"{r['params'] / 1e6:.2f}", f"{100 * r['achieved_ratio']:.2f}",
                 f"{r['ppl']:.2f}", f"{r['prune_wall_s']:.1f}", f"{r['peak_rss_mib_after_prune']:.0f}"]
        accs = [r["tasks"][t] for t in tasks if r.get("tasks", {}).get(t) is not None]
        cells += [f"{100 * r['tasks'][t]:.1f}" if r.get("tasks", {}).get(t) is not None else "-" for t in tasks]
        if tasks:
            cells.append(f"{100 * sum(accs) / len(accs):.1f}" if accs else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
