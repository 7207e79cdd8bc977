"""Recovery at low precision and with gradient checkpointing, on tiny models on the CPU.

Precision: a bfloat16 base trains float32 LoRA weights and AdamW state, its loss is finite, the
saved adapter reloads onto a fresh bfloat16 base with the same logits, and those logits stay within
a stated tolerance of the same recovery in float32. Gradient checkpointing: the same losses and
adapter as without it, and it really runs (each decoder block's forward runs twice per step).
"""

import copy

import pytest
import torch
from peft import PeftModel

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.ranks import PlanMethod, RankPlan
from rankadaptor.lora.recover import RecoveryConfig, recover
from tests.tiny_models import TINY_TEXT, tiny_llama, tiny_tokenizer

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11, 64, 128]])
# bfloat16 keeps 8 significant bits (a relative step of 2^-8 = 0.4 %); through four blocks the tiny
# model's logits move by ~0.5 % of the largest logit. Tolerance: 3 % of it (absolute, with the scale).
BF16_RTOL = 0.03


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(TINY_TEXT * 20))
    return path


def _recover(model, corpus, out=None, **cfg):
    config = RecoveryConfig(**{**dict(max_steps=3, batch_size=2, seq_len=16, lr=1e-2, max_val=2), **cfg})
    return recover(model, tiny_tokenizer(), RankPlan(ranks=[2] * 4), config, data=corpus, out=out)


class OptimizerSpy:
    def on_train_begin(self, model, optimizer, total_steps):
        self.optimizer = optimizer


def test_bfloat16_base_trains_float32_lora_and_reloads(tmp_path, corpus):
    base = tiny_llama().to(torch.bfloat16)
    spy = OptimizerSpy()
    config = RecoveryConfig(max_steps=3, batch_size=2, seq_len=16, lr=1e-2, max_val=2)
    res = recover(base, tiny_tokenizer(), RankPlan(ranks=[2] * 4), config, data=corpus, out=tmp_path / "ad",
                  callbacks=[spy])
    model, rec = res.model, res.record
    assert all(torch.isfinite(torch.tensor([c["loss"] for c in rec["loss_curve"]])))
    assert rec["dtype"] == "bfloat16" and rec["lora_dtype"] == "float32"
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and {p.dtype for p in trained} == {torch.float32}
    states = [t for st in spy.optimizer.state.values() for t in st.values() if torch.is_tensor(t) and t.dim()]
    assert states and {t.dtype for t in states} == {torch.float32}
    with torch.no_grad():
        trained_logits = model(IDS).logits
        reloaded = PeftModel.from_pretrained(tiny_llama().to(torch.bfloat16), str(tmp_path / "ad")).eval()
        torch.testing.assert_close(reloaded(IDS).logits, trained_logits, rtol=0, atol=0)


def test_bfloat16_recovery_logits_close_to_float32(corpus):
    r16 = _recover(tiny_llama().to(torch.bfloat16), corpus)
    r32 = _recover(tiny_llama(), corpus)
    with torch.no_grad():
        a, b = r32.model(IDS).logits, r16.model(IDS).logits.float()
    scale = a.abs().max()
    assert (a - b).abs().max() <= BF16_RTOL * scale
    # the trained LoRA weights moved the same way: the bf16 run did learn, not just stay at init
    lora16 = {n: p for n, p in r16.model.named_parameters() if "lora_B" in n}
    lora32 = {n: p for n, p in r32.model.named_parameters() if "lora_B" in n}
    assert all(p.abs().sum() > 0 for p in lora16.values())
    cos = torch.nn.functional.cosine_similarity(torch.cat([p.flatten() for p in lora16.values()]),
                                                torch.cat([p.flatten() for p in lora32.values()]), dim=0)
    assert cos > 0.9


class HalfLoRA(PlanMethod):
    """A method that leaves its LoRA weights in the base's bfloat16 (PEFT's autocast turned off)."""

    def prepare(self, model, config, total_steps):
        from peft import get_peft_model

        peft_model = get_peft_model(model, self.plan.to_lora_config(model), autocast_adapter_dtype=False)
        assert {p.dtype for p in peft_model.parameters() if p.requires_grad} == {torch.bfloat16}
        return peft_model, [], {}


def test_every_method_trains_lora_in_float32(corpus):
    config = RecoveryConfig(max_steps=1, batch_size=2, seq_len=16, max_val=2)
    res = recover(tiny_llama().to(torch.bfloat16), tiny_tokenizer(), config=config, data=corpus,
                  method=HalfLoRA(RankPlan(ranks=[2] * 4)))
    assert {p.dtype for p in res.model.parameters() if p.requires_grad} == {torch.float32}


def test_float16_base_on_the_cpu_is_refused_before_any_data(tmp_path):
    with pytest.raises(RankAdaptorError, match="float16 cannot train on the CPU"):
        recover(tiny_llama().to(torch.float16), tiny_tokenizer(), RankPlan(ranks=[2] * 4),
                RecoveryConfig(max_steps=1), data=tmp_path / "missing.txt")


class BlockCalls:
    """Counts forward runs of every decoder block's MLP (a recomputation in backward counts too)."""

    def __init__(self, model):
        self.n = 0
        for layer in model.model.layers:
            layer.mlp.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        if module.training:
            self.n += 1


def test_gradient_checkpointing_same_losses_and_adapter_and_really_on(corpus):
    m_plain, m_ckpt = tiny_llama(), tiny_llama()
    calls_plain, calls_ckpt = BlockCalls(m_plain), BlockCalls(m_ckpt)
    plain = _recover(m_plain, corpus, micro_batch_size=1)
    ckpt = _recover(m_ckpt, corpus, micro_batch_size=1, gradient_checkpointing=True)
    # 3 steps x 2 micro-batches x 4 blocks forward; checkpointing recomputes each block once in backward
    assert calls_plain.n == 3 * 2 * 4 and calls_ckpt.n == 2 * calls_plain.n
    for a, b in zip(plain.record["loss_curve"], ckpt.record["loss_curve"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-7)
    for (n, p), (_, q) in zip(plain.model.named_parameters(), ckpt.model.named_parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=n)
    assert ckpt.record["config"]["gradient_checkpointing"] is True
    base = ckpt.model.get_base_model()
    assert not base.is_gradient_checkpointing and base.config.use_cache  # handed back as it came


def test_gradient_checkpointing_trains_every_lora_weight(corpus):
    """The PEFT pitfall: checkpointed blocks whose inputs need no grad return none for LoRA weights."""
    model = tiny_llama()
    before = copy.deepcopy(model)
    res = _recover(model, corpus, max_steps=2, gradient_checkpointing=True)
    a_or_b = [(n, p) for n, p in res.model.named_parameters() if "lora_B" in n]
    assert len(a_or_b) == 4 * 7 and all(p.abs().sum() > 0 for _, p in a_or_b)  # B starts at zero
    assert before is not model
