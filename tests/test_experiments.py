import json

import pytest

from rankadaptor import experiments as ex
from rankadaptor.errors import RankAdaptorError
from tests.tiny_models import save_tiny_model_and_corpus

RECIPE = ex.Recipe(steps=8, batch_size=2, seq_len=16, lr=1e-3, uniform_r=4, high_rank=16, threads=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model_dir, corpus = save_tiny_model_and_corpus(tmp_path_factory.mktemp("kit"))
    return ex.ModelCache(model_dir), str(corpus)


def test_fresh_copies_are_independent(tiny):
    cache, _ = tiny
    a, b = cache.fresh(), cache.fresh()
    next(a.model.parameters()).data.add_(1.0)
    assert not next(a.model.parameters()).equal(next(b.model.parameters()))


def test_a_method_off_its_budget_is_refused(tiny, monkeypatch):
    cache, corpus = tiny
    budget = ex.uniform_budget(cache.model, RECIPE.uniform_r)
    monkeypatch.setattr(ex, "final_params", lambda name, record, model: budget - 5 * ex.largest_component(model))
    with pytest.raises(RankAdaptorError, match="not at the budget"):
        ex.train_method("adalora", cache, RECIPE, seed=0, data=corpus)


def test_unknown_method_lists_the_valid_ones(tiny):
    with pytest.raises(RankAdaptorError, match="valid:.*prunedlora"):
        ex.train_method("nope", tiny[0], RECIPE, seed=0)


def test_budget_check_edges():
    assert ex.budget_check(100, 100, 10)["at_budget"]
    assert ex.budget_check(91, 100, 10)["at_budget"]
    assert not ex.budget_check(90, 100, 10)["at_budget"]
    assert not ex.budget_check(101, 100, 10)["at_budget"]
    assert ex.budget_check(99, 100, 10)["within_1pct"] and not ex.budget_check(98, 100, 10)["within_1pct"]


def test_write_results_has_provenance_and_markdown(tmp_path):
    paths = ex.write_results("demo-x", {"rows": [1, 2]}, "# table", seed=3, results_dir=tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["rows"] == [1, 2] and data["provenance"]["seed"] == 3 and "command" in data
    assert paths["markdown"].read_text() == "# table\n"
