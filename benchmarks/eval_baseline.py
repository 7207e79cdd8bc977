"""Baseline row: the dense default model (SmolLM2-135M) zero-shot on the seven tasks.

Usage: .venv/bin/python benchmarks/eval_baseline.py [--limit N] [--tasks LIST] [--backend fast]
Writes benchmarks/results/eval_baseline.json and .md (``--name`` changes the file stem).
``--limit N`` evaluates the first N documents of each task's lm-eval split (stored order);
without it the full splits are evaluated (about 20,500 documents: hours on one core).

Resumable per task: every finished task is kept in ``benchmarks/results/<name>.tasks/<task>.json``
(committed, so another session or machine resumes too) and a rerun with the same model, size and
backend reuses it (tasks run smallest first). ``--only LIST``
evaluates just those tasks, so the full splits can run as several jobs of under an hour each; the
results file is written by the run that finds every task there. Per-task wall and CPU seconds,
commits and commands are kept.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# Published zero-shot scores (lighteval, their prompt formats; "ARC" is the mean of ARC-e and ARC-c)
# from the SmolLM2-135M and SmolLM2-135M-Instruct model cards, in percent.
PUBLISHED = {
    "source": "HuggingFaceTB/SmolLM2-135M and SmolLM2-135M-Instruct model cards (lighteval, zero-shot)",
    "SmolLM2-135M-Instruct": {"hellaswag": 40.9, "arc_average": 37.3, "piqa": 66.3, "mmlu_cloze": 29.3},
    "SmolLM2-135M": {"hellaswag": 42.1, "arc_average": 43.9, "piqa": 68.4, "winogrande": 51.3, "openbookqa": 34.6,
                     "mmlu_cloze": 31.5},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tasks", default=None, help="comma-separated; default all seven")
    p.add_argument("--only", default=None, help="evaluate only these of --tasks now (the others must be kept)")
    p.add_argument("--limit", type=int, default=None, help="first N docs per task (default: full splits)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("lm_eval", "fast"), default="fast",
                   help="fast (default): lm-eval's requests, shared-prefix scorer; lm_eval: simple_evaluate")
    p.add_argument("--name", default="eval_baseline", help="output file stem under benchmarks/results/")
    p.add_argument("--threads", type=int, default=int(os.environ.get("RANKADAPTOR_THREADS", "1")))
    args = p.parse_args(argv)

    import torch

    from rankadaptor.eval import evaluate
    from rankadaptor.eval.harness import average
    from rankadaptor.eval.results import build_results
    from rankadaptor.eval.tasks import load_docs, resolve_tasks
    from rankadaptor.fileio import read_json, write_json_atomic
    from rankadaptor.models.loading import load_model
    from rankadaptor.provenance import git_commit

    started_at = git_commit()  # the code that runs is the code imported now, not HEAD when a task ends
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    loaded = load_model(args.model)
    tasks = resolve_tasks(args.tasks)
    only = resolve_tasks(args.only) if args.only else tasks
    if set(only) - set(tasks):
        raise SystemExit(f"--only {args.only} names tasks outside --tasks {tasks}")
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    work = RESULTS / f"{args.name}.tasks"
    key = {"model_sha256": loaded.identity.get("sha256"), "limit": args.limit, "backend": args.backend}
    sizes = {t: len(load_docs(t, None, args.limit)) for t in tasks}
    rows, resumed, missing = {}, [], []
    for task in sorted(tasks, key=sizes.get):  # smallest first: most tasks are done early
        part = work / f"{task}.json"
        if part.is_file():
            kept = read_json(part, "partial result")
            if kept.get("key") == key and kept["row"]["n"] == sizes[task]:
                rows[task] = kept["row"]
                resumed.append(task)
                print(f"{task}: kept from {part}", flush=True)
                continue
        if task not in only:
            missing.append(task)
            continue
        ev = evaluate(loaded.model, loaded.tokenizer, tasks=[task], limit=args.limit, batch_size=args.batch_size,
                      seed=args.seed, backend=args.backend)
        rows[task] = {**ev["tasks"][task], "git_commit": started_at, "command": command}
        write_json_atomic(part, {"key": key, "row": rows[task]})
        print(f"{task}: n={rows[task]['n']} acc={rows[task]['acc']:.4f} in {rows[task]['wall_s']:.0f} s", flush=True)
    if missing:
        print(f"not yet evaluated: {', '.join(missing)}; run again with --only {','.join(missing)}", flush=True)
        return 0
    rows = {t: rows[t] for t in tasks}  # the canonical order
    evaluation = {"tasks": rows, "average": average(rows),
                  "settings": {"limit": args.limit, "batch_size": args.batch_size, "seed": args.seed, "num_fewshot": 0,
                               "backend": args.backend, "bootstrap_iters": 0}}
    res = build_results(evaluation, model_identity=loaded.identity, adapter_identity=None, seed=args.seed,
                        wall_s=sum(r["wall_s"] for r in rows.values()))
    res["benchmark"] = {"command": command, "threads": args.threads,
                        "task_commands": {t: r.get("command", command) for t, r in rows.items()},
                        "size": "full splits" if args.limit is None else f"first {args.limit} docs per task",
                        "cpu_s": sum(r.get("cpu_s", 0.0) for r in rows.values()), "resumed_tasks": resumed}
    res["published"] = PUBLISHED
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / f"{args.name}.json", res)
    text = markdown(res)
    (RESULTS / f"{args.name}.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def comparison(res: dict) -> str:
    """Our numbers beside the model cards' (percent), with ARC as the mean of ARC-e and ARC-c."""
    pub = res.get("published") or PUBLISHED
    t = res["tasks"]

    def ours(task, metric):
        return None if task not in t or t[task].get(metric) is None else 100 * t[task][metric]

    def fmt(x):
        return "-" if x is None else f"{x:.1f}"

    arc = [ours("arc_easy", "acc_norm"), ours("arc_challenge", "acc_norm")]
    rows = [("HellaSwag", ours("hellaswag", "acc_norm"), "hellaswag"),
            ("ARC (mean of e, c; acc_norm)", None if None in arc else sum(arc) / 2, "arc_average"),
            ("PIQA (acc_norm)", ours("piqa", "acc_norm"), "piqa"),
            ("WinoGrande", ours("winogrande", "acc"), "winogrande"),
            ("OpenBookQA (acc_norm)", ours("openbookqa", "acc_norm"), "openbookqa")]
    lines = ["| task | ours (lm-eval prompts, Q4_1 dequantised Instruct) | published Instruct | published base |",
             "|---|---|---|---|"]
    for label, value, key in rows:
        lines.append(f"| {label} | {fmt(value)} | {fmt(pub['SmolLM2-135M-Instruct'].get(key))} | "
                     f"{fmt(pub['SmolLM2-135M'].get(key))} |")
    return "\n".join(lines) + f"\n\nPublished: {pub['source']}."


