"""``rankadaptor allocate``: a plan within 1 % of the budget that ``recover --ranks`` trains; bad input exits 2."""

import json

import pytest

from rankadaptor.cli import main
from rankadaptor.lora.ranks import RankPlan, count_lora_params
from tests.tiny_models import save_tiny_model_and_corpus, tiny_llama


@pytest.fixture
def saved(tmp_path):
    return save_tiny_model_and_corpus(tmp_path)


@pytest.mark.parametrize("allocator", ["lora-star", "eva"])
def test_allocate_writes_a_plan_at_the_budget_that_recover_trains(tmp_path, saved, capsys, allocator):
    model_dir, corpus = saved
    out = tmp_path / "plan.json"
    assert main(["allocate", str(model_dir), "--allocator", allocator, "--budget", "uniform:4", "--data", str(corpus),
                 "--seq-len", "16", "--batch-size", "2", "--out", str(out)]) == 0
    plan = RankPlan.from_json(out)
    budget = count_lora_params(tiny_llama(), RankPlan.uniform(4, 4))
    assert abs(count_lora_params(tiny_llama(), plan) / budget - 1) <= 0.01
    record = json.loads((tmp_path / "plan.allocation.json").read_text())
    assert record["name"] == allocator and record["raw_ranks"] and "components" not in record["extra"]
    assert main(["recover", str(model_dir), "--ranks", str(out), "--data", str(corpus), "--steps", "1",
                 "--batch-size", "2", "--seq-len", "16", "--out", str(tmp_path / "ad")]) == 0


def test_allocate_bad_input_exits_2_before_loading(tmp_path, saved, capsys):
    model_dir, _ = saved
    assert main(["allocate", str(model_dir), "--allocator", "magic", "--out", str(tmp_path / "p.json")]) == 2
    assert "valid: ['eva', 'lora-star', 'para', 'prunedlora', 'uniform']" in capsys.readouterr().err
    (tmp_path / "p.json").write_text("{}")
    assert main(["allocate", str(model_dir), "--allocator", "uniform", "--out", str(tmp_path / "p.json")]) == 2
    assert "already exists" in capsys.readouterr().err and (tmp_path / "p.json").read_text() == "{}"
    assert main(["allocate", str(model_dir), "--allocator", "uniform", "--budget", "lots",
                 "--out", str(tmp_path / "q.json")]) == 2
    assert "uniform:R" in capsys.readouterr().err


def test_cli_names_match_the_allocator_table():
    from rankadaptor.cli.allocate import ALLOCATOR_NAMES
    from rankadaptor.lora.allocators import ALLOCATORS

    assert set(ALLOCATOR_NAMES) == set(ALLOCATORS)
