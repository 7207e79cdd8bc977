"""Shared builders for the PARA tests: random PEFT LoRA adapters on the tiny LLaMA."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(path: Path, r: int = 8, alpha: float = 16, seed: int = 0, **lora_kwargs) -> Path:
    """Save a PEFT adapter with random (non-zero) A and B on ``tiny_llama()``."""
    from peft import LoraConfig, get_peft_model

    from tests.tiny_models import tiny_llama

    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=lora_kwargs.pop("target_modules", TARGETS),
                     init_lora_weights=False, **lora_kwargs)
    model = get_peft_model(tiny_llama(), cfg)
    # Give modules different spectra so a global threshold has something to choose between.
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            if "lora_B" in name:
                p.mul_(0.5 + (i % 5))
    model.save_pretrained(str(path))
    return path


def load_peft(path: Path):
    from peft import PeftModel

    from tests.tiny_models import tiny_llama

    return PeftModel.from_pretrained(tiny_llama(), str(path)).eval()


def merged_deltas(path: Path) -> dict[str, torch.Tensor]:
    """Per module: merged weight minus base weight, computed by PEFT itself."""
    from tests.tiny_models import tiny_llama

    base = dict(tiny_llama().named_parameters())
    merged = load_peft(path).merge_and_unload()
    out = {}
    for name, p in merged.named_parameters():
        if name.endswith(".weight") and name in base and not torch.equal(p, base[name]):
            out[name[: -len(".weight")]] = (p - base[name]).detach().double()
    return out


def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*")):
        h.update(str(f.relative_to(path)).encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()
