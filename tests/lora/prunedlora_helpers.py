"""Shared pieces of the PrunedLoRA tests: a LoRA regression with a known quadratic loss, explicit gates."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from peft import LoraConfig, get_peft_model

D_IN, D_OUT, RANK, TRUE_RANK = 16, 12, 4, 4


class Regression(torch.nn.Module):
    """``y = W x``; loss ½‖y − target‖² per example, averaged (the NLL of unit-variance Gaussian noise).

    With x ~ N(0, I) and target = W* x + ε, ε ~ N(0, I), the expected loss is ½‖W − W*‖²_F + const:
    a loss known exactly, quadratic in the LoRA gates."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(D_IN, D_OUT, bias=False)

    def forward(self, x, target):
        return 0.5 * (self.lin(x) - target).pow(2).sum(-1).mean()


def regression_task(seed: int = 0):
    """(LoRA-wrapped regression model at rank RANK, W*, a sampler of (x, target) batches)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Regression()
    W0 = model.lin.weight.detach().clone()
    W_true = W0 + 0.8 * torch.randn(D_OUT, TRUE_RANK, generator=g) @ torch.randn(TRUE_RANK, D_IN, generator=g) / 2
    peft = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=["lin"], lora_dropout=0.0))

    def sample(n: int):
        x = torch.randn(n, D_IN, generator=g)
        return x, x @ W_true.T + torch.randn(n, D_OUT, generator=g)

    return peft, W_true, sample


def lora_layer(peft):
    return peft.base_model.model.lin


def effective_weight(peft, gates=None) -> torch.Tensor:
    """W0 + s·B·diag(gates)·A of the regression's LoRA layer."""
    layer = lora_layer(peft)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    g = torch.ones(A.shape[0]) if gates is None else gates
    return layer.base_layer.weight + layer.scaling["default"] * (B * g.to(B.dtype)) @ A


def expected_loss(W, W_true) -> float:
    """The regression's expected loss up to its constant: ½‖W − W*‖²_F."""
    return float(0.5 * (W - W_true).pow(2).sum())


@contextmanager
def explicit_gates(layer, adapter: str = "default"):
    """Run ``layer``'s lora_B through explicit gates g (yielded, requires grad): ∂L/∂g by autograd."""
    lora_B = layer.lora_B[adapter]
    g = torch.ones(lora_B.weight.shape[1], dtype=lora_B.weight.dtype, requires_grad=True)
    lora_B.forward = lambda h: torch.nn.functional.linear(h * g, lora_B.weight)
    try:
        yield g
    finally:
        del lora_B.forward