def markdown(res: dict) -> str:
    from rankadaptor.eval.results import format_table

    b = res["benchmark"]
    cpu = f" (CPU {b['cpu_s']:.0f} s)" if b.get("cpu_s") else ""
    return "\n".join([
        f"# eval_baseline: {res['model'].get('spec')} zero-shot (lm-eval 0.4.13 task definitions, offline data)", "",
        f"Size: {b['size']}; backend {res['settings']['backend']}; batch size {res['settings']['batch_size']}; "
        f"seed {res['settings']['seed']}; {b['threads']} torch thread(s); wall {res['wall_s']:.0f} s"
        f"{cpu}; model sha256 {str(res['model'].get('sha256'))[:12]}; "
        f"git {res['provenance']['git_commit']}.", "",
        "acc / acc_norm in percent with lm-eval's standard error (sample std / sqrt(n)); "
        "boolq and winogrande have no acc_norm in lm-eval.", "",
        format_table(res, markdown=True), "", comparison(res), "",
        f"Command: `.venv/bin/python benchmarks/{b['command']}`" + _task_commands(b), ""])


def _task_commands(b: dict) -> str:
    """The jobs that evaluated the tasks, when they were not the assembling command itself."""
    by_command: dict[str, list[str]] = {}
    for task, command in (b.get("task_commands") or {}).items():
        by_command.setdefault(command, []).append(task)
    if set(by_command) <= {b["command"]}:
        return ""
    return "; tasks evaluated by " + "; ".join(f"`{c}` ({', '.join(ts)})" for c, ts in by_command.items())


if __name__ == "__main__":
    raise SystemExit(main())
