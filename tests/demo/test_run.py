import json

import pytest

from rankadaptor.demo import PRESETS, RunDir, preset
from rankadaptor.errors import RankAdaptorError
from rankadaptor.report.demo_report import write_report


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


def _results(correct: int, nll_shift: float):
    """Per-document results on two tasks (``correct`` of 40 right) and 30 perplexity windows."""
    import numpy as np

    from tests.eval.test_eval_compare import result

    base = np.random.default_rng(0).uniform(600, 900, size=30)
    docs = [1] * correct + [0] * (40 - correct)
    return result({"boolq": (docs, None), "piqa": (docs, docs)}, ppl=(list(base + nll_shift), [255] * 30))


def _unit(correct, shift, params=100, curve=((1, 6.0), (2, 5.5))):
    return {"results": _results(correct, shift), "trainable_params": params, "steps": 2, "wall_s": 60.0,
            "budget": {"budget": 100, "params": params}, "loss_curve": [list(c) for c in curve],
            "module_ranks": {"model.layers.0.self_attn.q_proj": 8, "model.layers.1.mlp.up_proj": 4},
            "generations": {"The capital of France is": " Paris"}}


def test_report_headline_orders_by_perplexity_with_paired_intervals(tmp_path):
    done = {"dense": {"results": _results(30, -100.0), "generations": {"The capital of France is": " Paris."}},
            "prune": {"params_after": 1},
            "uniform-s0": _unit(20, 0.0), "uniform-s1": _unit(21, 1.0),
            "para-s0": _unit(24, -20.0), "para-s1": _unit(23, -19.0),  # clearly lower perplexity on every window
            "rankadaptor-s0": _unit(20, 0.5), "rankadaptor-s1": _unit(21, 0.2),
            "adalora-s0": {"method": "adalora", "refused": "method 'adalora' ended at 130 LoRA parameters, not at "
                                                           "the budget 100"},
            "search": {"ranks": [8, 4, 12, 8], "messages": ["NOT significant: ..."],
                       "history": [{"number": 0, "state": "COMPLETE", "value": 5.5, "duration_s": 30.0},
                                   {"number": 1, "state": "COMPLETE", "value": 5.4, "duration_s": 31.0}]}}
    report = write_report(tmp_path, PRESETS["smoke"], done, {"date": "d", "git_commit": "c",
                          "hardware": {"processor": "cpu", "cpu_count": 2},
                          "versions": {"torch": "t", "transformers": "x"}})
    rows = report["headline"]
    assert [r["method"] for r in rows][:2] == ["dense", "para"]  # ordered by held-out perplexity
    para = next(r for r in rows if r["method"] == "para")
    assert para["vs_uniform_ppl"]["verdict"] == "significant" and para["vs_uniform_ppl"]["ci_high"] < 0
    assert para["vs_uniform_avg"]["mde"] > 0  # the accuracy difference these documents can detect
    assert "PARA (r=32 → budget) recovered the pruned model best" in report["verdict"]
    from rankadaptor.eval.compare import choose_documents

    uniform = [done[f"uniform-s{s}"]["results"] for s in (0, 1)]
    need = choose_documents({m: ([done[f"{m}-s{s}"]["results"] for s in (0, 1)], uniform)
                             for m in ("para", "rankadaptor")}, detect=0.02)["median_need"]
    assert f"Detecting 2 points would take about {need} documents per task" in report["verdict"]
    md = (tmp_path / "report.md").read_text()
    assert "adalora-s0: method 'adalora' ended at 130" in md  # refused, and said why
    assert "| AdaLoRA" not in md.split("## Accuracy per task")[0]  # ... and not in the headline
    assert md.count("* PARA (r=32 → budget): Paris") == 1 and "* dense (unpruned): Paris." in md  # generations side by side
    for png in ("rank_heatmaps", "loss_curves", "params_vs_perplexity", "search_history"):
        assert (tmp_path / f"{png}.png").exists(), png
    assert json.loads((tmp_path / "report.json").read_text())["headline"][1]["method"] == "para"


def test_plan_is_a_valid_graph_with_work_for_every_unit(tmp_path):
    from rankadaptor.demo import Demo
    from rankadaptor.demo.scheduler import chain_lengths

    demo = Demo(PRESETS["quick"], tmp_path)
    units = demo.plan()
    keys = {u.key for u in units}
    assert {"dense", "prune", "pruned-no-recovery", "search", "uniform-s0", "uniform-s1", "rankadaptor-s1",
            "para-s0", "lora-star-s1", "eva-s0", "super-s1", "prunedlora-s0", "adalora-s1"} <= keys
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
    methods = {r["method"] for r in first["runs"]} | {k.rpartition("-s")[0] for k in first["refused"]}
    assert {"dense", "pruned-no-recovery", "uniform", "lora-star", "eva", "rankadaptor", "super", "para",
            "prunedlora", "adalora"} <= methods  # every method ran: measured, or refused with its reason
    for row in first["headline"]:  # every reported row is at the budget it claims (within 1 %)
        if row["method"] not in ("dense", "pruned-no-recovery"):
            assert abs(row["params"] - row["budget"]) <= 0.01 * row["budget"], row
    for run in first["runs"]:
        if run["budget"]:
            assert abs(run["budget"]["params"] - run["budget"]["budget"]) <= 0.01 * run["budget"]["budget"], run
    assert (tmp_path / "run" / "report.md").exists() and (tmp_path / "run" / "demo.log").stat().st_size > 0
    again = run_demo("smoke", tmp_path / "run", progress=False, workers=2, threads=1)
    assert again["session"]["resumed_units"] == sorted(first["timings"])  # nothing recomputed
    assert json.dumps(again["summary"]) == json.dumps(first["summary"])  # NaN intervals compare as text


def test_a_model_of_an_unsupported_family_is_refused_before_anything_is_written(tmp_path):
    from transformers import GPT2Config

    from rankadaptor.demo import run_demo

    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(RankAdaptorError, match="unsupported architecture 'gpt2'"):
        run_demo("smoke", tmp_path / "run", model=str(tmp_path / "gpt2"), progress=False)
    assert not (tmp_path / "run").exists()
