"""Paired comparison of two evaluations made on the same documents (any number of seeds each).

``compare_results(a, b)`` takes two sides, each one results dict of ``rankadaptor eval`` or a list
of them (the seeds of one method), and returns per task and for both averages (THE average,
``metrics.paper_average``, and plain acc) the difference A − B with a 95 % interval, a verdict,
and the power of the comparison; held-out perplexity is compared the same way over its windows.

Method: a paired bootstrap over documents × seeds (seeded, so the same inputs give the same
interval). One replicate draws, per task, n documents with replacement (the same draw for A and
B: this is the pairing) and, per side, its seeds with replacement (the same seed draw for every
task, since a seed is one model); the replicate difference is A's mean over its drawn seeds of the
accuracy on the drawn documents minus B's. Each task is resampled on its own (stratified), so an
average's replicate is the mean of the task replicates. The interval is the 2.5-97.5 percentile
range of 2,000 replicates. We chose the bootstrap over McNemar's test because one scheme covers
every row: McNemar is exact for one seed per side and one task, but gives neither an interval
for an average that mixes acc and acc_norm over tasks of different sizes nor a way to fold in
seeds. With one seed per side the interval is over documents only.

Power: per task, d_i is A's mean correctness on document i over its seeds minus B's, and
sd = sqrt(mean d_i²) (for one seed each: the square root of the discordance rate, the fraction of
documents exactly one of the two gets right, i.e. McNemar's variance under no difference). The
smallest difference these documents detect at 80 % power and alpha 0.05 is
(z_0.975 + z_0.8) · sd / sqrt(n); ``docs_needed`` inverts it for the difference to detect.
"""

from __future__ import annotations

import math
import zlib
from typing import Mapping, Sequence

import numpy as np

from rankadaptor.errors import RankAdaptorError
from rankadaptor.eval.results import WRITER, doc_ids, per_document
from rankadaptor.metrics import ACC_NORM_TASKS, TASK_LABEL, TASKS, reported_metric
from rankadaptor.stats import Z_95, Z_POWER_80, detectable_difference, observations_needed, verdict

N_BOOT = 2000
DEFAULT_DETECT = 0.01  # one accuracy point


def _as_side(side, names: Sequence[str] | None, letter: str) -> tuple[list[dict], list[str]]:
    results = [side] if isinstance(side, Mapping) else list(side)
    if not results:
        raise RankAdaptorError(f"side {letter} of the comparison has no results")
    names = list(names) if names is not None else [f"{letter}[{i}]" for i in range(len(results))]
    for res, name in zip(results, names, strict=True):
        if not isinstance(res, Mapping) or not isinstance(res.get("tasks"), Mapping) or not res["tasks"]:
            raise RankAdaptorError(f"{name} is not an evaluation result (no 'tasks'); it is written by {WRITER}")
    return results, names


def _model_key(res: Mapping) -> str | None:
    model = res.get("model") or {}
    return model.get("sha256") or model.get("path")


def check_comparable(a: list[dict], b: list[dict], names_a: list[str], names_b: list[str]) -> list[str]:
    """The tasks both sides share; RankAdaptorError naming the first mismatch otherwise."""
    everyone = list(zip([*a, *b], [*names_a, *names_b]))
    first, first_name = everyone[0]
    tasks = list(first["tasks"])
    for res, name in everyone:
        if set(res["tasks"]) != set(tasks):  # the same tasks, in any order
            raise RankAdaptorError(f"{first_name} evaluated tasks {tasks} but {name} evaluated {list(res['tasks'])}; "
                                   "compare results made on the same tasks (`--tasks`)")
        for task in tasks:
            per_document(res, task, "acc", name)  # raises if the per-document data is missing
    for task in tasks:
        ref = first["tasks"][task]["docs"]
        for res, name in everyone[1:]:
            block = res["tasks"][task]["docs"]
            if block["ids"] != ref["ids"]:
                raise RankAdaptorError(
                    f"{task}: {first_name} scored documents {_ranges(ref)} but {name} scored {_ranges(block)}; "
                    "compare results made on the same documents (the same --limit)")
            if block["sha256"] != ref["sha256"]:
                raise RankAdaptorError(f"{task}: {first_name} and {name} have the same document ids but different "
                                       "document data (benchmark files differ); evaluate both on the same data")
    for side, names, letter in ((a, names_a, "A"), (b, names_b, "B")):
        keys = {_model_key(r) for r in side}
        if len(keys) > 1:
            raise RankAdaptorError(
                f"side {letter} mixes models: {', '.join(names)} were made on different models "
                f"({', '.join(sorted(map(str, keys)))}); one side is one model, its seeds may differ only in adapter")
    return tasks


