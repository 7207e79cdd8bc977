"""The super-adapter rows of the experiment kit: one wide adapter per seed, cut four ways at the budget."""

import pytest
import torch
from peft import PeftModel

from rankadaptor import experiments as ex
from rankadaptor.lora.ranks import RankPlan, count_lora_params
from tests.tiny_models import save_tiny_model_and_corpus

RECIPE = ex.Recipe(steps=4, batch_size=2, seq_len=16, lr=1e-3, uniform_r=4, high_rank=8, threads=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model_dir, corpus = save_tiny_model_and_corpus(tmp_path_factory.mktemp("kit"))
    return ex.ModelCache(model_dir), str(corpus), tmp_path_factory.mktemp("work")


def test_cut_rows_share_one_wide_adapter_and_meet_the_budget(tiny, tmp_path):
    cache, corpus, work = tiny
    budget = ex.uniform_budget(cache.model, RECIPE.uniform_r)
    runs = {}
    for name in ("super-para", "super-uniform", "super-energy", "super-search"):
        extra = {"search_trials": 12} if name == "super-search" else {}
        runs[name] = ex.train_method(name, cache, RECIPE, seed=0, out=tmp_path / name, data=corpus, **extra,
                                     work=work)
    wide = {r.record["wide_adapter"] for r in runs.values()}
    assert len(wide) == 1  # trained once, cut four ways
    for name in ("super-para", "super-uniform", "super-energy"):
        assert runs[name].targets_budget and runs[name].budget["at_budget"], runs[name].budget
    search = runs["super-search"]
    assert search.budget["within_1pct"] and search.budget["gap"] >= 0 and search.record["cut"]["evaluations"] == 12
    plan = RankPlan.from_dict(search.record["cut"]["plan"])
    assert search.budget["params"] == count_lora_params(cache.model, plan)
    c = search.record["compute"]
    assert c["train_steps"] == RECIPE.steps and c["search_forward_tokens"] == 12 * search.record["cut"]["split_tokens"]

    # what is measured is the written cut alone: the search's in-memory cut no longer hooks the model (its update
    # was once added on top of the loaded adapter's, and the searched row measured the sum)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    alone = PeftModel.from_pretrained(cache.fresh().model, search.adapter).eval()
    with torch.no_grad():
        torch.testing.assert_close(search.model(ids).logits, alone(ids).logits)
