"""benchmarks/budget_gain.py's method list is data: every row names a method of the kit, every lever two rows."""


from tests.benchmarks import load_benchmark


def _module():
    return load_benchmark("budget_gain")


def test_rows_name_kit_methods_and_levers_name_rows():
    from rankadaptor.experiment_methods import METHODS

    bg = _module()
    keys = [r["key"] for r in bg.METHODS]
    assert len(keys) == len(set(keys)) and keys[0] == "uniform"
    assert all(r["method"] in METHODS for r in bg.METHODS), [r["method"] for r in bg.METHODS if r["method"] not in METHODS]
    assert all(a in keys and b in keys for _, a, b in bg.LEVERS)
    allowed = {"key", "label", "method", "alloc_steps", "plan", "lr_grid", "overrides"}
    assert all(set(r) <= allowed for r in bg.METHODS)


def test_the_cut_rows_the_table_names_are_kit_methods():
    from rankadaptor.experiment_methods import CUT_AFTER_TRAINING, METHODS

    assert set(CUT_AFTER_TRAINING) <= set(METHODS)


def test_eval_limit_auto_is_chosen_from_the_pilots_units(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    import pytest

    from rankadaptor.eval.compare import choose_documents
    from tests.eval.test_eval_compare import pair, result

    bg = _module()
    monkeypatch.setattr(bg, "WORK", tmp_path)
    args = SimpleNamespace(steps=20, screen_steps=5, ppl_tokens=4096, pilot_limit=10, detect_points=2.0,
                           most_documents=1000)
    rows = [{"key": "uniform"}, {"key": "para"}, {"key": "eva"}]
    docs = {"uniform": pair(150, 60, 20, 170)[1], "para": pair(150, 60, 20, 170)[0], "eva": pair(150, 30, 20, 200)[0]}
    with pytest.raises(SystemExit, match="run this command with --eval-limit 10 first"):
        bg.choose_eval_limit(rows, [0, 1], args)
    for key, correct in docs.items():
        for seed in (0, 1):
            bg.unit_path({"key": key}, seed, args, 10).write_text(json.dumps({"results": result({"boolq": (correct, None)})}))
    base = [result({"boolq": (docs["uniform"], None)})] * 2
    want = choose_documents({k: ([result({"boolq": (docs[k], None)})] * 2, base) for k in ("para", "eva")},
                            detect=0.02, most=1000)
    got = bg.choose_eval_limit(rows, [0, 1], args)
    assert got["documents"] == want["documents"] and set(got["needs"]) == {"para", "eva"}
    assert "chosen from the pilot at 400 documents per task to detect 2 points" in bg.choice_lines(got)[0]


def test_a_run_below_the_full_size_names_every_reduction_above_its_table():
    bg = _module()
    full = {**bg.FULL, "seeds": list(range(bg.FULL["seeds"])), "methods": bg.METHODS}
    assert bg.reductions(full) == []
    part = {**full, "steps": 20, "eval_limit": 10, "seeds": [0, 1], "methods": bg.METHODS[:5]}
    assert bg.reductions(part) == ["20 steps (full: 40)", "10 documents per task (full: 50)", "2 seeds (full: 5)",
                                   f"5 of the {len(bg.METHODS)} methods"]
    # a short search is a reduction only where the searched plan is one of the rows
    assert bg.reductions({**full, "search_trials": 6}) == ["a 6-trial search (full: 16)"]
    assert bg.reductions({**part, "search_trials": 6}) == bg.reductions(part)
    import json
    from pathlib import Path

    committed = json.loads((Path(bg.__file__).parent / "results" / "budget_gain_long.json").read_text())
    assert "REDUCED SIZE: 10 documents per task (full: 50). Recovery" in bg.markdown(committed)


def test_the_searched_plans_runs_are_saved_apart_for_each_search_size():
    from types import SimpleNamespace

    bg = _module()
    args = SimpleNamespace(steps=40, screen_steps=10, ppl_tokens=4096, search_trials=6, searched_plan=None)
    searched = next(r for r in bg.METHODS if r.get("plan") == "searched")
    six = bg.unit_path(searched, 0, args, 10)
    sixteen = bg.unit_path(searched, 0, SimpleNamespace(**{**vars(args), "search_trials": 16}), 10)
    given = bg.unit_path(searched, 0, SimpleNamespace(**{**vars(args), "searched_plan": "/x/mine.json"}), 10)
    assert len({six, sixteen, given}) == 3 and given.name.endswith("-given-mine.json")
    assert bg.unit_path({"key": "uniform"}, 0, args, 10).name == "uniform-s0-40x10-10-4096.json"
