"""The super-adapter's cheap fidelity: a plan's score is the loss of its cut on the search split (in memory,
no writes, cached), the search split is refused when it overlaps the held-out text, the high fidelity
fine-tunes the cut, and the validity statistic is a Spearman with a bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest
from peft import PeftModel

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.ranks import RankPlan
from rankadaptor.lora.recover import RecoveryConfig, recover, validation_loss
from rankadaptor.lora.super_adapter import SuperAdapterMethod
from rankadaptor.search.space import SearchSpace
from rankadaptor.search.super_fidelity import (SuperFidelity, allocator_plans, check_disjoint, energy_tasks,
                                               search_split, spearman_ci)
from tests.compress.para_helpers import tree_hash
from tests.tiny_models import TINY_TEXT, tiny_llama, tiny_tokenizer

HELDOUT = ["Held-out text: the committee met on a rainy Tuesday and voted to repaint the old lighthouse red.",
           "A second held-out paragraph mentions seventeen bicycles, a harbour and a forgotten umbrella."]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny rank-4 super-adapter and its recovery corpus."""
    root = tmp_path_factory.mktemp("super")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(TINY_TEXT * 30))
    cfg = RecoveryConfig(max_steps=4, lr=5e-3, batch_size=2, seq_len=32)
    recover(tiny_llama(), tiny_tokenizer(), method=SuperAdapterMethod(rank=4), config=cfg, data=corpus,
            out=root / "super")
    return root / "super", corpus


def _split(corpus, n=3):
    return search_split(tiny_tokenizer(), n, seq_len=32, data=corpus, check=False)


def test_score_is_the_cut_adapters_loss_in_memory_and_cached(tmp_path, trained):
    from rankadaptor.compress.cut import cut_to_plan

    adapter, corpus = trained
    split = _split(corpus)
    model, tok = tiny_llama(), tiny_tokenizer()
    before = tree_hash(adapter.parent)
    fid = SuperFidelity(model, tok, adapter, SearchSpace(4, candidates=(1, 2, 3, 4), fixed_first=0, fixed_last=0),
                        split)
    a = fid([1, 4, 2, 3])
    assert fid([1, 4, 2, 3]) == a and fid.stats == {**fid.stats, "evaluations": 1, "cache_hits": 1}
    b = fid([4, 1, 1, 1])
    assert a != b
    assert tree_hash(adapter.parent) == before  # no disk writes
    # the same number as the written cut, loaded by PEFT and scored on the same blocks
    cut_to_plan(adapter, tiny_llama(), RankPlan(ranks=[1, 4, 2, 3]), tmp_path / "cut")
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "cut")
    n = len(split.blocks)
    ref = validation_loss(loaded, split.blocks, tok.pad_token_id, RecoveryConfig(batch_size=n))
    assert a == pytest.approx(ref, abs=1e-5)


def test_high_fidelity_fine_tunes_the_cut(trained):
    adapter, corpus = trained
    space = SearchSpace(4, candidates=(1, 2, 3, 4), fixed_first=0, fixed_last=0)
    fid = SuperFidelity(tiny_llama(), tiny_tokenizer(), adapter, space, _split(corpus), finetune_steps=3,
                        finetune={"lr": 5e-3, "batch_size": 2}, final_tokens=64)
    cheap = fid([2, 2, 2, 2])
    full = fid([2, 2, 2, 2], seed=1, fidelity="full")
    assert full != cheap and fid([2, 2, 2, 2], seed=1, fidelity="full") == pytest.approx(full, abs=1e-6)
    assert fid.stats["finetunes"] == 2
    assert fid([2, 2, 2, 2]) == cheap  # the hooks are back after the fine-tune's copy of the model
    final = fid([2, 2, 2, 2], seed=1, fidelity="final")  # the same fine-tune, scored on the held-out text
    assert final != full and fid.stats["finetunes"] == 3
    plain = SuperFidelity(tiny_llama(), tiny_tokenizer(), adapter, space, _split(corpus), final_tokens=64)
    assert plain([2, 2, 2, 2], fidelity="full") == plain([2, 2, 2, 2]) == cheap  # no fine-tune: full = screen
    assert plain([2, 2, 2, 2], seed=5, fidelity="final") == plain([2, 2, 2, 2], seed=6, fidelity="final") != cheap
    with pytest.raises(RankAdaptorError, match="fidelity"):
        fid([2, 2, 2, 2], fidelity="medium")


