"""The benchmark names and the one definition of every reported accuracy metric (torch-free).

The seven zero-shot tasks are those of LLM-Pruner and of the RankAdaptor paper (its Table 2).
lm-eval defines ``acc`` for all seven and ``acc_norm`` (log-likelihood divided by the choice's
length in characters) for five. Papers in this line report one metric per task: LLM-Pruner's
choice, which RankAdaptor inherits, is ``acc`` for BoolQ, PIQA, WinoGrande and ARC-e and
``acc_norm`` for HellaSwag, ARC-c and OpenBookQA. "Average" in this project always means the
unweighted mean of those seven reported scores (``paper_average``); the plain-``acc`` mean is kept
alongside it (``acc_average``) because other papers report that one.
"""

from __future__ import annotations

from typing import Mapping

TASKS: tuple[str, ...] = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")

# The paper's challenge tasks (RankAdaptor Tables 7-8): selectable by name, never part of the default
# seven and never in an average (the average is over the seven).
CHALLENGE_TASKS: tuple[str, ...] = ("mmlu", "gsm8k")

TASK_LABEL = {"boolq": "BoolQ", "piqa": "PIQA", "hellaswag": "HellaS", "winogrande": "WinoG",
              "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "openbookqa": "OBQA", "mmlu": "MMLU", "gsm8k": "GSM8K"}

# Metrics lm-eval defines per task: boolq and winogrande have acc only (for winogrande a
# length-normalised score would divide by the *context* length, which is why lm-eval omits it).
ACC_NORM_TASKS = frozenset({"piqa", "hellaswag", "arc_easy", "arc_challenge", "openbookqa"})

# LLM-Pruner's reporting convention (RankAdaptor's Table 2 follows it).
REPORTED_METRIC = {"boolq": "acc", "piqa": "acc", "hellaswag": "acc_norm", "winogrande": "acc",
                   "arc_easy": "acc", "arc_challenge": "acc_norm", "openbookqa": "acc_norm"}


def reported_metric(task: str) -> str:
    """The metric a paper table shows for ``task`` (``acc`` for tasks outside the seven)."""
    return REPORTED_METRIC.get(task, "acc")


def task_score(task_result: Mapping, task: str) -> float:
    """The reported score of one task's result block (``{"acc": .., "acc_norm": ..}``)."""
    value = task_result.get(reported_metric(task))
    return float(task_result["acc"] if value is None else value)


def seven(task_results: Mapping[str, Mapping]) -> dict[str, Mapping]:
    """The results of the seven tasks only (averages never include a challenge task)."""
    return {t: r for t, r in task_results.items() if t in TASKS}


def paper_average(task_results: Mapping[str, Mapping]) -> float | None:
    """Unweighted mean of the reported score over the seven tasks present: THE "average" of this project."""
    scores = [task_score(r, t) for t, r in seven(task_results).items()]
    return sum(scores) / len(scores) if scores else None


def acc_average(task_results: Mapping[str, Mapping]) -> float | None:
    """Unweighted mean of plain ``acc`` over the seven tasks present (reported beside ``paper_average``)."""
    accs = [float(r["acc"]) for r in seven(task_results).values() if r.get("acc") is not None]
    return sum(accs) / len(accs) if accs else None
