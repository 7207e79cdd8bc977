"""The method table's rows (``experiment_methods``), trained through ``experiments.train_method``."""

import pytest

from rankadaptor import experiments as ex
from rankadaptor.lora.ranks import RankPlan, count_lora_params
from tests.test_experiments import RECIPE, tiny  # noqa: F401  (tiny is a fixture)


@pytest.mark.parametrize("name", ["uniform", "adalora", "prunedlora", "para"])
def test_budget_methods_end_at_the_budget(tiny, tmp_path, name):
    cache, corpus = tiny
    run = ex.train_method(name, cache, RECIPE, seed=0, out=tmp_path / name, data=corpus)
    budget = ex.uniform_budget(cache.model, RECIPE.uniform_r)
    assert run.targets_budget and run.budget["budget"] == budget
    assert run.budget["at_budget"], run.budget
    assert 0 <= budget - run.budget["params"] < ex.largest_component(cache.model)
    assert run.summary()["val_loss"] > 0


def test_static_plans_report_their_own_count(tiny):
    cache, corpus = tiny
    plan = RankPlan(ranks=[2, 2, 6, 6])
    run = ex.train_method("plan", cache, RECIPE, seed=0, plan=plan, data=corpus)
    assert not run.targets_budget
    assert run.budget["params"] == count_lora_params(cache.model, plan)
    assert run.budget["relative"] == pytest.approx(run.budget["params"] / run.budget["budget"])


@pytest.mark.parametrize("name", ["eva", "static-eva", "static-lora-star", "static-para", "static-prunedlora"])
def test_allocator_rows_train_a_plan_within_one_percent_of_the_budget(tiny, name):
    cache, corpus = tiny
    run = ex.train_method(name, cache, RECIPE, seed=0, data=corpus)
    assert run.static and run.targets_budget and run.budget["within_1pct"], run.budget
    assert run.allocation["params"] == run.budget["params"] and run.allocation["raw_ranks"]
    assert run.summary()["val_loss"] > 0
