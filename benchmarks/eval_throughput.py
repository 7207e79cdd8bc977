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


class WorkCounter:
    """Tokens through the decoder and rows through the LM head (hooks on the model), so each backend's
    work can be compared with its time: 2 FLOPs per weight per token, the decoder's weights on every
    token (the embedding lookup is free), the head's (vocab x hidden) only on the rows it projects.
    Attention's own FLOPs are left out (a few % at these lengths). If the speed-up equals the ratio
    of work, the faster backend is compute-bound and only doing less work can make it faster."""

    def __init__(self, model):
        body, head = model.get_decoder(), model.get_output_embeddings()
        self.head_params = head.weight.numel()
        embed = model.get_input_embeddings().weight
        self.body_params = sum(p.numel() for p in body.parameters() if p is not embed)
        self.tokens = self.rows = 0

        def count_tokens(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.tokens += ids.numel() if ids is not None else kwargs["inputs_embeds"].shape[:2].numel()

        def count_rows(_module, _args, out):
            self.rows += out.numel() // out.shape[-1]

        self.handles = [body.register_forward_pre_hook(count_tokens, with_kwargs=True),
                        head.register_forward_hook(count_rows)]

    def take(self) -> dict:
        """The work since the last take: decoder tokens, head rows, GFLOPs."""
        out = {"tokens": self.tokens, "head_rows": self.rows,
               "gflops": 2 * (self.tokens * self.body_params + self.rows * self.head_params) / 1e9}
        self.tokens = self.rows = 0
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


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
    counter = WorkCounter(loaded.model)
    for task in resolve_tasks(args.tasks):
        order = ["lm_eval", "fast"] + (["fast", "lm_eval"] if args.rounds == 2 else [])
        runs: dict[str, list[dict]] = {"lm_eval": [], "fast": []}
        work: dict[str, dict] = {}
        for backend in order:
            counter.take()
            ev = evaluate(loaded.model, loaded.tokenizer, tasks=[task], limit=args.limit,
                          batch_size=args.batch_size, seed=args.seed, backend=backend)
            runs[backend].append(ev["tasks"][task])
            work[backend] = counter.take()  # the same in both rounds: the work is deterministic
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
            "work": work, "work_ratio": work["lm_eval"]["gflops"] / work["fast"]["gflops"],
            # identical per-document correctness, not only the same means
            "same_acc": all(r["docs"] == ref["docs"] for r in runs["lm_eval"] + runs["fast"]),
            "acc": ref["acc"], "acc_norm": ref["acc_norm"], "fast_acc": fast["acc"], "fast_acc_norm": fast["acc_norm"],
        }
        print(f"{task}: {rows[task]['speedup_cpu']:.2f}x CPU, {rows[task]['speedup_wall']:.2f}x wall, "
              f"same acc: {rows[task]['same_acc']}", flush=True)
    counter.close()
    total = {k: sum(r[k] for r in rows.values()) for k in ("lm_eval_cpu_s", "fast_cpu_s", "lm_eval_wall_s", "fast_wall_s")}
    total.update({f"{b}_gflops": sum(r["work"][b]["gflops"] for r in rows.values()) for b in ("lm_eval", "fast")})
    res = {"benchmark": {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "limit": args.limit,
                         "rounds": args.rounds, "threads": args.threads, "batch_size": args.batch_size,
                         "goals": {"overall": GOAL_OVERALL, "per_task": GOAL_PER_TASK}},
           "model": loaded.identity, "tasks": rows, "total": total,
           "overall_speedup": total["lm_eval_cpu_s"] / total["fast_cpu_s"],
           "overall_speedup_wall": total["lm_eval_wall_s"] / total["fast_wall_s"],
           "overall_work_ratio": total["lm_eval_gflops"] / total["fast_gflops"], "provenance": provenance(args.seed)}
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
             "machine). 'same acc': acc and acc_norm identical on every document. Work = GFLOPs of the decoder's "
             "weights on every token it was given (padding included) and of the LM head on every row it projected "
             "(hooks on the model; attention's own FLOPs left out); 'work ratio' = lm-eval's work / the fast "
             "scorer's: a speed-up near it means the fast scorer is compute-bound and can only gain by doing less.", "",
             "| task | n | tokens | lm-eval CPU s | fast CPU s | lm-eval docs/s | fast docs/s | fast tok/s | "
             "speed-up (CPU) | speed-up (wall) | lm-eval GFLOP | fast GFLOP | work ratio | same acc |",
             "|" + "---|" * 14]
    for t, r in res["tasks"].items():
        lines.append(f"| {t} | {r['n']} | {r['tokens']} | {r['lm_eval_cpu_s']:.1f} | {r['fast_cpu_s']:.1f} | "
                     f"{r['lm_eval_docs_per_s']:.2f} | {r['fast_docs_per_s']:.2f} | {r['fast_tokens_per_s']:.0f} | "
                     f"{r['speedup_cpu']:.2f}x | {r['speedup_wall']:.2f}x | {r['work']['lm_eval']['gflops']:.0f} | "
                     f"{r['work']['fast']['gflops']:.0f} | {r['work_ratio']:.2f}x | {'yes' if r['same_acc'] else 'NO'} |")
    tot = res["total"]
    slow = [t for t, r in res["tasks"].items() if r["speedup_cpu"] < b["goals"]["per_task"]]
    lines += ["", f"Total CPU: lm-eval {tot['lm_eval_cpu_s']:.1f} s, fast {tot['fast_cpu_s']:.1f} s: "
              f"**{res['overall_speedup']:.2f}x** (wall {res['overall_speedup_wall']:.2f}x). Goals (issue 16): "
              f"{b['goals']['overall']:g}x overall: {'met' if res['overall_speedup'] >= b['goals']['overall'] else 'NOT met'}; "
              f"{b['goals']['per_task']:g}x on every task: "
              f"{'met' if not slow else 'NOT met on ' + ', '.join(slow)}. Work: lm-eval {tot['lm_eval_gflops']:.0f} "
              f"GFLOP, fast {tot['fast_gflops']:.0f} GFLOP: ratio {res['overall_work_ratio']:.2f}x.",
              f"Command: `.venv/bin/python benchmarks/{b['command']}`; git {res['provenance']['git_commit']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
