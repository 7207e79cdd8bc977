"""Baseline row: the dense default model (SmolLM2-135M) zero-shot on the seven tasks.

Usage: .venv/bin/python benchmarks/eval_baseline.py [--limit N] [--tasks LIST]
Writes benchmarks/results/eval_baseline.json and .md (``--name`` changes the file stem).
``--limit N`` evaluates the first N documents of each task's lm-eval split (stored order);
without it the full splits are evaluated.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tasks", default=None, help="comma-separated; default all seven")
    p.add_argument("--limit", type=int, default=None, help="first N docs per task (default: full splits)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("lm_eval", "fast"), default="lm_eval",
                   help="lm_eval: simple_evaluate (default); fast: same requests, shared-context scorer")
    p.add_argument("--name", default="eval_baseline", help="output file stem under benchmarks/results/")
    p.add_argument("--threads", type=int, default=int(os.environ.get("RANKADAPTOR_THREADS", "1")))
    args = p.parse_args(argv)

    import torch

    from rankadaptor.eval import evaluate
    from rankadaptor.eval.results import build_results, format_table
    from rankadaptor.fileio import write_json_atomic
    from rankadaptor.models.loading import load_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    loaded = load_model(args.model)
    start = time.perf_counter()
    ev = evaluate(loaded.model, loaded.tokenizer, tasks=args.tasks, limit=args.limit,
                  batch_size=args.batch_size, seed=args.seed, backend=args.backend)
    res = build_results(ev, model_identity=loaded.identity, adapter_identity=None, seed=args.seed,
                        wall_s=time.perf_counter() - start)
    res["benchmark"] = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "threads": args.threads,
                        "size": "full splits" if args.limit is None else f"first {args.limit} docs per task"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / f"{args.name}.json", res)
    md = [f"# {args.name}: {args.model} zero-shot (lm-eval 0.4.13 task definitions, offline data)", "",
          f"Size: {res['benchmark']['size']}; backend {args.backend}; batch size {args.batch_size}; seed {args.seed}; "
          f"{args.threads} torch thread(s); wall {res['wall_s']:.0f} s; "
          f"model sha256 {str(loaded.identity.get('sha256'))[:12]}; git {res['provenance']['git_commit']}.", "",
          "acc / acc_norm in percent with lm-eval's standard error (sample std / sqrt(n)); "
          "boolq and winogrande have no acc_norm in lm-eval.", "",
          format_table(res, markdown=True), "",
          f"Command: `.venv/bin/python benchmarks/{res['benchmark']['command']}`", ""]
    (RESULTS / f"{args.name}.md").write_text("\n".join(md), encoding="utf-8")
    print(format_table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
