"""The recovery loop: loss goes down, callbacks fire in order, the adapter reloads, bad input fails early."""

import json

import pytest
import torch
from peft import PeftModel

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.ranks import RankPlan, wrapped_ranks
from rankadaptor.lora.recover import RecoveryConfig, recover
from tests.tiny_models import TINY_TEXT, tiny_llama, tiny_tokenizer


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(TINY_TEXT * 20))
    return path


class Recorder:
    def __init__(self):
        self.calls = []

    def on_train_begin(self, model, optimizer, total_steps):
        self.calls.append(("begin", total_steps))

    def on_after_backward(self, step, model):
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        self.calls.append(("backward", step, all(g is not None for g in grads)))

    def on_step_end(self, step, model, optimizer):
        self.calls.append(("step", step))

    def on_train_end(self, model):
        self.calls.append(("end",))


def test_training_lowers_loss_calls_hooks_and_saves(tmp_path, corpus):
    tok = tiny_tokenizer()
    rec = Recorder()
    cfg = RecoveryConfig(max_steps=12, lr=5e-3, batch_size=4, micro_batch_size=2, seq_len=32, eval_every=6)
    plan = RankPlan(ranks=[2, 4, 0, 3])
    res = recover(tiny_llama(), tok, plan, cfg, data=corpus, callbacks=[rec], out=tmp_path / "ad")
    losses = [c["loss"] for c in res.record["loss_curve"]]
    assert sum(losses[-3:]) < sum(losses[:3])
    assert rec.calls[0] == ("begin", 12) and rec.calls[-1] == ("end",)
    assert [c for c in rec.calls if c[0] == "backward"] == [("backward", i, True) for i in range(12)]
    assert [c for c in rec.calls if c[0] == "step"] == [("step", i) for i in range(12)]
    saved = json.loads((tmp_path / "ad" / "recovery.json").read_text())
    assert saved["plan"]["ranks"] == [2, 4, 0, 3] and saved["seed"] == 0 and "provenance" in saved
    assert saved["data"]["sha256"] and len(saved["val_curve"]) == 2 and saved["peak_rss_mb"] > 0
    assert saved["trainable_params"] == saved["planned_params"]
    # the adapter loads onto a fresh base model and reproduces the trained logits
    base = tiny_llama()
    loaded = PeftModel.from_pretrained(base, tmp_path / "ad").eval()
    assert wrapped_ranks(loaded) == wrapped_ranks(res.model)
    ids = torch.tensor([tok("The sun rises.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, res.model(ids).logits, atol=1e-5)


def test_same_seed_same_run(corpus):
    cfg = RecoveryConfig(max_steps=3, lr=1e-3, batch_size=2, seq_len=16, seed=5)
    a = recover(tiny_llama(), tiny_tokenizer(), RankPlan.uniform(4, 2), cfg, data=corpus)
    b = recover(tiny_llama(), tiny_tokenizer(), RankPlan.uniform(4, 2), cfg, data=corpus)
    assert [c["loss"] for c in a.record["loss_curve"]] == [c["loss"] for c in b.record["loss_curve"]]


def test_bad_input_before_training(tmp_path, corpus):
    with pytest.raises(RankAdaptorError, match="micro_batch_size"):
        RecoveryConfig(batch_size=4, micro_batch_size=3)
    with pytest.raises(RankAdaptorError, match="max_steps"):
        RecoveryConfig(max_steps=0)
    model = tiny_llama()
    with pytest.raises(RankAdaptorError, match="5 layer ranks but the model has 4"):
        recover(model, tiny_tokenizer(), RankPlan.uniform(5, 2), RecoveryConfig(max_steps=1), data=corpus)
    assert not hasattr(model, "peft_config")  # nothing was wrapped
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    with pytest.raises(RankAdaptorError, match="d.jsonl line 2"):
        recover(model, tiny_tokenizer(), RankPlan.uniform(4, 2), RecoveryConfig(max_steps=1), data=bad)
    (tmp_path / "exists").mkdir()
    with pytest.raises(RankAdaptorError, match="already exists"):
        recover(model, tiny_tokenizer(), RankPlan.uniform(4, 2), RecoveryConfig(max_steps=1), data=corpus,
                out=tmp_path / "exists")


def test_paired_init_makes_equal_modules_train_identically_across_plans(corpus):
    """Common random numbers: two plans that differ only in layer 0. At step 0 every B is zero, so layer 3's
    gradient depends only on its own A, the batch and its dropout mask: with paired_init all three are shared
    and layer 3 ends the step identical in both runs; without it PEFT's init of the wider layer 0 draws more
    from the global RNG, so layer 3's A and the dropout masks that follow differ."""
    def layer3_B(paired):
        out = []
        for ranks in ([2, 2, 2, 2], [6, 2, 2, 2]):
            cfg = RecoveryConfig(max_steps=1, lr=1e-2, batch_size=2, seq_len=16, seed=3, max_grad_norm=None,
                                 paired_init=paired)
            res = recover(tiny_llama(), tiny_tokenizer(), RankPlan(ranks=ranks, dropout=0.3), cfg, data=corpus)
            out.append(res.model.get_base_model().get_submodule("model.layers.3.mlp.down_proj").lora_B["default"]
                       .weight.detach().clone())
        return out

    a, b = layer3_B(paired=True)
    assert a.abs().sum() > 0 and torch.equal(a, b)
    c, d = layer3_B(paired=False)
    assert not torch.equal(c, d)


def test_per_module_plan_naming_a_missing_module_is_refused_before_training(corpus):
    model = tiny_llama()
    plan = RankPlan(ranks=[2] * 4, overrides={"model.layers.7.mlp.down_proj": 4})
    with pytest.raises(RankAdaptorError, match="name no targeted module"):
        recover(model, tiny_tokenizer(), plan, RecoveryConfig(max_steps=1), data=corpus)
    assert not hasattr(model, "peft_config")  # nothing was wrapped, nothing trained
