"""The demo's report: which way of spending the LoRA budget recovered the pruned model best.

It opens with what the run can resolve: one table of every method at uniform r=8's budget, ordered by
THE held-out perplexity (``eval.perplexity``), each with its paired difference to uniform r=8 and a
95 % interval (``eval.compare.compare_results``: bootstrap over perplexity windows × seeds, and over
documents × seeds for accuracy, with the difference the documents can detect), its training compute,
and a paragraph written from those numbers. Then the Table 2-style accuracy table, refused rows
(a method that ended off its budget is never reported under it), pictures (``report.figures``) and
greedy generations (RankAdaptor's appendix). Everything is computed from the units' JSON, so the
README's copy is rebuilt from ``report.json`` by the same code (``headline_markdown``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from rankadaptor.fileio import write_json_atomic, write_text_atomic
from rankadaptor.report import figures
from rankadaptor.report.tables import markdown_table, run_scores, summarise

ROW_LABEL = {"uniform": "LoRA r=8 (uniform)", "lora-star": "LoRA* shape (4/6/10/12, scaled to the budget)", "eva": "EVA (data-driven ranks + init)",
             "rankadaptor": "RankAdaptor (searched plan, trained)",
             "super": "super-adapter r=32, RankAdaptor cut", "para": "PARA (r=32 → budget)",
             "prunedlora": "PrunedLoRA (r=32 → budget)", "adalora": "AdaLoRA (r=8 budget)",
             "dense": "dense (unpruned)", "pruned-no-recovery": "pruned, no recovery"}
SHORT_LABEL = {"uniform": "uniform r=8", "lora-star": "LoRA*", "eva": "EVA", "rankadaptor": "RankAdaptor plan",
               "super": "super-adapter cut", "para": "PARA", "prunedlora": "PrunedLoRA", "adalora": "AdaLoRA"}
UNRECOVERED = ("dense", "pruned-no-recovery")
METHOD_ROWS = ("uniform", "lora-star", "eva", "rankadaptor", "super", "para", "prunedlora", "adalora")
BASELINE = "uniform"


def _split(key: str) -> tuple[str, int]:
    """Unit key -> (method, seed); units without a seed (dense, prune, search) are seed 0."""
    method, _, s = key.rpartition("-s")
    return (method, int(s)) if method and s.isdigit() else (key, 0)


def collect_runs(done: dict[str, dict]) -> list[dict]:
    """Units named ``<method>-s<seed>`` with results become runs; the dense and unrecovered models are seed 0."""
    runs = []
    for key, unit in done.items():
        if "results" not in unit:
            continue
        method, seed = _split(key)
        runs.append({"method": method, "seed": seed, "results": unit["results"],
                     "trainable_params": unit.get("trainable_params"), "budget": unit.get("budget"),
                     "steps": unit.get("steps"), "wall_s": unit.get("wall_s"), "cpu_s": unit.get("cpu_s")})
    return runs


def refused_units(done: dict[str, dict]) -> dict[str, str]:
    return {key: unit["refused"] for key, unit in done.items() if unit.get("refused")}


def _by_method(runs: list[dict]) -> dict[str, list[dict]]:
    """The runs of each method, in seed order (the order their paired comparisons use)."""
    by_method: dict[str, list[dict]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        by_method.setdefault(r["method"], []).append(r)
    return by_method


SIZE_DETECT = 0.02  # the seven-task average difference a report says how many documents would resolve


def evaluation_size(runs: list[dict]) -> dict | None:
    """From this run's discordance (each recovered method vs uniform), the documents per task that the
    seven-task average needs to detect ``SIZE_DETECT`` (``eval.compare.choose_documents``)."""
    from rankadaptor.eval.compare import choose_documents

    results = {m: [r["results"] for r in mruns] for m, mruns in _by_method(runs).items()}
    base = results.get(BASELINE)
    pilots = {m: (res, base) for m, res in results.items() if base and m not in (*UNRECOVERED, BASELINE)
              and all(x.get("tasks") for x in res + base) and len(res) == len(base)}
    return choose_documents(pilots, detect=SIZE_DETECT, most=10**6) if pilots else None


def headline(runs: list[dict]) -> list[dict]:
    """One row per method: mean perplexity, params, paired differences to uniform r=8, compute."""
    from rankadaptor.eval.compare import compare_results

    by_method = _by_method(runs)
    base = [r["results"] for r in by_method.get(BASELINE, [])]
    rows = []
    for method, mruns in by_method.items():
        ppls = [run_scores(r["results"]).get("ppl") for r in mruns]
        row: dict[str, Any] = {"method": method, "seeds": len(mruns),
                               "ppl": sum(ppls) / len(ppls) if None not in ppls else None,
                               "params": mruns[0]["trainable_params"],
                               "budget": mruns[0]["budget"]["budget"] if mruns[0].get("budget") else None,
                               "steps": mruns[0].get("steps"),
                               "unit_minutes": sum(r["wall_s"] or 0 for r in mruns) / len(mruns) / 60}
        if base and method != BASELINE:
            cmp = compare_results([r["results"] for r in mruns], base, names_a=[f"{method}-s{r['seed']}" for r in mruns],
                                  names_b=[f"{BASELINE}-s{s}" for s in range(len(base))])
            row["vs_uniform_ppl"], row["vs_uniform_avg"] = cmp["perplexity"], cmp["average"]
        rows.append(row)
    return sorted(rows, key=lambda r: (r["ppl"] is None, r["ppl"] or 0.0))


def _interval(d: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    if not d:
        return "—"
    text = f"{d['diff'] * scale:+.{digits}f} [{d['ci_low'] * scale:+.{digits}f}, {d['ci_high'] * scale:+.{digits}f}]"
    return f"{text} {d['verdict']}" if d["verdict"] != "no test" else f"{text} no test"


def headline_markdown(rows: list[dict]) -> str:
    """The headline table, as ``report.json``'s ``headline`` stores it (the README rebuilds it from there)."""
    lines = ["| method | LoRA params (share of budget) | held-out ppl | Δ ppl vs uniform r=8 [95 % CI] | "
             "Δ avg acc vs uniform, points [95 % CI] | detectable acc Δ (80 % power) | steps | min / run |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = "—" if r["params"] is None else (f"{r['params']:,}" + (f" ({r['params'] / r['budget']:.3f})"
                                                                          if r.get("budget") else ""))
        avg = r.get("vs_uniform_avg")
        mde = f"±{avg['mde'] * 100:.0f} pts" if avg and avg.get("mde") else "—"
        ppl = "—" if r["ppl"] is None else f"{r['ppl']:.1f}"
        lines.append(f"| {ROW_LABEL.get(r['method'], r['method'])} | {params} | {ppl} | "
                     f"{_interval(r.get('vs_uniform_ppl'))} | {_interval(avg, 100)} | {mde} | "
                     f"{r['steps'] if r.get('steps') is not None else '—'} | {r['unit_minutes']:.1f} |")
    return "\n".join(lines)


