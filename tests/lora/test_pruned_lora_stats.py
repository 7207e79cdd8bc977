"""PrunedLoRA's gate statistics: hooks give ∂L/∂g and an empirical Fisher in loss units."""

import pytest
import torch

from rankadaptor.lora.obs import compensation, damped, obs_set, quadratic_change
from rankadaptor.lora.pruned_lora import PrunedLoRACallback, PruneSchedule
from rankadaptor.lora.ranks import RankPlan, apply_plan
from tests.lora.prunedlora_helpers import (RANK, effective_weight, expected_loss, explicit_gates, lora_layer,
                                           regression_task)
from tests.tiny_models import tiny_llama


def _callback(model, init_rank, steps=100, **kw):
    cb = PrunedLoRACallback(PruneSchedule(init_rank=init_rank, target_rank=init_rank - 1, **kw), shrink_at_end=False)
    cb.on_train_begin(model, None, steps)
    return cb


def test_hook_gate_gradient_equals_autograd_through_explicit_gates():
    torch.manual_seed(0)
    model = apply_plan(tiny_llama(), RankPlan.uniform(4, 4, dropout=0.0))
    cb = _callback(model, 4)
    for p in model.parameters():  # B starts at zero: give every component a gradient
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    name, m = next(iter(cb.modules.items()))
    layer = cb._hooks  # noqa: F841  (the hooks are live)
    from rankadaptor.lora.pruned_lora_export import lora_modules

    model.train()
    ids = torch.randint(3, 300, (3, 10), generator=torch.Generator().manual_seed(1))
    with explicit_gates(lora_modules(model)[name]) as g:
        model(input_ids=ids, labels=ids).loss.backward()
    cb.on_after_backward(0, model)
    torch.testing.assert_close(m.stats.grad, g.grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("micro", [1, 2])
def test_token_fisher_is_the_mean_outer_product_of_per_example_gradients(micro):
    """Regression: one position per example, so F = (1/n) Σ_b ∇ℓ_b ∇ℓ_bᵀ, whatever the micro-batching."""
    peft, _, sample = regression_task(1)
    for p in peft.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.3)
    cb = _callback(peft, RANK)
    peft.train()
    x, t = sample(12)
    for chunk in range(micro):  # the recover loop: loss / micro per micro-batch, then one step
        sl = slice(chunk * 12 // micro, (chunk + 1) * 12 // micro)
        (peft(x[sl], target=t[sl]) / micro).backward()
    cb.on_after_backward(0, peft)
    per_example = []
    for b in range(12):
        with explicit_gates(lora_layer(peft)) as g:
            peft(x[b:b + 1], target=t[b:b + 1]).backward()
        per_example.append(g.grad.double())
    G = torch.stack(per_example)
    stats = next(iter(cb.modules.values())).stats
    torch.testing.assert_close(stats.fisher.double(), G.T @ G / 12, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(stats.grad.double(), G.mean(0), rtol=1e-4, atol=1e-7)


def test_example_fisher_on_a_causal_lm_counts_label_tokens():
    """Per-sequence gate gradients of the mean-token loss: F = N·Σ_b g_b g_bᵀ, N the label tokens."""
    torch.manual_seed(0)
    model = apply_plan(tiny_llama(), RankPlan.uniform(4, 3, dropout=0.0))
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    cb = _callback(model, 3, fisher="example")
    name, m = next(iter(cb.modules.items()))
    model.train()
    ids = torch.randint(3, 300, (3, 9), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[2, 6:] = -100  # padding: fewer label tokens
    model(input_ids=ids, labels=labels).loss.backward()
    cb.on_after_backward(0, model)
    n = int((labels[:, 1:] != -100).sum())
    from rankadaptor.lora.pruned_lora_export import lora_modules

    rows = []
    for b in range(3):
        with explicit_gates(lora_modules(model)[name]) as g:
            logits = model(input_ids=ids[b:b + 1]).logits[0, :-1]
            ce = torch.nn.functional.cross_entropy(logits, labels[b, 1:], ignore_index=-100, reduction="sum")
            (ce / n).backward()
        rows.append(g.grad.double())
    G = torch.stack(rows)
    torch.testing.assert_close(m.stats.fisher.double(), n * G.T @ G, rtol=1e-4, atol=1e-10)


def test_subsampled_positions_scale_up_and_evaluation_passes_do_not_count():
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (4, 16), generator=torch.Generator().manual_seed(3))
    fishers = {}
    for tokens in (None, 64, 16):
        model = apply_plan(tiny_llama(), RankPlan.uniform(4, 3, dropout=0.0))
        for p in model.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, generator=torch.Generator().manual_seed(4), std=0.1)
        cb = _callback(model, 3, fisher_tokens=tokens)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        with torch.no_grad():
            model(input_ids=ids)  # an evaluation pass between backward and the step
        cb.on_after_backward(0, model)
        fishers[tokens] = torch.stack([m.stats.fisher for m in cb.modules.values()])
    torch.testing.assert_close(fishers[64], fishers[None])  # 64 = every position: nothing dropped
    ratio = torch.diagonal(fishers[16], dim1=1, dim2=2).sum() / torch.diagonal(fishers[None], dim1=1, dim2=2).sum()
    assert 0.5 < float(ratio) < 2.0  # a quarter of the positions, scaled up by 4


def test_predicted_loss_increase_matches_a_known_quadratic_loss():
    """Trained LoRA regression (expected loss ½‖W − W*‖², exactly quadratic in the gates): for every
    component, the predicted loss change of removing it with the OBS update is within 20 % of the
    exact one. The old statistic (EMA of outer products of mini-batch mean gradients) is off by ~1/batch."""
    peft, W_true, sample = regression_task(0)
    params = [p for p in peft.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.02)
    for i in range(800):
        if i == 600:
            opt.param_groups[0]["lr"] = 0.002
        x, t = sample(512)
        opt.zero_grad()
        peft(x, target=t).backward()
        opt.step()
    cb = _callback(peft, RANK)
    B = lora_layer(peft).lora_B["default"].weight
    old = torch.zeros(RANK, RANK, dtype=torch.float64)
    for step in range(40):  # statistics only: the weights stay where training left them
        x, t = sample(256)
        opt.zero_grad()
        peft(x, target=t).backward()
        cb.on_after_backward(step, peft)
        mean_grad = (B * B.grad).sum(0).double()
        old.mul_(0.9 if step else 0.0).add_(torch.outer(mean_grad, mean_grad), alpha=0.1 if step else 1.0)
    view = cb._view(next(iter(cb.modules.values())))
    old_inv = torch.linalg.inv(damped(old, 0.1))
    with torch.no_grad():
        base = expected_loss(effective_weight(peft), W_true)
        for j in range(RANK):
            delta, _ = compensation(view.Finv, [j], 0.5)
            measured = expected_loss(effective_weight(peft, 1 + delta.float()), W_true) - base
            predicted = quadratic_change(view.F, delta)
            assert predicted == pytest.approx(measured, rel=0.2), j
            _, old_delta = obs_set(old_inv, torch.ones(RANK, dtype=torch.float64), [j])
            old_measured = expected_loss(effective_weight(peft, 1 + old_delta.float()), W_true) - base
            old_predicted = 0.5 / float(old_inv[j, j])
            assert abs(old_predicted - old_measured) > 4 * abs(predicted - measured)
            assert abs(old_predicted / old_measured - 1) > 0.5
