"""``rankadaptor.eval.adapter``: attaching saved adapters, LoRA and AdaLoRA alike."""

from __future__ import annotations

import torch

from rankadaptor.eval.adapter import check_adapter_fits, load_adapter
from tests.tiny_models import tiny_llama


def test_adalora_adapter_as_recover_writes_it_attaches(tmp_path):
    # PEFT saves AdaLoRA factors without the ".weight" suffix (base_model...q_proj.lora_A); an
    # adapter from `recover --method adalora` must evaluate, not fail as "no LoRA tensors".
    from peft import AdaLoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = AdaLoraConfig(init_r=4, target_r=2, total_step=10, target_modules=["q_proj", "v_proj"])
    get_peft_model(tiny_llama(), cfg).save_pretrained(str(tmp_path / "ada"))
    ranks = check_adapter_fits(tiny_llama(), tmp_path / "ada")
    assert len(ranks) == 8 and set(ranks.values()) == {4}
    model, identity = load_adapter(tiny_llama(), tmp_path / "ada")
    assert identity["peft_type"] == "ADALORA" and identity["n_modules"] == 8
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[3, 4, 5]])).logits).all()
