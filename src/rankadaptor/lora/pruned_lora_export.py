"""PrunedLoRA's interfaces to PEFT and the Hugging Face Trainer.

* ``lora_modules``: the LoRA layers of a PeftModel by module name.
* ``shrink``: after training, drop the pruned (all-zero) rank components physically and rewrite
  the PEFT config with exact ``rank_pattern``/``alpha_pattern`` keys, alpha chosen so every
  module keeps its scale, so ``save_pretrained`` gives a standard adapter.
* ``hf_callback``: a ``transformers.TrainerCallback`` that drives a ``PrunedLoRACallback``.
"""

from __future__ import annotations

import logging
import math

import torch

from rankadaptor.lora.ranks import base_model_of, peft_pattern_key

log = logging.getLogger(__name__)


def lora_modules(peft_model, adapter: str = "default") -> dict:
    from peft.tuners.lora import LoraLayer

    base = base_model_of(peft_model)
    return {n: m for n, m in base.named_modules() if isinstance(m, LoraLayer) and adapter in getattr(m, "lora_A", {})}


@torch.no_grad()
def shrink(peft_model, ranks: dict[str, int] | None = None, adapter: str = "default") -> dict[str, int]:
    """Drop all-zero rank components physically; rewrite alpha so every module keeps its scale.

    A component counts as pruned when its row of A and column of B are both exactly zero (what
    ``PrunedLoRACallback`` leaves). Returns the new ranks and updates the PEFT config's
    ``rank_pattern``/``alpha_pattern`` with exact keys, so ``save_pretrained`` exports them.
    """
    config = peft_model.peft_config[adapter]
    new_ranks, alphas = {}, {}
    for name, layer in lora_modules(peft_model, adapter).items():
        A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        keep = ((A != 0).any(dim=1) | (B != 0).any(dim=0)).nonzero().flatten()
        r_new = max(int(keep.numel()), 1)  # PEFT rejects r=0; an all-zero module keeps one zero component
        if keep.numel() == 0:
            keep = torch.zeros(1, dtype=torch.long, device=A.device)
        if ranks is not None and ranks.get(name, r_new) != r_new and keep.numel() == r_new:
            log.warning("module %s: %d non-zero components but the callback counts %d", name, r_new, ranks[name])
        scale = float(layer.scaling[adapter])
        # on the adapter's device and in its dtype: an in-process evaluation on CUDA must find them there
        new_A = torch.nn.Linear(A.shape[1], r_new, bias=False, device=A.device, dtype=A.dtype)
        new_B = torch.nn.Linear(r_new, B.shape[0], bias=False, device=B.device, dtype=B.dtype)
        new_A.weight.copy_(A[keep])
        new_B.weight.copy_(B[:, keep])
        layer.lora_A[adapter] = new_A
        layer.lora_B[adapter] = new_B
        layer.r[adapter] = r_new
        alpha = scale * (math.sqrt(r_new) if config.use_rslora else r_new)
        layer.lora_alpha[adapter] = alpha
        layer.scaling[adapter] = scale
        new_ranks[name], alphas[name] = r_new, alpha
    config.rank_pattern = {peft_pattern_key(n): r for n, r in new_ranks.items()}
    config.alpha_pattern = {peft_pattern_key(n): a for n, a in alphas.items()}
    return new_ranks


def hf_callback(cb):
    """A ``transformers.TrainerCallback`` driving ``cb`` inside a Hugging Face ``Trainer``."""
    from transformers import TrainerCallback

    class _HF(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
            cb.on_train_begin(model, optimizer, state.max_steps)

        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            cb.on_after_backward(state.global_step, model)

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
            cb.on_step_end(state.global_step - 1, model, optimizer)  # global_step is already advanced

        def on_train_end(self, args, state, control, model=None, **kw):
            cb.on_train_end(model)

    return _HF()
