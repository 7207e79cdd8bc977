"""How many documents per task a paired comparison needs, from per-document results already made.

No model runs here: the input is one evaluation with per-document data (by default the full-split
dense baseline, ``results/eval_baseline.json``) and, optionally, a second one on the same documents
(``--against``). With one evaluation the discordance between two models is bounded by independent
errors, 2p(1 − p), which over-sizes for two recoveries of one pruned model (they agree on most
documents); with two, the observed discordance is used. Rows: documents per task to detect 1, 2
and 5 points at 80 % power (alpha 0.05, ``rankadaptor.eval.compare.sample_sizes``), beside the
split's size, and the smallest difference the demo's documents per task could detect.

Usage: .venv/bin/python benchmarks/eval_sample_size.py [--results results/eval_baseline.json] [--against B.json]
Writes benchmarks/results/eval_sample_size.json and .md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DETECT_POINTS = (1, 2, 5)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(RESULTS / "eval_baseline.json"),
                   help="an evaluation with per-document data, or eval_baseline's per-task folder (NAME.tasks)")
    p.add_argument("--against", default=None, help="a second evaluation on the same documents (observed discordance)")
    p.add_argument("--demo-docs", type=int, default=10, help="documents per task of the demo's quick preset")
    args = p.parse_args(argv)

    from rankadaptor.eval.compare import sample_sizes
    from rankadaptor.fileio import read_json, write_json_atomic
    from rankadaptor.provenance import provenance
    from rankadaptor.stats import detectable_difference

    first = _load(Path(args.results), read_json)
    against = read_json(args.against, "results file") if args.against else None
    sizes = {str(d): sample_sizes(first, against, detect=d / 100) for d in DETECT_POINTS}
    one = sizes[str(DETECT_POINTS[0])]
    rows = {t: {"metric": r["metric"], "n_split": r["n"], "sd": r["sd"],
                "docs_needed": {str(d): sizes[str(d)]["tasks"][t]["docs_needed"] for d in DETECT_POINTS},
                "detectable_at_demo_docs": detectable_difference(r["sd"], args.demo_docs)}
            for t, r in one["tasks"].items()}
    res = {"benchmark": {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                         "results": Path(args.results).name, "against": args.against and Path(args.against).name,
                         "demo_docs": args.demo_docs, "basis": one["basis"]},
           "tasks": rows,
           "average_docs_per_task": {str(d): sizes[str(d)]["average_docs_per_task"] for d in DETECT_POINTS},
           "provenance": {**provenance(None), "inputs_commit": first.get("provenance", {}).get("git_commit")}}
    write_json_atomic(RESULTS / "eval_sample_size.json", res)
    text = markdown(res)
    (RESULTS / "eval_sample_size.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


def _load(path: Path, read_json) -> dict:
    """A results file, or the tasks finished so far in an eval_baseline per-task folder."""
    if not path.is_dir():
        return read_json(path, "results file")
    parts = {p.stem: read_json(p, "per-task result") for p in sorted(path.glob("*.json"))}
    if not parts:
        raise SystemExit(f"{path} holds no finished task")
    first = next(iter(parts.values()))
    return {"tasks": {t: part["row"] for t, part in parts.items()},
            "provenance": {"git_commit": first["row"].get("git_commit")}}


def markdown(res: dict) -> str:
    b = res["benchmark"]
    head = ["task", "metric", "split size"] + [f"docs for {d} pt" for d in DETECT_POINTS] + \
        [f"detectable at {b['demo_docs']} docs"]
    lines = [f"# eval_sample_size: documents per task a paired comparison needs (80 % power, alpha 0.05)", "",
             f"From {b['results']}" + (f" against {b['against']}" if b["against"] else "") + f"; basis: {b['basis']}. "
             "'docs for d pt': documents per task for a difference of d accuracy points on that task; 'average': "
             "documents per task (the same for each) for d points on the seven-task average. The independent-"
             "errors bound is the worst case: two recoveries of one pruned model disagree on far fewer documents, "
             "and `rankadaptor compare` sizes from their observed discordance instead.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(n, split):
        if n is None:
            return "-"
        return f"{n}" + (" (more than the split)" if split is not None and n > split else "")

    for t, r in res["tasks"].items():
        lines.append("| " + " | ".join([t, r["metric"], str(r["n_split"])] +
                                        [cell(r["docs_needed"][str(d)], r["n_split"]) for d in DETECT_POINTS] +
                                        [f"{100 * r['detectable_at_demo_docs']:.0f} pt"]) + " |")
    avg = res["average_docs_per_task"]
    label = "average" if len(res["tasks"]) == 7 else f"average of these {len(res['tasks'])}"
    lines.append(f"| {label} | LLM-Pruner | | " + " | ".join(cell(avg[str(d)], None) for d in DETECT_POINTS) + " | |")
    lines += ["", f"Command: `.venv/bin/python benchmarks/{b['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
