"""The demo's report: Table 2-style markdown + JSON, and plots, from the finished units."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from rankadaptor.fileio import write_json_atomic
from rankadaptor.report.search_plots import _plt, plot_allocation
from rankadaptor.report.tables import compare_to, markdown_table, run_scores, summarise
from rankadaptor.stats import verdict_of

ROW_LABEL = {"uniform": "LoRA r=8 (uniform)", "lora-star": "LoRA* (4/6/10/12)", "rankadaptor": "RankAdaptor",
             "para": "PARA (high rank → r=8 budget)", "prunedlora": "PrunedLoRA (high rank → r=8 budget)",
             "adalora": "AdaLoRA (r=8 budget)", "dense": "dense (unpruned)", "pruned-no-recovery": "pruned, no recovery"}
UNRECOVERED = ("dense", "pruned-no-recovery")
METHOD_ROWS = ("uniform", "lora-star", "rankadaptor", "para", "prunedlora", "adalora")


def collect_runs(done: dict[str, dict]) -> list[dict]:
    """Units named ``<method>-s<seed>`` become runs; the dense and unrecovered models are seed 0."""
    runs = []
    for key, unit in done.items():
        if "results" not in unit:
            continue
        if key in ("dense", "pruned-no-recovery"):
            method, seed = key, 0
        else:
            method, _, s = key.rpartition("-s")
            seed = int(s)
        runs.append({"method": method, "seed": seed, "results": unit["results"],
                     "trainable_params": unit.get("trainable_params")})
    return runs


def comparison_markdown(summary: dict, vs_uniform: dict) -> str:
    """The Table 2-style table and every method's paired verdict against uniform r=8.

    Takes ``summary`` and ``vs_uniform`` as ``report.json`` stores them, so the README's copy of the
    table (``benchmarks/readme_tables.py``) is rebuilt from the results file by the same code.
    """
    order = [m for m in ("dense", "pruned-no-recovery", *METHOD_ROWS) if m in summary]
    order += sorted(m for m in summary if m not in order)
    lines = [markdown_table({ROW_LABEL.get(m, m): summary[m] for m in order}), "",
             "Average accuracy vs uniform r=8, paired by seed:", ""]
    for method in [m for m in order if m in vs_uniform and m not in UNRECOVERED]:
        d = vs_uniform[method]
        verdict = {"significant": "significant", "not significant": "NOT significant (within noise)",
                   "no test": "no test (fewer than 3 seeds or the same difference on each)"}[verdict_of(d)]
        lines.append(f"* {ROW_LABEL.get(method, method)}: {d['mean'] * 100:+.2f} points "
                     f"(95 % CI {d['ci_low'] * 100:+.2f} .. {d['ci_high'] * 100:+.2f}) — {verdict}")
    return "\n".join(lines)


def write_report(out: Path, cfg, done: dict[str, dict], provenance: dict[str, Any],
                 session: dict[str, Any] | None = None) -> dict:
    """report.md / report.json / plots in ``out``; ``session`` describes the run that finished it
    (workers, threads, wall seconds, units resumed from an earlier run)."""
    runs = collect_runs(done)
    summary = summarise(runs)
    diffs = compare_to(runs, "uniform")
    lines = [f"# rankadaptor demo ({cfg.name} preset)", "",
             f"SmolLM2-135M pruned {cfg.prune_ratio:.0%} by llm-pruner (element1), recovered for {cfg.steps} steps "
             f"of {cfg.batch_size}×{cfg.seq_len} tokens; {cfg.eval_limit or 'all'} documents per task; seeds "
             f"{list(cfg.seeds)}. Accuracy in %, mean ± half-width of the 95 % t-interval over seeds; PPL on "
             f"{cfg.ppl_tokens} held-out tokens.", "", comparison_markdown(summary, diffs)]
    search = done.get("search", {})
    if search:
        lines += ["", "## Search", "", f"Best plan (per-layer ranks): `{search.get('ranks')}`", ""]
        lines += [f"* {m}" for m in search.get("messages", [])]
    timings = {k: {"wall_s": u.get("wall_s"), "cpu_s": u.get("cpu_s")} for k, u in done.items()}
    lines += ["", "## Time", "", _time_line(session, timings)]
    lines += ["", f"Date {provenance['date']}, commit {provenance['git_commit']}, "
              f"{provenance['hardware']['processor']} ({provenance['hardware']['cpu_count']} CPUs), "
              f"torch {provenance['versions']['torch']}, transformers {provenance['versions']['transformers']}."]
    plots = _plots(out, runs, search)
    md = "\n".join(lines) + "\n"
    (out / "report.md").write_text(md)
    result = {"preset": asdict(cfg), "summary": summary, "vs_uniform": diffs, "search": search,
              "runs": runs, "plots": plots, "timings": timings, "session": session, "provenance": provenance}
    write_json_atomic(out / "report.json", result)
    return {"markdown": md, "report": str(out / "report.md"), **result}


def _plots(out: Path, runs: list[dict], search: dict) -> list[str]:
    paths = []
    if search.get("ranks"):
        p = out / "rank_allocation.png"
        plot_allocation(search["ranks"], p, [8] * len(search["ranks"]))
        paths.append(str(p))
    pts = [(r["trainable_params"], run_scores(r["results"]).get("avg"), r["method"]) for r in runs
           if r.get("trainable_params") and run_scores(r["results"]).get("avg") is not None]
    if pts:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, method in enumerate(sorted({m for _, _, m in pts})):
            xs = [x for x, _, m in pts if m == method]
            ys = [y * 100 for _, y, m in pts if m == method]
            ax.scatter(xs, ys, label=ROW_LABEL.get(method, method), color=f"C{i}")
        ax.set_xlabel("LoRA parameters")
        ax.set_ylabel("seven-task average accuracy (%)")
        ax.legend(fontsize=7)
        ax.set_title("parameters vs accuracy (one point per seed)")
        fig.tight_layout()
        p = out / "params_vs_accuracy.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(str(p))
    history = out / "search" / "report" / "history.png"
    if history.exists():
        paths.append(str(history))
    return paths


def _time_line(session: dict[str, Any] | None, timings: dict[str, dict]) -> str:
    walls = {k: t["wall_s"] for k, t in timings.items() if t.get("wall_s") is not None}
    per_unit = ", ".join(f"{k} {w:.0f}" for k, w in walls.items())
    head = "Units (wall seconds each): " + (per_unit or "none recorded") + "."
    if not session:
        return head
    resumed = len(session.get("resumed_units", []))
    return (f"This session: {session['wall_s'] / 60:.1f} min wall on {session['workers']} worker(s) × "
            f"{session['threads']} thread(s)" + (f", {resumed} unit(s) resumed from an earlier run" if resumed else "")
            + f". {head}")

