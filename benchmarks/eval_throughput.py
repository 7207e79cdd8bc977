"""Evaluation throughput: the shared-context scorer vs lm-eval's own ``simple_evaluate``.

Both run in the same process on the same documents (the first ``--limit`` of each task's split)
and the same lm-eval requests; per task we report docs/s, tokens/s (tokens of every context +
continuation request), their ratio, and whether acc / acc_norm agree.

Usage: .venv/bin/python benchmarks/eval_throughput.py --limit 20
Writes benchmarks/results/eval_throughput.json and .md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tasks", default=None, help="comma-separated; default all seven")
    p.add_argument("--limit", type=int, default=20, help="first N docs per task (default 20)")
    p.add_argument("--batch-size", type=int, default=16, help="lm-eval HFLM batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("RANKADAPTOR_THREADS", "1")))
    args = p.parse_args(argv)

    import torch

    from rankadaptor.eval import evaluate
    from rankadaptor.fileio import write_json_atomic
    from rankadaptor.models.loading import load_model
    from rankadaptor.provenance import provenance

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    runs = {b: evaluate(loaded.model, loaded.tokenizer, tasks=args.tasks, limit=args.limit,
                        batch_size=args.batch_size, seed=args.seed, backend=b) for b in ("lm_eval", "fast")}
    rows = {}
    for task, ref in runs["lm_eval"]["tasks"].items():
        fast = runs["fast"]["tasks"][task]
        rows[task] = {
            "n": ref["n"], "tokens": ref["tokens"],
            "lm_eval_docs_per_s": ref["docs_per_s"], "fast_docs_per_s": fast["docs_per_s"],
            "lm_eval_tokens_per_s": ref["tokens_per_s"], "fast_tokens_per_s": fast["tokens_per_s"],
            "speedup": ref["wall_s"] / fast["wall_s"],
            "same_acc": ref["acc"] == fast["acc"] and ref["acc_norm"] == fast["acc_norm"],
            "acc": ref["acc"], "acc_norm": ref["acc_norm"],
        }
    total = {b: sum(r["wall_s"] for r in runs[b]["tasks"].values()) for b in runs}
    res = {"benchmark": {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "limit": args.limit,
                         "threads": args.threads, "batch_size": args.batch_size},
           "model": loaded.identity, "tasks": rows, "total_wall_s": total,
           "overall_speedup": total["lm_eval"] / total["fast"], "provenance": provenance(args.seed)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "eval_throughput.json", res)
    head = "| task | n | tokens | lm-eval docs/s | fast docs/s | lm-eval tok/s | fast tok/s | speed-up | same acc |"
    lines = [f"# eval_throughput: {args.model}, first {args.limit} docs per task, {args.threads} thread(s)", "",
             "lm-eval = `simple_evaluate` with HFLM (batch size %d); fast = `rankadaptor.eval.fast` on the same "
             "lm-eval requests. Same process, same documents." % args.batch_size, "", head, "|" + "---|" * 9]
    for t, r in rows.items():
        lines.append(f"| {t} | {r['n']} | {r['tokens']} | {r['lm_eval_docs_per_s']:.2f} | {r['fast_docs_per_s']:.2f} | "
                     f"{r['lm_eval_tokens_per_s']:.0f} | {r['fast_tokens_per_s']:.0f} | {r['speedup']:.2f}x | "
                     f"{'yes' if r['same_acc'] else 'NO'} |")
    lines += ["", f"Total wall: lm-eval {total['lm_eval']:.1f} s, fast {total['fast']:.1f} s, "
              f"speed-up {res['overall_speedup']:.2f}x. Command: `.venv/bin/python benchmarks/"
              f"{res['benchmark']['command']}`; git {res['provenance']['git_commit']}.", ""]
    (RESULTS / "eval_throughput.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