def verdict_paragraph(rows: list[dict], size: dict | None = None) -> str:
    """Which method is best at this budget and by how much, and what the run does not resolve
    (``size``: ``evaluation_size``'s answer, said when accuracy is unresolved)."""
    recovered = [r for r in rows if r["method"] not in UNRECOVERED and r["ppl"] is not None]
    if not recovered:
        return "No recovered model was measured."
    best = recovered[0]
    base = next((r for r in recovered if r["method"] == BASELINE), None)
    name = ROW_LABEL.get(best["method"], best["method"])
    if base is None:
        return f"Lowest held-out perplexity: {name} ({best['ppl']:.1f}); uniform r=8 was not measured, so nothing is compared."
    better = [r for r in recovered if (r.get("vs_uniform_ppl") or {}).get("verdict") == "significant"
              and r["vs_uniform_ppl"]["diff"] < 0]
    worse = [r for r in recovered if (r.get("vs_uniform_ppl") or {}).get("verdict") == "significant"
             and r["vs_uniform_ppl"]["diff"] > 0]
    unresolved = [r for r in recovered if r["method"] != BASELINE and r not in better and r not in worse]
    label = lambda rs: ", ".join(ROW_LABEL.get(r["method"], r["method"]) for r in rs)  # noqa: E731
    parts = []
    if best["method"] == BASELINE:
        parts.append(f"At this budget no method recovered the model better than uniform r=8 (held-out perplexity "
                     f"{base['ppl']:.1f}).")
    else:
        d = best["vs_uniform_ppl"]
        parts.append(f"At uniform r=8's budget, {name} recovered the pruned model best: held-out perplexity "
                     f"{best['ppl']:.1f} against uniform r=8's {base['ppl']:.1f} ({d['diff']:+.1f}, 95 % CI "
                     f"{d['ci_low']:+.1f} to {d['ci_high']:+.1f}, {d['verdict']}).")
    if better:
        parts.append(f"Lower perplexity than uniform, beyond noise: {label(better)}.")
    if worse:
        parts.append(f"Higher than uniform, beyond noise: {label(worse)}.")
    if unresolved:
        parts.append(f"Not told apart from uniform by this run: {label(unresolved)}.")
    mdes = [r["vs_uniform_avg"]["mde"] for r in recovered if (r.get("vs_uniform_avg") or {}).get("mde")]
    if mdes:
        parts.append(f"Accuracy differences are not resolved at this size: its documents detect only differences of "
                     f"about ±{min(mdes) * 100:.0f} points or more in the seven-task average.")
        if size and size["median_need"]:
            parts.append(f"Detecting {size['detect'] * 100:g} points would take about {size['median_need']} documents "
                         f"per task at this many seeds (the median over the methods' comparisons with uniform, "
                         f"from this run's discordance: `eval.compare.choose_documents`); run "
                         f"`rankadaptor compare` on two results files for one comparison's own number.")
    return " ".join(parts)


