from rankadaptor.report.tables import compare_to, markdown_table, run_scores, summarise


def _results(boolq, hella, ppl=None):
    r = {"tasks": {"boolq": {"acc": boolq, "acc_norm": boolq}, "hellaswag": {"acc": 0.0, "acc_norm": hella}}}
    if ppl is not None:
        r["perplexity"] = ppl
    return r


def test_run_scores_use_reported_metric_per_task():
    s = run_scores(_results(0.6, 0.4, ppl=20.0))
    assert s == {"boolq": 0.6, "hellaswag": 0.4, "avg": 0.5, "ppl": 20.0}


def test_summary_table_and_paired_comparison():
    runs = [
        {"method": "uniform", "seed": s, "results": _results(0.60 + 0.01 * s, 0.40)} for s in range(3)
    ] + [
        {"method": "rankadaptor", "seed": s, "results": _results(0.70 + 0.01 * s, 0.40)} for s in range(3)
    ]
    summary = summarise(runs)
    assert summary["uniform"]["boolq"]["n"] == 3
    table = markdown_table(summary)
    assert "| uniform | 61.00 ± 2.48 | 40.00 ± 0.00 |" in table
    diff = compare_to(runs, "uniform")["rankadaptor"]
    # the same +5 points on every seed: no spread, so no test (never "significant")
    assert diff["verdict"] == "no test" and not diff["significant"] and abs(diff["mean"] - 0.05) < 1e-9
    runs += [{"method": "pick", "seed": s, "results": _results(0.70 + 0.012 * s, 0.40)} for s in range(3)]
    diff = compare_to(runs, "uniform")["pick"]
    assert diff["significant"] and abs(diff["mean"] - 0.051) < 1e-9
