"""Table 2-style comparison tables (methods × seven tasks, mean ± 95 % CI over seeds).

Input is a list of runs, each ``{"method": str, "seed": int, "results": <evaluate() output>}``.
Metric per task follows LLM-Pruner's reporting (the convention RankAdaptor inherits): ``acc`` for
BoolQ, PIQA, WinoGrande and ARC-e, ``acc_norm`` for HellaSwag, ARC-c and OpenBookQA.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

from rankadaptor.metrics import TASK_LABEL, TASKS, task_score  # noqa: F401  (task_score re-exported)
from rankadaptor.stats import mean_ci, paired_difference

TASK_ORDER = TASKS


def run_scores(results: Mapping) -> dict[str, float]:
    """Per-task reported score plus ``avg`` (mean over the tasks present) and ``ppl`` if present."""
    tasks = results.get("tasks", {})
    scores = {t: task_score(tasks[t], t) for t in TASK_ORDER if t in tasks}
    if scores:
        scores["avg"] = sum(scores.values()) / len(scores)
    ppl = results.get("perplexity")
    if ppl is not None:  # heldout_perplexity's dict, or a bare number in older results files
        scores["ppl"] = float(ppl["perplexity"] if isinstance(ppl, dict) else ppl)
    return scores


def summarise(runs: Iterable[Mapping]) -> dict[str, dict[str, dict]]:
    """method -> column -> {mean, ci_low, ci_high, n, values}."""
    by_method: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for col, value in run_scores(run["results"]).items():
            by_method[run["method"]][col].append(value)
    return {
        method: {col: {**mean_ci(vals).to_dict(), "values": vals} for col, vals in cols.items()}
        for method, cols in by_method.items()
    }


def compare_to(runs: Iterable[Mapping], baseline: str) -> dict[str, dict]:
    """Paired (by seed) difference of each method's average against ``baseline``."""
    avg: dict[str, dict[int, float]] = defaultdict(dict)
    for run in runs:
        scores = run_scores(run["results"])
        if "avg" in scores:
            avg[run["method"]][run["seed"]] = scores["avg"]
    out = {}
    for method, per_seed in avg.items():
        if method == baseline or baseline not in avg:
            continue
        seeds = sorted(set(per_seed) & set(avg[baseline]))
        if seeds:
            out[method] = paired_difference(
                [per_seed[s] for s in seeds], [avg[baseline][s] for s in seeds]
            )
    return out


def markdown_table(summary: Mapping[str, Mapping[str, Mapping]], methods: Iterable[str] | None = None) -> str:
    """Accuracies in percent, mean ± half-width of the 95 % t-interval (n seeds in the last column)."""
    methods = list(methods or summary)
    tasks = [t for t in TASK_ORDER if any(t in summary[m] for m in methods)]
    has_ppl = any("ppl" in summary[m] for m in methods)
    header = ["Method"] + [TASK_LABEL[t] for t in tasks] + ["Avg"] + (["PPL"] if has_ppl else []) + ["seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in methods:
        cols = summary[m]
        cells = [m] + [_fmt(cols.get(t), 100) for t in tasks] + [_fmt(cols.get("avg"), 100)]
        if has_ppl:
            cells.append(_fmt(cols.get("ppl"), 1))
        n = max((c["n"] for c in cols.values()), default=0)
        lines.append("| " + " | ".join(cells + [str(n)]) + " |")
    return "\n".join(lines)


def _fmt(cell: Mapping | None, scale: float) -> str:
    if not cell:
        return "–"
    mean, lo, hi = cell["mean"], cell["ci_low"], cell["ci_high"]
    if cell["n"] < 2 or lo != lo:  # NaN interval: one seed
        return f"{mean * scale:.2f}"
    return f"{mean * scale:.2f} ± {(hi - lo) / 2 * scale:.2f}"
