import json

import pytest

from rankadaptor.demo import PRESETS, RunDir, preset
from rankadaptor.errors import RankAdaptorError
from rankadaptor.report.demo_report import collect_runs, write_report


def test_unit_runs_once_and_resumes(tmp_path):
    calls = []
    run = RunDir(tmp_path, {"preset": {"seeds": (0, 1)}})

    def work():
        calls.append(1)
        return {"value": 3}

    assert run.unit("a", work)["value"] == 3
    # a new process over the same directory (settings read back from JSON) resumes, not recomputes
    again = RunDir(tmp_path, {"preset": {"seeds": (0, 1)}})
    assert again.unit("a", work)["value"] == 3
    assert calls == [1]


def test_unit_refuses_other_settings(tmp_path):
    RunDir(tmp_path, {"preset": "smoke"}).unit("a", lambda: {"v": 1})
    with pytest.raises(RankAdaptorError, match="other settings"):
        RunDir(tmp_path, {"preset": "quick"}).unit("a", lambda: {"v": 2})


def test_failed_unit_leaves_nothing(tmp_path):
    run = RunDir(tmp_path, {})

    def boom():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run.unit("a", boom)
    assert not (tmp_path / "units" / "a.json").exists()


def test_unknown_preset_lists_valid():
    with pytest.raises(RankAdaptorError, match="smoke, quick, paper"):
        preset("huge")


def _results(acc):
    tasks = {t: {"acc": acc, "acc_norm": acc} for t in ("boolq", "piqa")}
    return {"tasks": tasks, "perplexity": 30.0}


def test_report_table_and_verdicts(tmp_path):
    done = {"dense": {"results": _results(0.7)}, "prune": {"params_after": 1},
            "uniform-s0": {"results": _results(0.50), "trainable_params": 100},
            "uniform-s1": {"results": _results(0.52), "trainable_params": 100},
            "rankadaptor-s0": {"results": _results(0.51), "trainable_params": 99},
            "rankadaptor-s1": {"results": _results(0.52), "trainable_params": 99},
            "search": {"ranks": [8, 4, 12, 8], "messages": ["NOT significant: ..."]}}
    runs = collect_runs(done)
    assert {(r["method"], r["seed"]) for r in runs} >= {("dense", 0), ("uniform", 1), ("rankadaptor", 0)}
    report = write_report(tmp_path, PRESETS["smoke"], done, {"date": "d", "git_commit": "c",
                          "hardware": {"processor": "cpu", "cpu_count": 2},
                          "versions": {"torch": "t", "transformers": "x"}})
    md = (tmp_path / "report.md").read_text()
    assert "| RankAdaptor |" in md and "| dense (unpruned) |" in md and "NOT significant" in md
    assert json.loads((tmp_path / "report.json").read_text())["vs_uniform"]["rankadaptor"]["n"] == 2
    assert (tmp_path / "rank_allocation.png").exists() and (tmp_path / "params_vs_accuracy.png").exists()
    assert report["report"].endswith("report.md")


def test_plan_is_a_valid_graph_with_work_for_every_unit(tmp_path):
    from rankadaptor.demo import Demo
    from rankadaptor.demo.scheduler import chain_lengths

    demo = Demo(PRESETS["quick"], tmp_path)
    units = demo.plan()
    keys = {u.key for u in units}
    assert {"dense", "prune", "pruned-no-recovery", "search", "uniform-s0", "uniform-s1", "rankadaptor-s1",
            "para-s0", "lora-star-s1"} <= keys
    lengths = chain_lengths(units)  # raises on unknown dependencies or cycles
    assert max(lengths, key=lengths.get) == "prune"  # everything recovered waits for it
    assert all(callable(demo.work(k)) for k in keys)
    assert {d for u in units if u.key.startswith("rankadaptor-") for d in u.deps} == {"search"}
    with pytest.raises(RankAdaptorError, match="unknown demo unit"):
        demo.work("nonsense-s0")
    with pytest.raises(RankAdaptorError, match="search has not finished"):
        demo.work("rankadaptor-s0")()


def test_console_shows_progress_and_warnings_not_library_chatter():
    import logging

    from rankadaptor.demo.workers import console_filter

    def rec(name, level):
        return logging.LogRecord(name, level, __file__, 1, "m", None, None)

    assert console_filter(rec("rankadaptor.demo.run", logging.INFO))
    assert console_filter(rec("rankadaptor.eval.harness", logging.WARNING))
    assert not console_filter(rec("rankadaptor.eval.harness", logging.INFO))
    assert not console_filter(rec("lm_eval.tasks", logging.INFO))
    assert not console_filter(rec("lm_eval.models.huggingface", logging.WARNING))
    assert not console_filter(rec("py.warnings", logging.WARNING))
    assert console_filter(rec("transformers.modeling_utils", logging.ERROR))


@pytest.mark.slow
def test_smoke_demo_runs_on_two_workers_and_resumes(tmp_path):
    from rankadaptor.demo import run_demo

    first = run_demo("smoke", tmp_path / "run", progress=False, workers=2, threads=1)
    methods = {r["method"] for r in first["runs"]}
    assert {"dense", "pruned-no-recovery", "uniform", "lora-star", "rankadaptor", "para"} <= methods
    assert (tmp_path / "run" / "report.md").exists() and (tmp_path / "run" / "demo.log").stat().st_size > 0
    again = run_demo("smoke", tmp_path / "run", progress=False, workers=2, threads=1)
    assert again["session"]["resumed_units"] == sorted(first["timings"])  # nothing recomputed
    assert json.dumps(again["summary"]) == json.dumps(first["summary"])  # NaN intervals compare as text