def _ranges(block: Mapping) -> str:
    return ", ".join(f"{start}-{stop - 1}" for start, stop in block["ids"]) + f" ({len(doc_ids(block))} documents)"


def _ppl_windows(a: list[dict], b: list[dict], names: list[str]) -> tuple[np.ndarray, ...] | None:
    """Per-window NLL sums and token counts (seeds x windows) of both sides, when all have them."""
    blocks = [r.get("perplexity") for r in (*a, *b)]
    if not all(isinstance(p, Mapping) and isinstance(p.get("windows"), Mapping) for p in blocks):
        return None
    ref = blocks[0]
    for p, name in zip(blocks[1:], names[1:]):
        for key in ("source", "seq_len", "n_tokens"):
            if p.get(key) != ref.get(key):
                raise RankAdaptorError(f"perplexity of {names[0]} and {name} differ in {key} ({ref.get(key)} vs "
                                       f"{p.get(key)}); evaluate both with the same --ppl settings")
        if p["windows"]["tokens"] != ref["windows"]["tokens"]:
            raise RankAdaptorError(f"perplexity windows of {names[0]} and {name} hold different token counts "
                                   "(different tokenizers?); perplexities are paired only over the same windows")

    def arrays(side):
        return (np.array([p["perplexity"]["windows"]["nll"] for p in side], dtype=float),
                np.array([p["perplexity"]["windows"]["tokens"] for p in side], dtype=float))

    return (*arrays(a), *arrays(b))


# --------------------------------------------------------------------------- the bootstrap


