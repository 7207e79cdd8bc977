"""Shared bits for the pruning tests: tiny models of every supported family, calibration text."""

from __future__ import annotations

import torch
from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from tests.tiny_models import TINY_TEXT, tiny_llama

TEXTS = TINY_TEXT * 30

_COMMON = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1,
               eos_token_id=2, pad_token_id=0)


def tiny_family(name: str, seed: int = 0, **overrides):
    """A random 4-layer model of the named family (GQA 4 heads / 2 KV heads unless overridden)."""
    torch.manual_seed(seed)
    if name == "llama":
        return tiny_llama(seed=seed, **overrides)
    cfg = {**_COMMON, **overrides}
    if name == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=16, tie_word_embeddings=True, **cfg))
    elif name == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=False, **cfg))
    elif name == "mistral":
        model = MistralForCausalLM(MistralConfig(tie_word_embeddings=False, **cfg))
    else:
        raise ValueError(name)
    model.eval()
    # Non-trivial q/k norm weights and biases, so slicing mistakes show up in the logits.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def ids(seed: int = 0, length: int = 12) -> torch.Tensor:
    return torch.randint(3, 256, (2, length), generator=torch.Generator().manual_seed(seed))
