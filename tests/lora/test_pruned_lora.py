"""PrunedLoRA in training: no reactivation, compensation that helps, optimizer moments that follow the
fold, device-safe pruning and export, the budget check in the record, recover and Trainer."""

import copy
from dataclasses import replace

import pytest
import torch
from peft import PeftModel

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.methods import get_method
from rankadaptor.lora.obs import get_scorer
from rankadaptor.lora.pruned_lora import PruneSchedule, PrunedLoRACallback, PrunedLoRAMethod, hf_callback, shrink
from rankadaptor.lora.ranks import RankPlan, apply_plan, wrapped_ranks
from rankadaptor.lora.recover import RecoveryConfig, recover
from tests.lora.prunedlora_helpers import lora_layer, regression_task
from tests.tiny_models import TINY_TEXT, tiny_llama, tiny_tokenizer


def _train(schedule, steps, seed=0, model=None, dtype=None):
    """A manual loop with the recover hook protocol; shrink left to the caller."""
    torch.manual_seed(seed)
    model = model or apply_plan(tiny_llama() if dtype is None else tiny_llama().to(dtype),
                                RankPlan.uniform(4, schedule.init_rank, dropout=0.0))
    cb = PrunedLoRACallback(schedule, shrink_at_end=False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    cb.on_train_begin(model, opt, steps)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        ids = torch.randint(3, 300, (4, 16), generator=gen, device="cpu")  # explicit: the device test runs under "meta"
        model(input_ids=ids, labels=ids).loss.backward()
        cb.on_after_backward(step, model)
        opt.step()
        cb.on_step_end(step, model, opt)
        opt.zero_grad()
    return model, cb, opt


@pytest.mark.parametrize("scorer", ["obs", "taylor", "activation", "magnitude"])
def test_pruned_components_stay_zero_in_weights_and_adam_state(scorer):
    sched = PruneSchedule(init_rank=8, target_rank=4, prune_every=2, prune_k=2, warmup_steps=2, scorer=scorer)
    model, cb, opt = _train(sched, 12)  # events after steps 4 and 6, then six more optimizer steps
    assert [e["step"] for e in cb.events] == [4, 6]
    assert set(cb.ranks().values()) == {4}
    for m in cb.modules.values():
        dead = ~m.mask
        assert dead.sum() == 4 and m.active == m.mask.nonzero().flatten().tolist()
        assert torch.all(m.A[dead] == 0) and torch.all(m.B[:, dead] == 0)
        assert torch.any(m.B[:, m.mask] != 0)  # the kept components did train
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.all(opt.state[m.A][key][dead] == 0)
            assert torch.all(opt.state[m.B][key][:, dead] == 0)


def test_global_scope_export_reloads_with_equal_logits(tmp_path):
    sched = PruneSchedule(init_rank=8, target_rank=3, prune_every=2, prune_k=2, warmup_steps=2, scope="global")
    model, cb, _ = _train(sched, 14)
    assert cb.params() <= cb.target_params and cb.budget()["at_budget"]
    assert len(set(cb.ranks().values())) > 1  # global scope gives non-uniform ranks
    model.eval()
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        masked = model(input_ids=ids).logits
    new_ranks = shrink(model, cb.ranks())
    assert new_ranks == cb.ranks()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, masked, rtol=1e-5, atol=1e-5)
    model.save_pretrained(str(tmp_path / "ad"))
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "ad").eval()
    assert wrapped_ranks(loaded) == cb.ranks()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, masked, rtol=1e-5, atol=1e-5)


# ---- compensation ------------------------------------------------------------------------------
def _corpus_batches(gen, n, b=8, T=24):
    tok = tiny_tokenizer()
    data = torch.tensor([i for t in TINY_TEXT * 30 for i in tok(t)["input_ids"] + [2]])
    for _ in range(n):
        starts = torch.randint(0, len(data) - T, (b,), generator=gen)
        yield torch.stack([data[i:i + T] for i in starts])


