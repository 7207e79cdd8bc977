"""The results JSON of an evaluation run and its plain-text table."""

from __future__ import annotations

import time

from rankadaptor.provenance import provenance


def build_results(evaluation: dict, *, model_identity: dict | None, adapter_identity: dict | None, seed: int,
                  wall_s: float, perplexity: dict | None = None) -> dict:
    """Wrap ``evaluate``'s output with identities, provenance and timing (one JSON-ready dict)."""
    return {
        "kind": "rankadaptor.eval",
        "model": model_identity,
        "adapter": adapter_identity,
        "tasks": evaluation["tasks"],
        "average": evaluation["average"],
        "settings": evaluation.get("settings", {}),
        "perplexity": perplexity,
        "wall_s": wall_s,
        "finished_at_unix": time.time(),
        "provenance": provenance(seed),
    }


def _fmt(x, pct: bool = True) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2f}" if pct else f"{x:.1f}"


def format_table(results: dict, markdown: bool = False) -> str:
    """Per-task acc / acc_norm (percent, ± stderr), n, docs/s, tokens/s, then the average row."""
    head = ["task", "n", "acc", "±", "acc_norm", "±", "docs/s", "tok/s"]
    rows = []
    for name, r in results["tasks"].items():
        rows.append([name, str(r["n"]), _fmt(r["acc"]), _fmt(r["acc_stderr"]), _fmt(r["acc_norm"]),
                     _fmt(r["acc_norm_stderr"]), _fmt(r.get("docs_per_s"), False), _fmt(r.get("tokens_per_s"), False)])
    avg = results["average"]
    rows.append(["average", "", _fmt(avg["acc"]), "", _fmt(avg["acc_norm"]), "", "", ""])
    rows.append(["avg (acc_norm else acc)", "", _fmt(avg["paper_mix"]), "", "", "", "", ""])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [head, *rows])