def _resampled_sums(rng: np.random.Generator, mats: list[np.ndarray], n_boot: int) -> list[np.ndarray]:
    """For each (seeds x n) matrix, its row sums over ``n_boot`` draws of n columns with replacement
    (the same column draws for every matrix: the pairing). Returns (seeds x n_boot) arrays."""
    n = mats[0].shape[1]
    out = [np.empty((m.shape[0], n_boot)) for m in mats]
    chunk = max(1, 4_000_000 // max(n, 1))
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        for m, o in zip(mats, out):
            o[:, start:start + len(idx)] = m[:, idx].sum(-1)
    return out


def _seed_mean(per_seed: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Replicate r's mean over the seeds ``draws[r]`` of ``per_seed[:, r]``."""
    return np.take_along_axis(per_seed.T, draws, axis=1).mean(1)


def _row(diff: float, reps: np.ndarray, n: int, a: float, b: float) -> dict:
    low, high = (float(x) for x in np.percentile(reps, [2.5, 97.5]))
    spread = float(reps.max() - reps.min())
    return {"n": n, "a": a, "b": b, "diff": diff, "ci_low": low, "ci_high": high, "se": float(reps.std(ddof=1)),
            "verdict": verdict(low, high, n, spread)}


def _accuracy_row(xa: np.ndarray, xb: np.ndarray, sums: list[np.ndarray], draws, detect: float):
    n = xa.shape[1]
    reps = _seed_mean(sums[0] / n, draws[0]) - _seed_mean(sums[1] / n, draws[1])
    a, b = float(xa.mean()), float(xb.mean())
    row = _row(a - b, reps, n, a, b)
    d = xa.mean(0) - xb.mean(0)  # per document, over seeds
    sd = float(np.sqrt(np.mean(d ** 2)))
    row.update(discordant=int(np.count_nonzero(d)), sd=sd,
               mde=detectable_difference(sd, n) if sd > 0 else None,
               docs_needed=observations_needed(sd, detect) if sd > 0 else None)
    return row, reps


def compare_results(a, b, *, names_a: Sequence[str] | None = None, names_b: Sequence[str] | None = None,
                    detect: float = DEFAULT_DETECT, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """A − B per task, on both averages and on held-out perplexity (module docstring for the method).

    ``a`` and ``b``: one ``rankadaptor eval`` results dict each, or a list of them (seeds).
    ``detect``: the accuracy difference (a fraction; 0.01 = one point) ``docs_needed`` is sized for.
    """
    if not 0 < detect < 1:
        raise RankAdaptorError(f"the difference to detect must be a fraction in (0, 1), got {detect!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise RankAdaptorError(f"n_boot must be an integer >= 100, got {n_boot!r}")
    a, names_a = _as_side(a, names_a, "A")
    b, names_b = _as_side(b, names_b, "B")
    tasks = check_comparable(a, b, names_a, names_b)
    rng = np.random.default_rng(seed)
    draws = (rng.integers(0, len(a), size=(n_boot, len(a))), rng.integers(0, len(b), size=(n_boot, len(b))))
    rows: dict[str, dict] = {}
    reps: dict[str, dict[str, np.ndarray]] = {}
    for task in tasks:
        metrics = ["acc", "acc_norm"] if task in ACC_NORM_TASKS else ["acc"]
        mats = {m: (np.array([per_document(r, task, m) for r in a], dtype=float),
                    np.array([per_document(r, task, m) for r in b], dtype=float)) for m in metrics}
        # a generator per task (seeded by its name): adding a task leaves the others' intervals alone
        task_rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
        sums = _resampled_sums(task_rng, [x for m in metrics for x in mats[m]], n_boot)
        rows[task], reps[task] = {"metric": reported_metric(task)}, {}
        for i, m in enumerate(metrics):
            rows[task][m], reps[task][m] = _accuracy_row(*mats[m], sums[2 * i:2 * i + 2], draws, detect)
    averaged = [t for t in tasks if t in TASKS]  # a challenge task (MMLU, GSM8K) is never averaged in
    out = {"tasks": rows,
           "average": _average(rows, reps, averaged, lambda t: rows[t]["metric"], detect),
           "acc_average": _average(rows, reps, averaged, lambda t: "acc", detect),
           "perplexity": None,
           "a": {"names": names_a, "seeds": len(a), "model": _model_key(a[0])},
           "b": {"names": names_b, "seeds": len(b), "model": _model_key(b[0])},
           "settings": {"method": "paired bootstrap over documents x seeds (stratified by task)", "n_boot": n_boot,
                        "seed": seed, "confidence": 0.95, "alpha": 0.05, "power": 0.8, "detect": detect}}
    windows = _ppl_windows(a, b, [*names_a, *names_b])
    if windows is not None:
        out["perplexity"] = _perplexity_row(windows, draws, np.random.default_rng([seed, zlib.crc32(b"ppl")]), n_boot)
    return out


def _average(rows, reps, tasks, metric_of, detect: float) -> dict:
    """The mean of the tasks' differences; its replicates are the mean of the task replicates."""
    if not tasks:
        return None
    t = len(tasks)
    cells = [rows[task][metric_of(task)] for task in tasks]
    rep = np.mean([reps[task][metric_of(task)] for task in tasks], axis=0)
    a, b = sum(c["a"] for c in cells) / t, sum(c["b"] for c in cells) / t
    row = _row(a - b, rep, min(c["n"] for c in cells), a, b)
    var = sum(c["sd"] ** 2 / c["n"] for c in cells) / t ** 2  # variance of the mean of t independent tasks
    row.update(discordant=sum(c["discordant"] for c in cells), n_docs=sum(c["n"] for c in cells),
               mde=(Z_95 + Z_POWER_80) * math.sqrt(var) if var > 0 else None,
               # documents per task (the same number for each) that bring the average's detectable
               # difference down to ``detect``: n = (z + z)^2 * sum(sd_t^2) / (t^2 * detect^2)
               docs_needed=max(3, math.ceil((Z_95 + Z_POWER_80) ** 2 * sum(c["sd"] ** 2 for c in cells)
                                            / (t ** 2 * detect ** 2))) if var > 0 else None,
               metrics={task: metric_of(task) for task in tasks})
    return row


def _perplexity_row(windows, draws, rng, n_boot: int) -> dict:
    nll_a, tok_a, nll_b, tok_b = windows
    sa_nll, sa_tok, sb_nll, sb_tok = _resampled_sums(rng, [nll_a, tok_a, nll_b, tok_b], n_boot)
    reps = _seed_mean(np.exp(sa_nll / sa_tok), draws[0]) - _seed_mean(np.exp(sb_nll / sb_tok), draws[1])
    a = float(np.mean(np.exp(nll_a.sum(1) / tok_a.sum(1))))
    b = float(np.mean(np.exp(nll_b.sum(1) / tok_b.sum(1))))
    row = _row(a - b, reps, nll_a.shape[1], a, b)
    row["mde"] = (Z_95 + Z_POWER_80) * row["se"] if row["se"] > 0 else None
    return row


# --------------------------------------------------------------------------- sample sizes


def sample_sizes(first, against=None, detect: float = DEFAULT_DETECT) -> dict:
    """Documents per task a paired comparison needs to detect ``detect`` (80 % power, alpha 0.05).

    With ``against`` (a second evaluation on the same documents), from the observed discordance;
    with one evaluation only, from the independent-errors bound: two models of accuracy p that err
    independently disagree on 2p(1 − p) of the documents (models that share most of their weights,
    like two recoveries of one pruned model, disagree far less, so this bound over-sizes).
    """
    if against is not None:
        cmp = compare_results(first, against, detect=detect, n_boot=100)
        rows = {t: {"metric": r["metric"], "n": r[r["metric"]]["n"], "sd": r[r["metric"]]["sd"],
                    "docs_needed": r[r["metric"]]["docs_needed"]} for t, r in cmp["tasks"].items()}
        return {"basis": "observed discordance", "detect": detect, "tasks": rows,
                "average_docs_per_task": cmp["average"]["docs_needed"] if cmp["average"] else None}
    results, names = _as_side(first, None, "A")
    rows = {}
    for task in results[0]["tasks"]:
        metric = reported_metric(task)
        x = np.array([per_document(r, task, metric, n) for r, n in zip(results, names)], dtype=float)
        p = float(x.mean())
        sd = math.sqrt(2 * p * (1 - p))
        rows[task] = {"metric": metric, "n": x.shape[1], "sd": sd,
                      "docs_needed": observations_needed(sd, detect) if sd > 0 else None}
    sds = [r["sd"] for t, r in rows.items() if t in TASKS]
    t = max(len(sds), 1)
    avg = max(3, math.ceil((Z_95 + Z_POWER_80) ** 2 * sum(s ** 2 for s in sds) / (t ** 2 * detect ** 2)))
    return {"basis": "independent-errors bound 2p(1-p)", "detect": detect, "tasks": rows,
            "average_docs_per_task": avg if any(sds) else None}


def choose_documents(pilots: Mapping[str, tuple], detect: float = DEFAULT_DETECT, most: int = 1000) -> dict:
    """Documents per task for the next run, chosen from a pilot: ``pilots`` maps a comparison's name to
    its two evaluations on the same documents (``(results A, results B)``, each any number of seeds).

    Each comparison's need is the documents per task its seven-task average needs to detect ``detect``
    (80 % power, from its observed discordance: ``sample_sizes``); the choice is the median need
    (half the comparisons resolved at ``detect``), capped at ``most``. A comparison whose documents
    never disagreed gives no estimate and is listed as such.
    """
    if not pilots:
        raise RankAdaptorError("choose_documents needs at least one pilot comparison (two evaluations on the same "
                               "documents)")
    needs = {name: sample_sizes(a, b, detect=detect)["average_docs_per_task"] for name, (a, b) in pilots.items()}
    known = sorted(v for v in needs.values() if v)
    median = known[len(known) // 2] if known else None
    chosen = most if median is None else min(int(median), int(most))
    pilot = _as_side(next(iter(pilots.values()))[0], None, "A")[0][0]
    return {"documents": chosen, "median_need": median, "needs": needs, "detect": detect, "cap": int(most),
            "pilot_documents": max(int(t["n"]) for t in pilot["tasks"].values()),
            "basis": "median over the comparisons of the documents per task the seven-task average needs, "
                     "from the pilot's observed discordance (80 % power, alpha 0.05)"}


# --------------------------------------------------------------------------- tables


def _pts(x, scale: float = 100.0, sign: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x * scale:+.2f}" if sign else f"{x * scale:.2f}"


def table_rows(cmp: dict) -> list[list[str]]:
    """Header + one row per task, both averages and perplexity (accuracies in points)."""
    detect = cmp["settings"]["detect"]
    head = ["row", "metric", "n", "A", "B", "A - B", "95 % CI", "verdict", "discordant", "detectable (80 %)",
            f"docs for {detect * 100:g} pt"]
    rows = [head]

    def line(label, metric, r, scale=100.0, unit=""):
        ci = f"{r['ci_low'] * scale:+.2f} .. {r['ci_high'] * scale:+.2f}"
        rows.append([label, metric, str(r["n"]), _pts(r["a"], scale), _pts(r["b"], scale),
                     _pts(r["diff"], scale, True), ci, r["verdict"], str(r.get("discordant", "-")),
                     "-" if r.get("mde") is None else f"{r['mde'] * scale:.2f}{unit}",
                     str(r.get("docs_needed") or "-")])

    for task, r in cmp["tasks"].items():
        line(TASK_LABEL.get(task, task), r["metric"], r[r["metric"]])
    if cmp["average"] is not None:
        line("average", "LLM-Pruner", cmp["average"])
        line("average", "acc", cmp["acc_average"])
    if cmp.get("perplexity"):
        line("perplexity", "windows", cmp["perplexity"], scale=1.0)
    return rows


def comparison_text(cmp: dict, markdown: bool = False) -> str:
    """The comparison as a table (markdown or aligned text) with a line saying how it was made."""
    rows = table_rows(cmp)
    s = cmp["settings"]
    note = (f"A = {', '.join(cmp['a']['names'])} ({cmp['a']['seeds']} seed(s)); B = {', '.join(cmp['b']['names'])} "
            f"({cmp['b']['seeds']} seed(s)). Accuracy in points; {s['method']}, {s['n_boot']} replicates, seed "
            f"{s['seed']}; 'average' is the mean over tasks of LLM-Pruner's metric per task; 'detectable' is "
            f"the smallest difference these documents detect at 80 % power (alpha 0.05); the last column the "
            f"documents per task that would detect {s['detect'] * 100:g} point(s) (for an average: per task). "
            "'no test': fewer than 3 documents or no spread.")
    if markdown:
        body = ["| " + " | ".join(r) + " |" for r in rows]
        body.insert(1, "|" + "---|" * len(rows[0]))
        return "\n".join(body) + "\n\n" + note
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    body = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join(body) + "\n\n" + note
