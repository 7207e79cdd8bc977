"""What only a CUDA GPU can show (marker ``gpu``; skipped elsewhere, run by benchmarks/gpu_check.sh).

Precision on the hardware it is meant for, the estimate against the CUDA allocator's own peak,
distillation and gradient checkpointing on the GPU, device maps over the real GPUs, and every
recovery method with its callbacks on CUDA tensors.
"""

import copy

import pytest
import torch

from rankadaptor import device as dev
from rankadaptor.estimate import PeakMemory, estimate_recover
from rankadaptor.lora.distill import DistillConfig, Distiller
from rankadaptor.lora.ranks import RankPlan, count_lora_params
from rankadaptor.lora.recover import RecoveryConfig, recover
from tests.tiny_models import TINY_TEXT, tiny_llama, tiny_tokenizer

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda", 0)
IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11, 64, 128]])


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(TINY_TEXT * 20))
    return path


def _recover(model, corpus, **cfg):
    config = RecoveryConfig(**{**dict(max_steps=3, batch_size=2, seq_len=16, lr=1e-2, max_val=2), **cfg})
    return recover(model, tiny_tokenizer(), RankPlan(ranks=[2] * 4), config, data=corpus)


def test_auto_dtype_on_this_gpu():
    major, _ = torch.cuda.get_device_capability(0)
    assert dev.resolve_dtype("auto", "cuda") == (torch.bfloat16 if major >= 8 else torch.float32)


def test_bfloat16_recovery_on_the_gpu_close_to_float32(corpus):
    r16 = _recover(tiny_llama().to(CUDA, torch.bfloat16), corpus)
    r32 = _recover(tiny_llama().to(CUDA), corpus)
    assert r16.record["dtype"] == "bfloat16" and r16.record["lora_dtype"] == "float32"
    assert r16.record["device"].startswith("cuda")
    with torch.no_grad():
        a, b = r32.model(IDS.to(CUDA)).logits, r16.model(IDS.to(CUDA)).logits.float()
    assert (a - b).abs().max() <= 0.03 * a.abs().max()


def test_gradient_checkpointing_on_the_gpu_same_losses(corpus):
    plain = _recover(tiny_llama().to(CUDA), corpus)
    ckpt = _recover(tiny_llama().to(CUDA), corpus, gradient_checkpointing=True)
    for a, b in zip(plain.record["loss_curve"], ckpt.record["loss_curve"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)


def test_distillation_on_the_gpu(corpus):
    teacher = tiny_llama(seed=2).to(CUDA, torch.bfloat16)
    res = recover(tiny_llama(seed=1).to(CUDA, torch.bfloat16), tiny_tokenizer(), RankPlan.uniform(4, 2),
                  RecoveryConfig(max_steps=4, batch_size=2, seq_len=16, lr=5e-3, max_val=2), data=corpus,
                  distill=Distiller(teacher, DistillConfig(alpha=0.8)))
    curve = res.record["loss_curve"]
    assert all(torch.isfinite(torch.tensor(c["loss"])) for c in curve) and curve[-1]["kl"] < curve[0]["kl"]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimate_against_the_allocator_peak(checkpointing):
    """A LLaMA block stack at a width where the step dominates: prediction within 25 % of the measured peak."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rankadaptor.lora.memory import enable_gradient_checkpointing, lora_in_float32
    from rankadaptor.lora.ranks import apply_plan

    cfg = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                      num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=1024)
    with torch.device(CUDA):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    plan = RankPlan(ranks=[8] * 4)
    est = estimate_recover(model, 4, 256, count_lora_params(model, plan), device=CUDA,
                           gradient_checkpointing=checkpointing, probe=False)
    peft_model = apply_plan(model, plan)
    params = lora_in_float32(peft_model)
    if checkpointing:
        enable_gradient_checkpointing(peft_model)
    peft_model.train()
    ids = torch.randint(0, 32000, (4, 256), device=CUDA)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    for _ in range(2):
        with PeakMemory(CUDA) as peak:
            peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    predicted = est.parts["activations"] + est.parts["loss"] + 12 * sum(p.numel() for p in params)
    assert abs(predicted / peak.bytes - 1) <= 0.25, (predicted, peak.bytes)


def test_every_method_runs_on_the_gpu(corpus):
    from rankadaptor.lora.adalora import AdaLoraMethod
    from rankadaptor.lora.pruned_lora import PrunedLoRAMethod

    for method in (AdaLoraMethod(target_params=2 * 7 * 4 * 128),
                   PrunedLoRAMethod(init_rank=4, target_rank=2, prune_every=2, warmup_steps=1, final_steps=1)):
        res = recover(tiny_llama().to(CUDA), tiny_tokenizer(), config=RecoveryConfig(max_steps=8, batch_size=2,
                      seq_len=16, max_val=2), data=corpus, method=method)
        assert all(p.device.type == "cuda" for p in res.model.parameters())


def test_device_map_on_the_real_gpus(tmp_path):
    from tests.tiny_models import save_tiny_model_and_corpus

    from rankadaptor.models.loading import load_model

    model_dir, _ = save_tiny_model_and_corpus(tmp_path)
    mapped = load_model(model_dir, device_map="auto")
    single = load_model(model_dir, device="cuda:0")
    with torch.no_grad():
        torch.testing.assert_close(mapped.model(IDS.to(dev.model_device(mapped.model))).logits.float().cpu(),
                                   single.model(IDS.to(CUDA)).logits.float().cpu(), rtol=1e-3, atol=1e-3)
    if torch.cuda.device_count() > 1:  # a forced split over two GPUs
        free = {i: 400_000 for i in range(2)}
        plan = dev.plan_device_map(copy.deepcopy(single.model), free=free, headroom=1.0)
        assert {0, 1} <= set(plan.values())
