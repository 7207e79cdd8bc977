"""The results JSON of an evaluation run, its per-document block, and its plain-text table.

Per-document correctness is kept in every task's ``docs`` block so that two evaluations can be
compared paired, document by document, after the fact (``rankadaptor compare``)::

    "docs": {"ids": [[0, 500]],          # half-open ranges of document indices in the split's order
             "sha256": "...",            # of the documents' JSON: the same ids of the same data
             "acc": "0110...",           # one character per document, in id order
             "acc_norm": "0100..." | null}

One character per document and metric keeps a full-split result (about 20,000 documents) near 40 kB.
"""

from __future__ import annotations

import hashlib
import json
import time

from rankadaptor.errors import RankAdaptorError
from rankadaptor.metrics import acc_average, paper_average, seven
from rankadaptor.provenance import provenance

WRITER = "`rankadaptor eval MODEL [--adapter DIR] --out FILE.json` (or benchmarks/eval_baseline.py)"


def docs_sha256(docs: list[dict]) -> str:
    """Fingerprint of a task's documents (their raw fields, key order ignored)."""
    return hashlib.sha256(json.dumps(docs, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def doc_block(docs: list[dict], per_doc: list[dict[str, float]], has_acc_norm: bool) -> dict:
    """The ``docs`` block of one task (module docstring) for the first ``len(docs)`` documents."""
    def bits(metric: str) -> str:
        return "".join("1" if d[metric] else "0" for d in per_doc)

    return {"ids": [[0, len(per_doc)]], "sha256": docs_sha256(docs), "acc": bits("acc"),
            "acc_norm": bits("acc_norm") if has_acc_norm else None}


def doc_ids(block: dict) -> list[int]:
    return [i for start, stop in block["ids"] for i in range(start, stop)]


def per_document(results: dict, task: str, metric: str, name: str = "results") -> list[int]:
    """0/1 correctness of every document of ``task`` under ``metric``; a clear error when absent."""
    block = results.get("tasks", {}).get(task, {}).get("docs")
    if not isinstance(block, dict) or not isinstance(block.get("acc"), str):
        raise RankAdaptorError(f"{name} has no per-document results for {task}; per-document data is written by "
                               f"{WRITER} since issue 16: evaluate again with it")
    bits = block.get(metric) if block.get(metric) is not None else block["acc"]
    return [int(c) for c in bits]


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
    """Per-task acc / acc_norm (percent, ± stderr), n, docs/s, tokens/s, then the average rows."""
    head = ["task", "n", "acc", "±", "acc_norm", "±", "docs/s", "tok/s"]
    rows = []
    for name, r in results["tasks"].items():
        rows.append([name, str(r["n"]), _fmt(r["acc"]), _fmt(r["acc_stderr"]), _fmt(r["acc_norm"]),
                     _fmt(r["acc_norm_stderr"]), _fmt(r.get("docs_per_s"), False), _fmt(r.get("tokens_per_s"), False)])
    # averages recomputed from the task rows with the one definition of each (rankadaptor.metrics)
    tasks = seven(results["tasks"])
    norms = [r["acc_norm"] for r in tasks.values() if r.get("acc_norm") is not None]
    rows.append(["average (LLM-Pruner metric per task)", "", _fmt(paper_average(tasks)), "", "", "", "", ""])
    rows.append(["average acc / acc_norm", "", _fmt(acc_average(tasks)), "",
                 _fmt(sum(norms) / len(norms) if norms else None), "", "", ""])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [head, *rows])