def _loss(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        return sum(float(model(input_ids=x, labels=x).loss) for x in batches) / len(batches)


@pytest.fixture(scope="module")
def recovering():
    """The regime PrunedLoRA works in: a tiny LM fitted to its corpus, damaged (every other MLP channel
    zeroed: a pruned model), then recovering with LoRA r=8 for 60 steps under PrunedLoRA's statistics.

    (A random tiny LM whose LoRA barely trains is no test bed: far from any fit, its curvature is not
    Gauss-Newton's and no Fisher estimates it.)"""
    torch.manual_seed(0)
    model = tiny_llama(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for x in _corpus_batches(torch.Generator().manual_seed(123), 150):
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, ::2] = 0.0
    model = apply_plan(model, RankPlan.uniform(4, 8, dropout=0.0))
    cb = PrunedLoRACallback(PruneSchedule(init_rank=8, target_rank=5, prune_k=3), shrink_at_end=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    cb.on_train_begin(model, opt, 1000)
    for step, x in enumerate(_corpus_batches(torch.Generator().manual_seed(0), 60)):
        model.train()
        model(input_ids=x, labels=x).loss.backward()
        cb.on_after_backward(step, model)
        opt.step()
        cb.on_step_end(step, model, opt)
        opt.zero_grad()
    cb.on_train_end(model)  # removes the hooks; nothing pruned yet
    return model, cb, list(_corpus_batches(torch.Generator().manual_seed(99), 10))


@pytest.mark.parametrize("scorer", ["obs", "magnitude"])
def test_compensation_raises_the_loss_less_than_the_same_pruning_without_it(recovering, scorer):
    """Three of eight components removed from every module: the same components either way (checked),
    held-out loss increase at least 5 % smaller with the OBS update folded into B."""
    model, cb, held = recovering
    base = _loss(model, held)
    increase, kept = {}, {}
    for compensate in (True, False):
        m2, cb2 = copy.deepcopy((model, cb))
        cb2.schedule = replace(cb2.schedule, compensate=compensate, scorer=scorer)
        cb2.scorer = get_scorer(scorer)
        cb2._prune_event(60, None)
        increase[compensate] = _loss(m2, held) - base
        kept[compensate] = [m.active for m in cb2.modules.values()]
        assert set(cb2.ranks().values()) == {5}
    assert kept[True] == kept[False]
    assert 0 < increase[True] < 0.95 * increase[False], increase


def test_fold_rescales_adam_moments_to_the_folded_weights():
    """After ``B[:, i] *= d_i`` the moments are those the same gradients have at the folded weights:
    ∂L/∂B does not depend on B (kept), row i of ∂L/∂A scales by d_i (first moment ×d, second ×d²)."""
    peft, _, sample = regression_task(2)
    layer = lora_layer(peft)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    torch.nn.init.normal_(B, std=0.3)
    x, _ = sample(32)
    e = torch.randn(32, 12, generator=torch.Generator().manual_seed(1))  # a fixed output error: L = Σ e·y

    def grads():
        A.grad = B.grad = None
        (layer(x) * e).sum().backward()
        return A.grad.clone(), B.grad.clone()

    opt = torch.optim.Adam([A, B], lr=0.0)  # lr 0: one step only fills the moments
    gA, gB = grads()
    opt.step()
    cb = PrunedLoRACallback(PruneSchedule(init_rank=4, target_rank=3), shrink_at_end=False)
    cb.on_train_begin(peft, opt, 100)
    d = torch.tensor([0.5, 1.3, 1.0, 0.8])
    next(iter(cb.modules.values())).fold(d, opt)
    fA, fB = grads()
    torch.testing.assert_close(fB, gB)
    torch.testing.assert_close(fA, d[:, None] * gA)
    b1, b2 = opt.param_groups[0]["betas"]
    torch.testing.assert_close(opt.state[A]["exp_avg"], (1 - b1) * fA)
    torch.testing.assert_close(opt.state[A]["exp_avg_sq"], (1 - b2) * fA**2)
    torch.testing.assert_close(opt.state[B]["exp_avg"], (1 - b1) * fB)
    torch.testing.assert_close(opt.state[B]["exp_avg_sq"], (1 - b2) * fB**2)


def test_compensated_gates_stay_in_the_trust_region(monkeypatch):
    from rankadaptor.lora import pruned_lora

    folds, fold = [], pruned_lora._Module.fold

    def spy(self, d, optimizer=None):
        folds.append(d[d != 0].clone())  # the kept components' gates (removed ones get 0)
        fold(self, d, optimizer)

    monkeypatch.setattr(pruned_lora._Module, "fold", spy)
    sched = PruneSchedule(init_rank=8, target_rank=4, prune_every=1, prune_k=1, warmup_steps=3, max_gate_change=0.2)
    _, cb, _ = _train(sched, 10)
    kept = torch.cat(folds)
    assert kept.numel() > 0 and float((kept - 1).abs().max()) <= 0.2 + 1e-6
    assert any(e["min_compensation_scale"] < 1.0 for e in cb.events)  # the region did bind


# ---- devices -----------------------------------------------------------------------------------
def test_pruning_and_export_create_nothing_off_the_adapters_device_or_dtype():
    """Every tensor made without an explicit device lands on "meta" inside this block, and the model
    is float64 while the default dtype is float32: a forgotten ``device=`` / ``dtype=`` in the
    statistics, the pruning events, the fold or the export fails here (or leaves a meta tensor)."""
    assert torch.get_default_dtype() == torch.float32
    sched = PruneSchedule(init_rank=6, target_rank=3, scope="global", prune_every=1, warmup_steps=2)
    model = apply_plan(tiny_llama().to(torch.float64), RankPlan.uniform(4, 6, dropout=0.0))
    with torch.device("meta"):
        model, cb, opt = _train(sched, 8, model=model)
        cb.on_train_end(model)
        shrink(model, cb.ranks())
    assert len(cb.events) >= 2 and cb.budget()["at_budget"]
    for name, p in model.named_parameters():
        assert p.device.type == "cpu" and p.dtype == torch.float64, name
    for m in cb.modules.values():
        for t in (m.mask, m.stats.grad, m.stats.fisher, m.stats.act):
            assert t.device.type == "cpu", t
        assert m.stats.fisher.dtype == torch.float64
    for state in opt.state.values():
        for t in state.values():
            assert t.device.type == "cpu"


# ---- recover, budget, Trainer ----------------------------------------------------------------
def test_recover_record_checks_the_budget_and_refuses_an_unreachable_schedule(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(TINY_TEXT * 20))
    assert get_method("prunedlora") is PrunedLoRAMethod
    tok = tiny_tokenizer()
    per_rank = sum(p.numel() for n, p in apply_plan(tiny_llama(), RankPlan.uniform(4, 1)).named_parameters()
                   if "lora_" in n)
    method = PrunedLoRAMethod(init_rank=6, target_params=3 * per_rank)  # timing derived from the 9 steps
    cfg = RecoveryConfig(max_steps=9, lr=5e-3, batch_size=2, seq_len=32)
    res = recover(tiny_llama(), tok, config=cfg, data=path, method=method, out=tmp_path / "ad")
    info = res.record["prunedlora"]
    assert info["final_params"] == 3 * per_rank and set(info["final_ranks"].values()) == {3}
    assert info["budget"] == {"requested_params": 3 * per_rank, "final_params": 3 * per_rank, "gap": 0,
                              "largest_component": 64 + 128, "at_budget": True}
    assert info["schedule"]["warmup_steps"] == 2 and info["schedule"]["final_steps"] == 2
    assert info["events"][-1]["step"] <= 9 - 2
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "ad")
    assert set(wrapped_ranks(loaded).values()) == {3}
    bad = PrunedLoRAMethod(init_rank=6, target_rank=1, prune_every=4, prune_k=1, warmup_steps=1)
    with pytest.raises(RankAdaptorError, match="pruning event"):
        recover(tiny_llama(), tok, config=cfg, data=path, method=bad)


def test_budget_check_is_false_when_module_scope_rounds_the_budget_down():
    sched = PruneSchedule(init_rank=8, target_params=3 * 4096 + 1000, prune_every=2, prune_k=2, warmup_steps=2)
    _, cb, _ = _train(sched, 14)
    check = cb.budget()
    assert set(cb.ranks().values()) == {3} and check["gap"] == 1000 and not check["at_budget"]


def test_hf_trainer_callback(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = apply_plan(tiny_llama(), RankPlan.uniform(4, 6, dropout=0.0))
    cb = PrunedLoRACallback(PruneSchedule(init_rank=6, target_rank=4, prune_every=2, prune_k=1, warmup_steps=1))
    ids = torch.randint(3, 300, (16, 16), generator=torch.Generator().manual_seed(1)).tolist()
    ds = Dataset.from_dict({"input_ids": ids, "labels": ids})
    args = TrainingArguments(output_dir=str(tmp_path / "t"), max_steps=6, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], save_strategy="no", logging_strategy="no",
                             use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[hf_callback(cb)]).train()
    assert [e["step"] for e in cb.events] == [3, 5]
    assert set(wrapped_ranks(model).values()) == {4}  # shrunk at the end of training
    assert all(m.stats.steps == 6 for m in cb.modules.values())  # the statistics saw every step
