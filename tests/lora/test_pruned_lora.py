"""PrunedLoRA in training: no reactivation, exact export, schedule errors, recover and Trainer."""

import pytest
import torch
from peft import PeftModel

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.pruned_lora import PruneSchedule, PrunedLoRACallback, PrunedLoRAMethod, hf_callback, shrink
from rankadaptor.lora.ranks import RankPlan, apply_plan, wrapped_ranks
from rankadaptor.lora.methods import get_method
from rankadaptor.lora.recover import RecoveryConfig, recover
from tests.tiny_models import TINY_TEXT, tiny_llama, tiny_tokenizer


def _train(schedule, steps, seed=0):
    """A manual loop with the recover hook protocol; shrink left to the caller."""
    torch.manual_seed(seed)
    model = apply_plan(tiny_llama(), RankPlan.uniform(4, schedule.init_rank, dropout=0.0))
    cb = PrunedLoRACallback(schedule, shrink_at_end=False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    cb.on_train_begin(model, opt, steps)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        ids = torch.randint(3, 300, (4, 16), generator=gen)
        model(input_ids=ids, labels=ids).loss.backward()
        cb.on_after_backward(step, model)
        opt.step()
        cb.on_step_end(step, model, opt)
        opt.zero_grad()
    return model, cb, opt


@pytest.mark.parametrize("scorer", ["obs", "activation"])
def test_pruned_components_stay_zero_in_weights_and_adam_state(scorer):
    sched = PruneSchedule(init_rank=8, target_rank=4, prune_every=2, prune_k=2, warmup_steps=2, scorer=scorer)
    model, cb, opt = _train(sched, 12)  # events after steps 4 and 6, then six more optimizer steps
    assert [e["step"] for e in cb.events] == [4, 6]
    assert set(cb.ranks().values()) == {4}
    for m in cb.modules.values():
        dead = ~m.mask
        assert dead.sum() == 4
        assert torch.all(m.A[dead] == 0) and torch.all(m.B[:, dead] == 0)
        assert torch.any(m.B[:, m.mask] != 0)  # the kept components did train
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.all(opt.state[m.A][key][dead] == 0)
            assert torch.all(opt.state[m.B][key][:, dead] == 0)


def test_global_scope_export_reloads_with_equal_logits(tmp_path):
    sched = PruneSchedule(init_rank=8, target_rank=3, prune_every=2, prune_k=2, warmup_steps=2, scope="global")
    model, cb, _ = _train(sched, 14)
    assert cb.params() <= cb.target_params
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


def test_bad_schedules_fail_before_training():
    with pytest.raises(RankAdaptorError, match="floor 9 is above the initial rank 8"):
        PruneSchedule(init_rank=8, target_rank=4, floor=9)
    with pytest.raises(RankAdaptorError, match="target_rank 8"):
        PruneSchedule(init_rank=8, target_rank=8)
    with pytest.raises(RankAdaptorError, match="exactly one"):
        PruneSchedule(init_rank=8)
    with pytest.raises(RankAdaptorError, match="scope"):
        PruneSchedule(init_rank=8, target_rank=4, scope="layer")
    sizes = {"a": 100, "b": 50}
    with pytest.raises(RankAdaptorError, match="not below the initial budget 1200"):
        PruneSchedule(init_rank=8, target_params=1200).targets(sizes)
    with pytest.raises(RankAdaptorError, match="below the floor"):
        PruneSchedule(init_rank=8, target_params=200, floor=2).targets(sizes)
    s = PruneSchedule(init_rank=8, target_rank=1, prune_every=5, prune_k=1, warmup_steps=5, final_steps=5)
    assert s.event_steps(40) == [10, 15, 20, 25, 30, 35]
    with pytest.raises(RankAdaptorError, match="6 pruning event.*needs 7"):
        s.check_reachable(sizes, 40)  # 8 -> 1 needs 7 events at one component each
    s.check_reachable(sizes, 45)
    with pytest.raises(RankAdaptorError, match="target_params"):
        PruneSchedule(init_rank=8, target_params=0)


def test_recover_method_registry_and_unreachable_schedule(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(TINY_TEXT * 20))
    assert get_method("prunedlora") is PrunedLoRAMethod
    tok = tiny_tokenizer()
    base = tiny_llama()
    per_rank = sum(p.numel() for n, p in apply_plan(tiny_llama(), RankPlan.uniform(4, 1)).named_parameters() if "lora_" in n)
    method = PrunedLoRAMethod(init_rank=6, target_params=3 * per_rank, prune_every=2, prune_k=1, warmup_steps=1)
    cfg = RecoveryConfig(max_steps=9, lr=5e-3, batch_size=2, seq_len=32)
    res = recover(base, tok, config=cfg, data=path, method=method, out=tmp_path / "ad")
    info = res.record["prunedlora"]
    assert info["final_params"] == 3 * per_rank and set(info["final_ranks"].values()) == {3}
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "ad")
    assert set(wrapped_ranks(loaded).values()) == {3}
    bad = PrunedLoRAMethod(init_rank=6, target_rank=1, prune_every=4, prune_k=1, warmup_steps=1)
    with pytest.raises(RankAdaptorError, match="pruning event"):
        recover(tiny_llama(), tok, config=cfg, data=path, method=bad)


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
