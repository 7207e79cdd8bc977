"""Super-adapter: nested-rank training truncates each module (or layer) to its draw, off is plain LoRA,
the result is an ordinary PEFT adapter, checkpoints resume exactly, and bad options fail early."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from rankadaptor.cli import main
from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.methods import get_method
from rankadaptor.lora.ranks import RankPlan, wrapped_ranks
from rankadaptor.lora.recover import RecoveryConfig, recover
from rankadaptor.lora.super_adapter import NestedConfig, SuperAdapterMethod
from tests.tiny_models import TINY_TEXT, save_tiny_model_and_corpus, tiny_llama, tiny_tokenizer


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(TINY_TEXT * 20))
    return path


def _config(**kw):
    return RecoveryConfig(**{"max_steps": 6, "lr": 5e-3, "batch_size": 2, "seq_len": 32, **kw})


class GradSpy:
    """After each backward: per module, the drawn rank and whether components beyond it got gradient."""

    def __init__(self, method):
        self.method, self.rows = method, []

    def on_after_backward(self, step, model):
        cb = self.method.callback
        for name, layer in cb.masks.layers.items():
            b = int(cb.masks.masks[name].sum())
            gA, gB = layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad
            self.rows.append({"step": step, "module": name, "b": b,
                              "beyond": float(gA[b:].abs().sum() + gB[:, b:].abs().sum()),
                              "within": float(gA[:b].abs().sum() + gB[:, :b].abs().sum())})


def test_probabilities_loguniform_with_full_rank_share():
    p = NestedConfig(rank=32, full_rank_prob=0.25).rank_probabilities()
    assert p.shape == (32,) and abs(float(p.sum()) - 1) < 1e-12
    assert all(p[i] > p[i + 1] for i in range(30))  # small ranks drawn most often
    assert float(p[-1]) >= 0.25
    # each doubling of the rank gets the same share of the non-full draws (log-uniform)
    octave = [float(p[2 ** k - 1:2 ** (k + 1) - 1].sum()) for k in range(4)]
    assert max(octave) - min(octave) < 0.02
    u = NestedConfig(rank=8, distribution="uniform", full_rank_prob=0).rank_probabilities()
    assert torch.allclose(u, torch.full((8,), 1 / 8, dtype=torch.float64))


@pytest.mark.parametrize("granularity", ["module", "layer"])
def test_nested_training_truncates_each_draw(corpus, granularity):
    method = SuperAdapterMethod(rank=6, granularity=granularity, full_rank_prob=0.0)
    spy = GradSpy(method)
    res = recover(tiny_llama(), tiny_tokenizer(), method=method, config=_config(), data=corpus, callbacks=[spy])
    rows = spy.rows
    assert rows and all(r["beyond"] == 0.0 for r in rows)  # components beyond the draw get no gradient
    assert sum(r["within"] > 0 for r in rows) > 0.9 * len(rows)
    assert any(r["b"] < 6 for r in rows) and len({r["b"] for r in rows}) >= 3  # real draws, not one rank
    by_step: dict = {}
    for r in rows:
        layer = r["module"].split(".mlp")[0].split(".self_attn")[0]
        by_step.setdefault((r["step"], layer), set()).add(r["b"])
    shared = all(len(v) == 1 for v in by_step.values())
    assert shared if granularity == "layer" else not shared  # one draw per layer vs per module
    draws = res.record["super_adapter"]["rank_draws"]
    groups = 4 if granularity == "layer" else 28
    assert sum(draws) == groups * (6 + 1)  # the first draw plus one per step (the last is for a step never run)


def test_nested_off_is_plain_lora_at_rank_r(corpus):
    a = recover(tiny_llama(), tiny_tokenizer(), method=SuperAdapterMethod(rank=4, nested="false"), config=_config(),
                data=corpus)
    b = recover(tiny_llama(), tiny_tokenizer(), RankPlan.uniform(4, 4), config=_config(), data=corpus)
    assert [c["loss"] for c in a.record["loss_curve"]] == [c["loss"] for c in b.record["loss_curve"]]
    on = recover(tiny_llama(), tiny_tokenizer(), method=SuperAdapterMethod(rank=4), config=_config(), data=corpus)
    assert [c["loss"] for c in on.record["loss_curve"]][1:] != [c["loss"] for c in b.record["loss_curve"]][1:]


def test_super_adapter_is_a_peft_adapter_at_full_rank(tmp_path, corpus):
    tok = tiny_tokenizer()
    res = recover(tiny_llama(), tok, method=SuperAdapterMethod(rank=6), config=_config(), data=corpus,
                  out=tmp_path / "super")
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "super").eval()
    assert set(wrapped_ranks(loaded).values()) == {6}
    ids = torch.tensor([tok("The sun rises in the east.")["input_ids"]])
    with torch.no_grad():  # eval forwards are at full rank: the masks are gone after training
        torch.testing.assert_close(loaded(ids).logits, res.model(ids).logits, atol=1e-5, rtol=0)
    record = json.loads((tmp_path / "super" / "recovery.json").read_text())
    assert record["method"] == "super" and record["super_adapter"]["rank"] == 6


class Interrupted(Exception):
    pass


class StopAt:
    def __init__(self, step):
        self.step = step

    def on_step_end(self, step, model, optimizer):
        if step == self.step:
            raise Interrupted


def test_resume_continues_the_same_draws(tmp_path, corpus):
    cfg = _config(checkpoint_every=3)
    whole = recover(tiny_llama(), tiny_tokenizer(), method=SuperAdapterMethod(rank=4), config=cfg, data=corpus,
                    out=tmp_path / "whole")
    with pytest.raises(Interrupted):
        recover(tiny_llama(), tiny_tokenizer(), method=SuperAdapterMethod(rank=4), config=cfg, data=corpus,
                out=tmp_path / "cut", callbacks=[StopAt(4)])
    resumed = recover(tiny_llama(), tiny_tokenizer(), method=SuperAdapterMethod(rank=4), config=cfg, data=corpus,
                      out=tmp_path / "cut")
    assert resumed.record["resumed_after_steps"] == [3]
    assert [c["loss"] for c in resumed.record["loss_curve"]] == [c["loss"] for c in whole.record["loss_curve"]]
    assert resumed.record["super_adapter"]["rank_draws"] == whole.record["super_adapter"]["rank_draws"]


def test_bad_options_fail_before_training(corpus):
    with pytest.raises(RankAdaptorError, match="rank = 0"):
        SuperAdapterMethod(rank=0)
    with pytest.raises(RankAdaptorError, match="granularity"):
        SuperAdapterMethod(granularity="block")
    with pytest.raises(RankAdaptorError, match="nested"):
        SuperAdapterMethod(nested="maybe")
    with pytest.raises(RankAdaptorError, match="full_rank_prob"):
        SuperAdapterMethod(full_rank_prob=1.5)
    with pytest.raises(RankAdaptorError, match="drop --target-params"):
        SuperAdapterMethod(target_params=1000)
    assert get_method("super") is SuperAdapterMethod
    model = tiny_llama()
    with pytest.raises(RankAdaptorError, match="exceeds min"):  # rank above the modules' width (64)
        recover(model, tiny_tokenizer(), method=SuperAdapterMethod(rank=80), config=_config(), data=corpus)
    assert not hasattr(model, "peft_config")


def test_cli_recover_method_super(tmp_path, capsys):
    model_dir, corpus = save_tiny_model_and_corpus(tmp_path)
    out = tmp_path / "super"
    rc = main(["recover", str(model_dir), "--method", "super", "--method-arg", "rank=4", "--method-arg",
               "granularity=layer", "--steps", "2", "--batch-size", "2", "--seq-len", "32", "--data", str(corpus),
               "--out", str(out)])
    assert rc == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8  # alpha = 2r: scale 2, as every sub-adapter under the rule
    assert json.loads((out / "recovery.json").read_text())["super_adapter"]["granularity"] == "layer"
    rc = main(["recover", str(model_dir), "--method", "super", "--method-arg", "rank=0", "--steps", "2",
               "--data", str(corpus), "--out", str(tmp_path / "bad")])
    assert rc == 2 and "rank = 0" in capsys.readouterr().err and not (tmp_path / "bad").exists()
