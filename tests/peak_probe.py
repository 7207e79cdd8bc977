"""Run in a fresh process by tests/test_estimate.py: one LoRA recovery step's measured peak memory
next to ``rankadaptor.estimate``'s prediction, printed as JSON.

``python -m tests.peak_probe DTYPE,CHECKPOINTING,LAYERS,VOCAB,BATCH,SEQ ...`` (one result per
argument, one process for all: importing torch and transformers dominates a small step);
``prune,DTYPE,LAYERS,HIDDEN,INTERMEDIATE`` measures a Taylor (element1) prune instead. Run it with
``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns every freed tensor to the system and the
resident set follows the live tensors.
"""

import json
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rankadaptor.estimate import PeakMemory, estimate_recover
from rankadaptor.lora.memory import enable_gradient_checkpointing, lora_in_float32
from rankadaptor.lora.ranks import RankPlan, apply_plan, count_lora_params


def main(dtype: str, checkpointing: str, layers: str, vocab: str, batch: str, seq: str) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    n, v, b, s = int(layers), int(vocab), int(batch), int(seq)
    cfg = LlamaConfig(vocab_size=v, hidden_size=256, intermediate_size=688, num_hidden_layers=n,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    plan = RankPlan(ranks=[8] * n)
    est = estimate_recover(model, b, s, count_lora_params(model, plan), device="cpu",
                           gradient_checkpointing=checkpointing == "gc", probe=False, available=1 << 40)
    peft_model = apply_plan(model, plan)
    params = lora_in_float32(peft_model)
    if checkpointing == "gc":
        enable_gradient_checkpointing(peft_model)
    peft_model.train()
    ids = torch.randint(0, v, (b, s))
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    for _ in range(2):  # the second step has AdamW's moments, as every later step does
        with PeakMemory("cpu") as peak:
            peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    lora = sum(p.numel() for p in params)
    # weights and LoRA weights were resident before the step; it adds the rest
    predicted = est.parts["activations"] + est.parts["loss"] + 12 * lora
    return {"measured": peak.bytes, "predicted": predicted, "estimate": est.to_dict()}


def prune(dtype: str, layers: str, hidden: str, intermediate: str) -> dict:
    """Taylor importance + width pruning of a LLaMA (8 heads over 4 KV groups) on 10 x 128 calibration
    tokens: the peak above the resident model next to the estimate's parts other than the weights."""
    from rankadaptor.estimate import estimate_prune
    from rankadaptor.prune.pruning import PruneConfig, prune_model
    from tests.tiny_models import TINY_TEXT, tiny_tokenizer

    torch.set_num_threads(1)
    n, h, inter = int(layers), int(hidden), int(intermediate)
    cfg = LlamaConfig(vocab_size=320, hidden_size=h, intermediate_size=inter, num_hidden_layers=n,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256,
                      tie_word_embeddings=True)
    # one-time costs at this width (imports, kernel buffers: measured ~20 MiB) paid on a 1-layer copy first
    warm = LlamaForCausalLM(LlamaConfig(**{**cfg.to_dict(), "num_hidden_layers": 1})).to(getattr(torch, dtype))
    prune_model(warm.eval(), tiny_tokenizer(), PruneConfig(ratio=0.2, layers=(0, 1)), TINY_TEXT * 400, inplace=True)
    del warm
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype)).eval()
    est = estimate_prune(model, 10, 128, device="cpu", probe=False, available=1 << 40)
    config = PruneConfig(ratio=0.2, importance="element1", layers=(0, n), calibration=10, seq_len=128)
    with PeakMemory("cpu") as peak:
        prune_model(model, tiny_tokenizer(), config, TINY_TEXT * 400, inplace=True)
    return {"measured": peak.bytes, "predicted": est.peak - est.parts["weights"], "estimate": est.to_dict()}


if __name__ == "__main__":
    print(json.dumps([prune(*arg.split(",")[1:]) if arg.startswith("prune,") else main(*arg.split(","))
                      for arg in sys.argv[1:]]))
