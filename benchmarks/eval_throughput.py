"""Evaluation throughput: the fast scorer vs lm-eval's own ``simple_evaluate``, same numbers required.

Both run in one process on the same documents (the first ``--limit`` of each task's split) and
the same lm-eval requests, task by task and back to back (lm-eval, then the fast scorer, then,
with ``--rounds 2``, the two again in the other order), so that a change in the machine's load
hits both alike. Per task we report wall and CPU seconds, docs/s, tokens/s, the speed-up and
whether acc and acc_norm agree on every document. The speed-up is on CPU seconds of the process
(one torch thread, so CPU time is the work done, and other jobs on a shared machine inflate it
far less than wall time); the wall-time speed-up is reported beside it.

Usage: .venv/bin/python benchmarks/eval_throughput.py --limit 50 --threads 1
Writes benchmarks/results/eval_throughput.json and .md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_OVERALL, GOAL_PER_TASK = 2.0, 1.3  # issue 16


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tasks", default=None, help="comma-separated; default all seven")
    p.add_argument("--limit", type=int, default=50, help="first N docs per task (default 50)")
    p.add_argument("--rounds", type=int, default=2, choices=(1, 2),
                   help="2 (default): each backend twice per task, in the order A B B A; times are summed")
    p.add_argument("--batch-size", type=int, default=16, help="lm-eval HFLM batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("RANKADAPTOR_THREADS", "1")))
    args = p.parse_args(argv)

    import torch

    from rankadaptor.eval import evaluate
    from rankadaptor.eval.tasks import resolve_tasks
    from rankadaptor.fileio import write_json_atomic
    from rankadaptor.models.loading import load_model
    from rankadaptor.provenance import provenance

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    rows = {}
    for task in resolve_tasks(args.tasks):
        order = ["lm_eval", "fast"] + (["fast", "lm_eval"] if args.rounds == 2 else [])
        runs: dict[str, list[dict]] = {"lm_eval": [], "fast": []}
        for backend in order:
            ev = evaluate(loaded.model, loaded.tokenizer, tasks=[task], limit=args.limit,
                          batch_size=args.batch_size, seed=args.seed, backend=backend)
            runs[backend].append(ev["tasks"][task])
        ref, fast = runs["lm_eval"][0], runs["fast"][0]
        wall = {b: sum(r["wall_s"] for r in rs) for b, rs in runs.items()}
        cpu = {b: sum(r["cpu_s"] for r in rs) for b, rs in runs.items()}
        per_run = len(order) // 2
        rows[task] = {
            "n": ref["n"], "tokens": ref["tokens"],
            "lm_eval_wall_s": wall["lm_eval"] / per_run, "fast_wall_s": wall["fast"] / per_run,
            "lm_eval_cpu_s": cpu["lm_eval"] / per_run, "fast_cpu_s": cpu["fast"] / per_run,
            "lm_eval_docs_per_s": ref["n"] * per_run / wall["lm_eval"], "fast_docs_per_s": ref["n"] * per_run / wall["fast"],
            "lm_eval_tokens_per_s": ref["tokens"] * per_run / wall["lm_eval"],
            "fast_tokens_per_s": ref["tokens"] * per_run / wall["fast"],
            "speedup_cpu": cpu["lm_eval"] / cpu["fast"], "speedup_wall": wall["lm_eval"] / wall["fast"],
            # identical per-document correctness, not only the same means
            "same_acc": all(r["docs"] == ref["docs"] for r in runs["lm_eval"] + runs["fast"]),
            "acc": ref["acc"], "acc_norm": ref["acc_norm"], "fast_acc": fast["acc"], "fast_acc_norm": fast["acc_norm"],
        }
        print(f"{task}: {rows[task]['speedup_cpu']:.2f}x CPU, {rows[task]['speedup_wall']:.2f}x wall, "
              f"same acc: {rows[task]['same_acc']}", flush=True)
    total = {k: sum(r[k] for r in rows.values()) for k in ("lm_eval_cpu_s", "fast_cpu_s", "lm_eval_wall_s", "fast_wall_s")}
    res = {"benchmark": {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "limit": args.limit,
                         "rounds": args.rounds, "threads": args.threads, "batch_size": args.batch_size,
                         "goals": {"overall": GOAL_OVERALL, "per_task": GOAL_PER_TASK}},
           "model": loaded.identity, "tasks": rows, "total": total,
           "overall_speedup": total["lm_eval_cpu_s"] / total["fast_cpu_s"],
           "overall_speedup_wall": total["lm_eval_wall_s"] / total["fast_wall_s"], "provenance": provenance(args.seed)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "eval_throughput.json", res)
    text = markdown(res)
    (RESULTS / "eval_throughput.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def markdown(res: dict) -> str:
    b = res["benchmark"]
    lines = [f"# eval_throughput: {res['model'].get('spec')}, first {b['limit']} docs per task, {b['threads']} thread(s)",
             "",
             f"lm-eval = `simple_evaluate` with HFLM (batch size {b['batch_size']}); fast = `rankadaptor.eval.fast` on "
             f"the same lm-eval requests. Same process, same documents, task by task back to back "
             f"({'A B B A, times averaged over the two rounds' if b['rounds'] == 2 else 'one round'}). Speed-up = "
             "lm-eval's CPU seconds / the fast scorer's (one thread; wall-time speed-up beside it, noisier on a shared "
             "machine). 'same acc': acc and acc_norm identical on every document.", "",
             "| task | n | tokens | lm-eval CPU s | fast CPU s | lm-eval docs/s | fast docs/s | fast tok/s | "
             "speed-up (CPU) | speed-up (wall) | same acc |", "|" + "---|" * 11]
    for t, r in res["tasks"].items():
        lines.append(f"| {t} | {r['n']} | {r['tokens']} | {r['lm_eval_cpu_s']:.1f} | {r['fast_cpu_s']:.1f} | "
                     f"{r['lm_eval_docs_per_s']:.2f} | {r['fast_docs_per_s']:.2f} | {r['fast_tokens_per_s']:.0f} | "
                     f"{r['speedup_cpu']:.2f}x | {r['speedup_wall']:.2f}x | {'yes' if r['same_acc'] else 'NO'} |")
    tot = res["total"]
    slow = [t for t, r in res["tasks"].items() if r["speedup_cpu"] < b["goals"]["per_task"]]
    lines += ["", f"Total CPU: lm-eval {tot['lm_eval_cpu_s']:.1f} s, fast {tot['fast_cpu_s']:.1f} s: "
              f"**{res['overall_speedup']:.2f}x** (wall {res['overall_speedup_wall']:.2f}x). Goals (issue 16): "
              f"{b['goals']['overall']:g}x overall: {'met' if res['overall_speedup'] >= b['goals']['overall'] else 'NOT met'}; "
              f"{b['goals']['per_task']:g}x on every task: "
              f"{'met' if not slow else 'NOT met on ' + ', '.join(slow)}.",
              f"Command: `.venv/bin/python benchmarks/{b['command']}`; git {res['provenance']['git_commit']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
