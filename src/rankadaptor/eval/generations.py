"""Greedy completions of a few fixed prompts: what pruning and recovery do to the text a model writes.

RankAdaptor's appendix shows such side-by-side generations of the dense, pruned and recovered models;
numbers say how much, the text says what kind of damage (repetition, lost syntax, drifting topic).
Greedy decoding, so the same model gives the same text on every run.
"""

from __future__ import annotations

import torch

PROMPTS = (
    "The capital of France is",
    "To make a cup of tea, first",
    "Neural networks are trained by",
)


@torch.no_grad()
def greedy_completions(model, tokenizer, prompts=PROMPTS, max_new_tokens: int = 24) -> dict[str, str]:
    """{prompt: its greedy continuation (prompt excluded)}, one prompt at a time (no padding effects)."""
    device = next(model.parameters()).device
    out = {}
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        new = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad)[0, ids.shape[1]:]
        out[prompt] = tokenizer.decode(new, skip_special_tokens=True)
    return out
