"""RankAdaptor on the super-adapter: batched trials in Optuna storage (resumable), the allocators in the initial
design, model-guided rounds, the best plan and its cut at the budget, and the CLI's bad inputs before any work."""

from __future__ import annotations

import json

import optuna
import pytest
from peft import PeftModel

from rankadaptor.cli import main
from rankadaptor.lora.ranks import RankPlan, count_lora_params, layer_costs, module_costs
from rankadaptor.lora.recover import RecoveryConfig, recover
from rankadaptor.lora.super_adapter import SuperAdapterMethod
from rankadaptor.search.study import make_space
from rankadaptor.search.super_fidelity import SuperFidelity, search_split
from rankadaptor.search.super_search import run_super_search, super_settings
from tests.tiny_models import save_tiny_model_and_corpus, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("super")
    model_dir, corpus = save_tiny_model_and_corpus(root)
    cfg = RecoveryConfig(max_steps=4, lr=5e-3, batch_size=2, seq_len=32)
    recover(tiny_llama(), tiny_tokenizer(), method=SuperAdapterMethod(rank=8), config=cfg, data=corpus,
            out=root / "super")
    return root, model_dir, corpus


def _objective(root, corpus, space, model=None):
    return SuperFidelity(model or tiny_llama(), tiny_tokenizer(), root / "super", space,
                         search_split(tiny_tokenizer(), 2, seq_len=32, data=corpus, check=False))


def test_batched_search_records_resumes_and_cuts_the_best_plan(tmp_path, trained):
    root, _, corpus = trained
    model = tiny_llama()
    costs = module_costs(model)
    url = f"sqlite:///{tmp_path / 's.db'}"
    settings = super_settings(rank=8, study="s", trials=30, storage=url, budget="uniform:3", out=str(tmp_path / "b.json"),
                              final_seeds=0, pool=500, ensemble=2, epochs=30, n_initial=6)
    space = make_space(settings, costs)
    objective = _objective(root, corpus, space, model)
    result = run_super_search(settings, objective, costs, {"test": 1}, batch=5)
    trials = result.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 30 == objective.stats["evaluations"]
    designs = [t.user_attrs.get("seeded_from") or t.user_attrs.get("design") for t in trials[:6]]
    assert designs[0] == "uniform" and {"para", "energy"} & set(designs[1:3])  # uniform truncation is the uniform plan
    assert any(t.user_attrs.get("proposal") == "model" and "predicted" in t.user_attrs for t in trials)
    assert len({t.user_attrs["plan_hash"] for t in trials}) == 30  # no plan scored twice
    assert result.state["times"]["storage"] > 0 and result.state["meta_prior"]["tasks"][0] == "energy-none"
    from rankadaptor.search.engine import history

    batched = [row["duration_s"] for row in history(result.study, space) if row["proposal"] == "model"]
    assert batched and all(s > 0 for s in batched)  # scores written in a batch keep their own time
    best = min(trials, key=lambda t: t.value)
    assert result.report["best"]["ranks"] == best.user_attrs["ranks"]
    plan = RankPlan.from_json(tmp_path / "b.json")
    assert plan.ranks == best.user_attrs["ranks"]
    adapter = result.paths["adapter"]
    assert adapter.name == "b.adapter" and json.loads((adapter / "compress.json").read_text())["totals"][
        "params_after"] == count_lora_params(model, plan)
    assert abs(count_lora_params(model, plan) - space.budget) <= 0.01 * space.budget
    PeftModel.from_pretrained(tiny_llama(), adapter)
    # the search re-measured uniform and the incumbent on fresh seeds: the cheap score repeats exactly
    assert any(k.startswith("noise:") for k in result.study.user_attrs)
    assert "deterministic objective" in result.report["noise"]["line"]
    # resuming the study with a larger budget scores only the new trials
    more = super_settings(rank=8, study="s", trials=36, storage=url, budget="uniform:3", finalize=False, pool=500,
                          ensemble=2, epochs=30, n_initial=6, noise_every=0)
    again = _objective(root, corpus, space)
    run_super_search(more, again, costs, {"test": 1}, batch=5)
    assert again.stats["evaluations"] == 6
    assert len(result.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 36


def test_cli_super_search_and_its_bad_inputs(tmp_path, trained, capsys):
    root, model_dir, corpus = trained
    base = ["search", str(model_dir), "--fidelity", "super", "--super", str(root / "super"), "--data", str(corpus),
            "--search-blocks", "1", "--epochs", "20", "--ensemble", "2", "--pool", "300", "--final-seeds", "0"]

    def run(*extra, study="c"):
        return main(base + ["--study", study, "--storage", f"sqlite:///{tmp_path / (study + '.db')}", *extra])

    assert run("--trials", "12", "--budget", "uniform:2", "--out", str(tmp_path / "best.json"), "--batch", "4") == 0
    out = capsys.readouterr().out
    assert "12 cheap scores" in out and (tmp_path / "best.adapter" / "adapter_config.json").is_file()
    # bad inputs: refused with exit 2, naming the bound, before a study exists
    assert run("--trials", "5", "--candidates", "2,4,16", "--out", str(tmp_path / "x.json"), study="d") == 2
    assert "super-adapter has rank 8 (the bound)" in capsys.readouterr().err
    assert run("--trials", "5", "--budget", "10", "--out", str(tmp_path / "x.json"), study="e") == 2
    floor = sum(layer_costs(tiny_llama()))  # rank 1 in every module of every layer
    assert f"smallest candidate 1) costs {floor:g}" in capsys.readouterr().err  # one component per module
    other = root / "other"
    from tests.tiny_models import tiny_llama as make

    make(intermediate_size=96).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    base[1] = str(other)
    assert run("--trials", "5", "--out", str(tmp_path / "x.json"), study="f") == 2
    assert "trained on another model" in capsys.readouterr().err
    assert main(["search", str(model_dir), "--fidelity", "super", "--study", "g", "--trials", "5",
                 "--storage", f"sqlite:///{tmp_path / 'g.db'}", "--out", str(tmp_path / "x.json")]) == 2
    assert "needs --super ADAPTER" in capsys.readouterr().err
    assert not any((tmp_path / f"{s}.db").exists() for s in "defg")


def test_uniform_plan_of_a_budget_window_is_the_uniform_rank_it_was_made_from():
    """The search's window [0.99 B, B] for B = uniform:8's count keeps uniform r=8 as its baseline (float
    rounding at the window's top once gave 7, a rank outside the per-layer candidates)."""
    from rankadaptor.search.super_search import below_budget

    costs = [{"q": 2 * 576.0, "up": 576.0 + 1536.0} for _ in range(30)]
    budget = 8 * sum(sum(layer.values()) for layer in costs)
    centre, tolerance = below_budget(budget)
    settings = super_settings(rank=16, costs=costs, study="s", trials=4, budget=centre, budget_tolerance=tolerance)
    assert settings.fixed_rank == 8 and settings.fixed_rank in settings.candidates