def test_search_split_refuses_held_out_text(tmp_path):
    tok = tiny_tokenizer()
    clean = tmp_path / "clean.txt"
    clean.write_text("\n\n".join(TINY_TEXT * 30))
    split = search_split(tok, 2, seq_len=32, data=clean, check=False)
    check_disjoint(split.blocks, tok, heldout=HELDOUT)  # disjoint: passes
    leaky = tmp_path / "leaky.txt"  # the held-out text at the end of the corpus, where the validation blocks are
    leaky.write_text("\n\n".join(TINY_TEXT * 30 + HELDOUT * 4))
    leaked = search_split(tok, 2, seq_len=32, data=leaky, check=False)
    with pytest.raises(RankAdaptorError, match="shares a 32-token run with the held-out text"):
        check_disjoint(leaked.blocks, tok, heldout=HELDOUT)
    with pytest.raises(RankAdaptorError, match="at most"):
        search_split(tok, 10_000, seq_len=32, data=clean, check=False)


def test_search_split_is_never_trained_on(tmp_path):
    from rankadaptor.data import load_recovery_data

    tok = tiny_tokenizer()
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"{i} " + TINY_TEXT[i % 6] for i in range(3000)))  # every block distinct
    split = search_split(tok, 4, seq_len=32, data=corpus, check=False)
    trained = load_recovery_data(corpus, tok, seq_len=32, max_val=RecoveryConfig().max_val).train  # what recover uses
    assert len(split.blocks) == 4 and not {tuple(b) for b in split.blocks} & {tuple(b) for b in trained}


@pytest.mark.slow
def test_real_search_split_is_disjoint_from_the_brown_held_out_text():
    from transformers import AutoTokenizer

    from rankadaptor.assets import ensure

    tok = AutoTokenizer.from_pretrained(ensure("smollm2-135m"))
    split = search_split(tok, 4, seq_len=128)  # checks against experiments.heldout_texts() itself
    assert split.identity["tokens"] == 512 and len(set(split.identity["val_blocks"])) == 4


def test_allocator_plans_and_energy_tasks_live_in_the_space(trained):
    from rankadaptor.compress.adapter_io import read_adapter
    from rankadaptor.lora.ranks import count_lora_params, module_costs
    from rankadaptor.search.study import seed_vectors

    adapter, corpus = trained
    model = tiny_llama()
    costs = module_costs(model)
    budget = 2 * sum(sum(layer.values()) for layer in costs)  # uniform rank 2
    plans = allocator_plans(read_adapter(adapter), model, budget)
    assert [label for label, _ in plans] == ["para", "uniform", "energy"]
    assert all(0.8 * budget < count_lora_params(model, plan) <= budget for _, plan in plans)
    assert set(plans[1][1].module_ranks(model).values()) == {2}  # uniform truncation
    for granularity in ("layer", "module"):
        space = SearchSpace.for_model(costs, granularity, candidates=(1, 2, 3, 4), fixed_first=0, fixed_last=0,
                                      budget=budget, tolerance=0.05)
        assert all(space.is_valid(v)[0] for _, v in seed_vectors(plans, space, costs))
    space = SearchSpace.for_model(costs, "layer", candidates=(1, 2, 3, 4), fixed_first=0, fixed_last=0,
                                  budget=budget, tolerance=0.05)
    fid = SuperFidelity(model, tiny_tokenizer(), adapter, space, _split(corpus))
    tasks = energy_tasks(space, fid, n=64)
    assert [t.name for t in tasks] == ["energy-none", "energy-fro", "energy-scale"]
    assert all(t.X.shape == (64, 4) and np.all(t.y <= 0) and np.std(t.y) > 0 for t in tasks)


def test_spearman_ci():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    res = spearman_ci(x, x + 0.1 * rng.normal(size=40))
    assert res["spearman"] > 0.9 and res["ci_low"] <= res["spearman"] <= res["ci_high"] and res["n"] == 40
    assert spearman_ci([1, 2], [2, 3])["spearman"] is None  # n < 3: no test
    assert spearman_ci([1, 1, 1], [1, 2, 3])["note"].startswith("no test")