def write_report(out: Path, cfg, done: dict[str, dict], provenance: dict[str, Any],
                 session: dict[str, Any] | None = None, model: str = "smollm2-135m") -> dict:
    """report.md / report.json / figures in ``out``; ``session`` describes the run that finished it
    (workers, threads, wall seconds, units resumed from an earlier run)."""
    runs = collect_runs(done)
    rows = headline(runs)
    verdict = verdict_paragraph(rows, evaluation_size(runs))
    refused = refused_units(done)
    summary = summarise(runs)
    lines = [f"# rankadaptor demo ({cfg.name} preset)", "",
             f"{model} pruned {cfg.prune_ratio:.0%} by LLM-Pruner (element1), recovered for {cfg.steps} steps of "
             f"{cfg.batch_size}×{cfg.seq_len} tokens, every method at uniform r=8's LoRA parameter count (checked: "
             f"at it, a static plan within 1 %); seeds {list(cfg.seeds)}. Held-out perplexity on the first "
             f"{cfg.ppl_tokens} tokens of Brown's held-out text; accuracy on {cfg.eval_limit or 'all'} documents per "
             "task. Differences are A − uniform r=8, paired bootstrap over perplexity windows (accuracy: documents) "
             "× seeds.", "", headline_markdown(rows), "", verdict]
    if refused:
        lines += ["", "Not reported (off the budget they claim):", ""]
        lines += [f"* {key}: {why}" for key, why in sorted(refused.items())]
    order = [m for m in ("dense", "pruned-no-recovery", *METHOD_ROWS) if m in summary]
    lines += ["", "## Accuracy per task", "", "Accuracy in %, mean ± half-width of the 95 % t-interval over seeds.", "",
              markdown_table({ROW_LABEL.get(m, m): summary[m] for m in order + sorted(set(summary) - set(order))})]
    search = done.get("search", {})
    if search:
        lines += ["", "## Search", "", f"RankAdaptor's searched plan (per-layer ranks): `{search.get('ranks')}`", ""]
        lines += [f"* {m}" for m in search.get("messages", [])]
    plots = _figures(out, done, rows)
    lines += ["", "## Pictures", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    lines += ["", "## Generations (greedy)", "", _generations(done)]
    timings = {k: {"wall_s": u.get("wall_s"), "cpu_s": u.get("cpu_s")} for k, u in done.items()}
    lines += ["", "## Time", "", _time_line(session, timings)]
    lines += ["", f"Date {provenance['date']}, commit {provenance['git_commit']}, "
              f"{provenance['hardware']['processor']} ({provenance['hardware']['cpu_count']} CPUs), "
              f"torch {provenance['versions']['torch']}, transformers {provenance['versions']['transformers']}."]
    md = "\n".join(lines) + "\n"
    write_text_atomic(out / "report.md", md)
    result = {"preset": asdict(cfg), "model": model, "headline": rows, "verdict": verdict, "refused": refused,
              "summary": summary, "search": search, "runs": runs, "plots": plots, "timings": timings,
              "session": session, "provenance": provenance}
    write_json_atomic(out / "report.json", result)
    return {"markdown": md, "report": str(out / "report.md"), **result}


def _figures(out: Path, done: dict[str, dict], rows: list[dict]) -> list[str]:
    """Rank heatmaps, loss curves, parameters vs perplexity, search history: what the units hold."""
    first = {}  # method -> its first seed's unit
    curves: dict[str, list] = {}
    order = {m: i for i, m in enumerate(METHOD_ROWS)}
    for key, unit in sorted(done.items(), key=lambda kv: (order.get(_split(kv[0])[0], 99), kv[0])):
        if key in UNRECOVERED or "-s" not in key or unit.get("refused"):
            continue
        method, _ = _split(key)
        first.setdefault(method, unit)
        if unit.get("loss_curve"):
            curves.setdefault(SHORT_LABEL.get(method, method), []).append(unit["loss_curve"])
    paths = []
    allocations = {SHORT_LABEL.get(m, m): u["module_ranks"] for m, u in first.items() if u.get("module_ranks")}
    if allocations:
        paths.append(figures.rank_heatmaps(allocations, None, out / "rank_heatmaps.png"))
    if curves:
        paths.append(figures.loss_curves(curves, out / "loss_curves.png",
                                         ylabel="training loss (recovery corpus; AdaLoRA's includes its regulariser)"))
    points = {}
    for r in rows:
        d = r.get("vs_uniform_ppl")
        if r["params"] and r["ppl"] is not None:
            points[SHORT_LABEL.get(r["method"], r["method"])] = {
                "params": r["params"], "ppl": r["ppl"],
                **({"ppl_low": r["ppl"] - d["diff"] + d["ci_low"], "ppl_high": r["ppl"] - d["diff"] + d["ci_high"]}
                   if d else {})}
    if points:
        budget = next((r["budget"] for r in rows if r.get("budget")), None)
        paths.append(figures.params_vs_perplexity(points, out / "params_vs_perplexity.png", budget))
    series = {}
    search = done.get("search", {})
    if search.get("history"):
        series["real trials (recovery)"] = _on_compute_axis(search["history"])
    for key, unit in sorted(done.items()):
        if key.startswith("super-") and unit.get("search_history"):  # after the wide training it cuts from
            series[f"super-adapter cuts ({key}, after its training)"] = _on_compute_axis(
                unit["search_history"], start=unit.get("train_seconds") or 0.0)
    if series:
        paths.append(figures.search_history(series, out / "search_history.png", ylabel="search-split loss"))
    return [str(p) for p in paths]


def _on_compute_axis(history: list[dict], start: float = 0.0) -> list[tuple[float, float]]:
    """(seconds spent when the trial finished, counting ``start`` spent before the search, its value)
    for every completed trial."""
    points, spent = [], float(start)
    for h in history:
        spent += h.get("duration_s") or 0.0
        if h.get("state") == "COMPLETE" and h.get("value") is not None:
            points.append((spent, h["value"]))
    return points


def _generations(done: dict[str, dict]) -> str:
    blocks = []
    models, seen = [], set()
    for key, unit in sorted(done.items(), key=lambda kv: _split(kv[0])[1]):  # one seed per method: the first
        if unit.get("generations") and _split(key)[0] not in seen:
            seen.add(_split(key)[0])
            models.append((key, unit["generations"]))
    prompts = list(models[0][1]) if models else []
    for prompt in prompts:
        blocks += [f"**{prompt}** …", ""]
        for key, gens in models:
            method, _ = _split(key)
            text = " ".join(gens.get(prompt, "").split())
            blocks.append(f"* {ROW_LABEL.get(method, method)}: {text}")
        blocks.append("")
    return "\n".join(blocks) if blocks else "(none recorded)"


def _time_line(session: dict[str, Any] | None, timings: dict[str, dict]) -> str:
    walls = {k: t["wall_s"] for k, t in timings.items() if t.get("wall_s") is not None}
    per_unit = ", ".join(f"{k} {w:.0f}" for k, w in walls.items())
    head = "Units (wall seconds each): " + (per_unit or "none recorded") + "."
    if not session:
        return head
    resumed = len(session.get("resumed_units", []))
    return (f"This session: {session['wall_s'] / 60:.1f} min wall on {session['workers']} worker(s) × "
            f"{session['threads']} thread(s)" + (f", {resumed} unit(s) resumed from an earlier run" if resumed else "")
            + f". {head}" + (f" {session['note']}" if session.get("note") else ""))
