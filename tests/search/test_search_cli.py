import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from rankadaptor.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"
FAST = ["--objective", "synthetic", "--synthetic-layers", "10", "--fixed-first", "1", "--fixed-last", "1",
        "--pool", "200", "--n-initial", "3", "--cv-every", "100"]


def _cmd(*args):
    return [sys.executable, "-m", "rankadaptor", "--threads", "1", "search", "toy", *FAST, *args]


@pytest.mark.slow
def test_two_processes_share_a_study_without_evaluating_a_plan_twice(tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    # create the study once before the workers start (Optuna's advice for SQLite)
    assert main(["search", "toy", *FAST, "--study", "s", "--storage", url, "--trials", "1", "--no-finalize"]) == 0
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(SRC)}  # these sources, whatever is installed
    procs = [subprocess.Popen(_cmd("--study", "s", "--storage", url, "--trials", "9", "--no-finalize"),
                              cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    outs = [p.communicate(timeout=240)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    study = optuna.load_study(study_name="s", storage=url)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 9  # the budget is claimed before a trial starts: no worker overshoots it
    hashes = [t.user_attrs["plan_hash"] for t in done]
    assert len(hashes) == len(set(hashes))

    # resume + finalise in this process: outputs are a RankPlan, a summary and plots
    out = tmp_path / "ranks.json"
    assert main(["search", "toy", *FAST, "--study", "s", "--storage", url, "--trials", "9",
                 "--final-seeds", "3", "--out", str(out)]) == 0
    from rankadaptor.lora.ranks import RankPlan

    plan = RankPlan.from_json(out)
    assert len(plan.ranks) == 10 and plan.ranks[0] == 8 and plan.ranks[-1] == 8
    report = tmp_path / "ranks.search"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["result"]["best"]["ranks"] == plan.ranks
    assert len(summary["result"]["uniform"]["scores"]) == 3
    assert "provenance" in summary and summary["space"]["n_layers"] == 10
    for png in ("history.png", "predicted_vs_measured.png", "allocation.png"):
        assert (report / png).stat().st_size > 1000


def test_bad_inputs_are_clean_errors(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/b.db"
    assert main(["search", "toy", *FAST, "--study", "b", "--storage", url, "--trials", "2",
                 "--budget", "1e9", "--no-finalize"]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert main(["search", "toy", *FAST, "--study", "b", "--storage", url, "--trials", "2",
                 "--budget", "1e9", "--granularity", "module", "--no-finalize"]) == 2
    assert "raise the largest rank candidate" in capsys.readouterr().err
    assert main(["search", "toy", *FAST, "--study", "b", "--storage", url, "--trials", "2",
                 "--candidates", "0,4", "--no-finalize"]) == 2
    assert "positive" in capsys.readouterr().err
    assert main(["search", "toy", *FAST, "--study", "b", "--storage", url, "--trials", "2", "--no-finalize"]) == 0
    assert main(["search", "toy", *FAST, "--study", "b", "--storage", url, "--trials", "2", "--no-finalize",
                 "--seed", "1"]) == 2
    assert "different seed" in capsys.readouterr().err
    assert main(["search", "other-model", *FAST, "--study", "b", "--storage", url, "--trials", "2",
                 "--no-finalize"]) == 2
    assert "different model" in capsys.readouterr().err
    existing = tmp_path / "x.json"
    existing.write_text("{}")
    assert main(["search", "toy", *FAST, "--study", "b", "--storage", url, "--trials", "2",
                 "--out", str(existing)]) == 2
    assert existing.read_text() == "{}"


def test_own_objective_by_import_path_per_module_on_a_model(tmp_path, capsys):
    from rankadaptor.lora.ranks import RankPlan, count_lora_params, layer_costs
    from tests.tiny_models import save_tiny_model_and_corpus, tiny_llama

    model_dir, _ = save_tiny_model_and_corpus(tmp_path)
    out = tmp_path / "plan.json"
    rc = main(["search", str(model_dir), "--study", "own", "--storage", f"sqlite:///{tmp_path}/own.db",
               "--objective", "rankadaptor.search.synthetic:additive", "--objective-arg", "noise=0.001",
               "--objective-arg", "seed=2", "--granularity", "module", "--fixed-first", "1", "--fixed-last", "1",
               "--trials", "6", "--n-initial", "3", "--pool", "200", "--final-seeds", "3", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "plans differ by more than noise" in printed
    plan = RankPlan.from_json(out)  # a per-module plan: layer ranks plus overrides by full module name
    model = tiny_llama()
    assert abs(count_lora_params(model, plan) / (8 * sum(layer_costs(model))) - 1) <= 0.01
    summary = json.loads((tmp_path / "plan.search" / "summary.json").read_text())
    assert summary["identity"]["objective"] == "rankadaptor.search.synthetic:additive"
    assert summary["space"]["granularity"] == "module"


def test_flag_errors_name_the_fix(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/e.db"
    assert main(["search", "toy", *FAST, "--study", "e", "--storage", url, "--trials", "2", "--no-finalize",
                 "--multi-fidelity"]) == 2
    assert "--screen-steps" in capsys.readouterr().err
    for flag, value, valid in (("--strategy", "bayes", "'rankadaptor', 'random', 'tpe', 'gp'"),
                               ("--surrogate", "forest", "'mlp', 'ridge'"), ("--granularity", "head", "'module'")):
        assert main(["search", "toy", *FAST, "--study", "e", "--storage", url, "--trials", "2", flag, value]) == 2
        assert valid in capsys.readouterr().err
    assert main(["search", "toy", *FAST, "--study", "e", "--storage", url, "--trials", "2", "--no-finalize",
                 "--objective", "nosuchpackage.mod:fn"]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "e.db").exists()  # bad input leaves nothing on disk
