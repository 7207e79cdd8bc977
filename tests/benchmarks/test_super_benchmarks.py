"""The super-adapter benchmarks' tables: paired differences by seed, 'no test' below three seeds."""

from tests.benchmarks import load_benchmark as _load


def _entry(seed, para, search):
    cut = lambda m, p: {"method": m, "reduction": 0.75, "budget": 100, "params": 99, "ppl": p, "cut_seconds": 1.0}  # noqa: E731
    return {"seed": seed, "kind": "nested", "train_seconds": 10.0, "train_steps": 30, "train_tokens": 15360,
            "uncompressed": para - 1, "cuts": {"para -75%": cut("para", para), "search -75%": cut("search", search)}}


def test_sweep_summary_pairs_by_seed():
    sweep = _load("super_sweep")
    state = {"sweep": {f"nested/seed{s}": _entry(s, 100 + s, 99 + s - 0.01 * s) for s in range(3)}}
    rows = sweep.summarise(state)["nested"]
    diff = rows["search -75%"]["vs_para"]
    assert diff["n"] == 3 and diff["mean"] < 0 and diff["significant"]
    assert rows["para -75%"]["vs_uncompressed"]["mean"] == 1.0
    text = sweep.markdown({"settings": {"ppl_tokens": 2048}, "summary": {"nested": rows}, "command": "x",
                           "provenance": {"git_commit": "abc"}})
    assert "search -75%" in text and "*" in text
    two = sweep.summarise({"sweep": {k: v for k, v in state["sweep"].items() if k != "nested/seed2"}})["nested"]
    assert "no test" in sweep._ci(two["search -75%"]["vs_para"])


def test_validity_table_and_markdown():
    val = _load("super_validity")
    rows = [{"label": "random", "cheap": i, "cut": i + 0.1, "finetuned": 2 * i, "scratch": -i, "cheap_seconds": 1.0,
             "finetuned_seconds": 5.0, "scratch_seconds": 9.0} for i in range(6)]
    table = val.validity_table(rows)
    assert table["cheap~finetuned"]["spearman"] == 1.0 and table["cheap~scratch"]["spearman"] == -1.0
    text = val.markdown({"settings": {"cut": "svd", "seed": 0, "recipe": {"steps": 30}, "ppl_tokens": 2048,
                                      "finetune_steps": 5, "scratch_steps": 30},
                         "search_split": {"tokens": 512}, "plans": rows, "validity": table})
    assert "(b) trained from scratch | -1.00" in text


def test_sweep_study_names_are_names_storage_accepts():
    from rankadaptor.search.storage import check_study_name

    sweep = _load("super_sweep")
    for method in sweep.CUT_METHODS:
        for red in sweep.REDUCTIONS:
            check_study_name(sweep.study_name("nested", 0, method, red))  # raises on '/', ' ', '%'
