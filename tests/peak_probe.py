"""Run in a fresh process by tests/test_estimate.py: one LoRA recovery step's measured peak memory
next to ``rankadaptor.estimate``'s prediction, printed as JSON.

``python -m tests.peak_probe DTYPE,CHECKPOINTING,LAYERS,VOCAB,BATCH,SEQ ...`` (one result per
argument, one process for all: importing torch and transformers dominates a small step). Run it with
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


if __name__ == "__main__":
    print(json.dumps([main(*arg.split(",")) for arg in sys.argv[1:]]))
