"""Distillation recovery: the loss against its definition on full logits, what it never computes
(padding, teacher gradients), every recovery method trained with it, and a wrong teacher refused."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.adalora import AdaLoraMethod, orthogonal_penalty
from rankadaptor.lora.distill import DistillConfig, Distiller, check_same_vocabulary, teacher_spec
from rankadaptor.lora.pruned_lora import PrunedLoRAMethod
from rankadaptor.lora.ranks import RankPlan, apply_plan
from rankadaptor.lora.recover import RecoveryConfig, _collate, recover
from tests.tiny_models import TINY_TEXT, tiny_llama, tiny_tokenizer


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(TINY_TEXT * 20))
    return path


def _batch():
    """Two examples of different lengths: the second is right-padded."""
    return _collate([[5, 17, 42, 99, 7, 3, 250, 11, 64, 128, 9, 31], [8, 90, 14, 200, 6]], pad_id=0)


def _student():
    student = apply_plan(tiny_llama(seed=1), RankPlan(ranks=[2] * 4, dropout=0.0))
    with torch.no_grad():  # LoRA B starts at zero; give the student its own function
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return student.train()


def _reference(student, teacher, batch, alpha, t):
    """The definition on full-vocabulary logits of every position, padding masked."""
    s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    with torch.no_grad():
        q = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    ce = F.cross_entropy(s[keep], labels[keep])
    kl = (F.softmax(q[keep] / t, -1) * (F.log_softmax(q[keep] / t, -1) - F.log_softmax(s[keep] / t, -1))).sum(-1).mean()
    return alpha * t * t * kl + (1 - alpha) * ce


@pytest.mark.parametrize("alpha, temperature, chunk", [(0.5, 2.0, 1024), (0.7, 1.0, 3), (1.0, 4.0, 1)])
def test_loss_and_gradients_equal_the_definition_on_full_logits(alpha, temperature, chunk):
    batch, teacher = _batch(), tiny_llama(seed=2)
    a, b = _student(), None
    b = copy.deepcopy(a)
    loss, parts = Distiller(teacher, DistillConfig(alpha, temperature, chunk)).loss(a, batch)
    ref = _reference(b, teacher, batch, alpha, temperature)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    ref.backward()
    grads = [(n, p.grad, q.grad) for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True)
             if p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for _, g, _ in grads)
    for n, g, h in grads:
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6, msg=n)
    assert parts["kl"] > 0 and parts["ce"] > 0


def test_alpha_zero_is_the_next_token_loss():
    batch, student = _batch(), _student()
    loss, parts = Distiller(tiny_llama(seed=2), DistillConfig(alpha=0.0)).loss(student, batch)
    torch.testing.assert_close(loss, student(**batch).loss, rtol=1e-5, atol=1e-6)


def test_a_teacher_equal_to_the_student_has_zero_kl():
    student = apply_plan(tiny_llama(seed=1), RankPlan(ranks=[2] * 4))  # B = 0: the student is its base
    _, parts = Distiller(tiny_llama(seed=1), DistillConfig()).loss(student.train(), _batch())
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6)


def test_lm_heads_see_only_trained_positions_and_the_teacher_no_gradient():
    batch, student, teacher = _batch(), _student(), tiny_llama(seed=2)
    rows = []
    for head in (student.get_base_model().lm_head, teacher.lm_head):
        head.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    loss, _ = Distiller(teacher, DistillConfig(chunk_tokens=4)).loss(student, batch)
    trained = int((batch["labels"][:, 1:] != -100).sum())
    assert trained == 11 + 4  # 12 and 5 tokens, each predicting all but its first
    assert sum(rows) == 2 * trained and max(rows) <= 4  # chunks of <= 4 rows, no padded position
    rows.clear()
    loss.backward()  # the chunks' logits (both heads) are recomputed, not kept
    assert sum(rows) == 2 * trained
    rows.clear()
    loss, _ = Distiller(teacher, DistillConfig(chunk_tokens=trained)).loss(student, batch)
    loss.backward()  # one chunk: kept like a plain loss's logits, nothing recomputed
    assert rows == [trained, trained]
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_adalora_regulariser_matches_peft():
    from peft import AdaLoraConfig, get_peft_model

    cfg = AdaLoraConfig(init_r=4, target_r=2, total_step=10, tinit=1, tfinal=1, target_modules=["q_proj", "v_proj"],
                        orth_reg_weight=0.7, task_type="CAUSAL_LM")
    model = get_peft_model(tiny_llama(), cfg).train()
    batch = _batch()
    out = model(**batch)
    logits = out.logits[:, :-1]
    labels = batch["labels"][:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    penalty = orthogonal_penalty(model)
    assert float(penalty) > 0
    torch.testing.assert_close(out.loss - ce, penalty, rtol=1e-4, atol=1e-6)
    assert orthogonal_penalty(_student()) == 0.0
    # the distilled loss keeps it: at alpha = 0 it is exactly PEFT's own training loss
    loss, _ = Distiller(tiny_llama(seed=2), DistillConfig(alpha=0.0)).loss(model, batch)
    torch.testing.assert_close(loss, out.loss, rtol=1e-5, atol=1e-6)


def _run(method_kwargs, corpus, **cfg):
    config = RecoveryConfig(**{**dict(max_steps=8, batch_size=2, seq_len=16, lr=5e-3, max_val=2), **cfg})
    distill = Distiller(tiny_llama(seed=2), DistillConfig(alpha=0.8), identity={"spec": "teacher"})
    return recover(tiny_llama(seed=1), tiny_tokenizer(), config=config, data=corpus, distill=distill, **method_kwargs)


@pytest.mark.parametrize("name", ["uniform", "plan", "adalora", "prunedlora"])
def test_every_recovery_method_trains_with_distillation(corpus, name):
    methods = {
        "uniform": dict(plan=RankPlan.uniform(4, 2)),
        "plan": dict(plan=RankPlan(ranks=[1, 2, 3, 4])),
        "adalora": dict(method=AdaLoraMethod(target_params=2 * 7 * 4 * (64 + 64))),
        "prunedlora": dict(method=PrunedLoRAMethod(init_rank=4, target_rank=2, prune_every=2, warmup_steps=1,
                                                   final_steps=1)),
    }
    res = _run(methods[name], corpus)
    rec = res.record
    curve = rec["loss_curve"]
    assert all(c["kl"] >= 0 and c["ce"] > 0 for c in curve)
    assert rec["distill"] == {"alpha": 0.8, "temperature": 2.0, "chunk_tokens": 1024, "teacher": {"spec": "teacher"}}
    assert curve[-1]["kl"] < curve[0]["kl"]  # the student moves towards the teacher
    if name == "prunedlora":  # its callbacks saw the gradients of the distilled loss
        assert rec["prunedlora"]["events"] and rec["prunedlora"]["final_params"] <= rec["prunedlora"]["target_params"]
    if name == "adalora":
        assert rec["adalora_rank_history"]


def test_distillation_needs_the_same_vocabulary_before_any_work(tmp_path):
    other = tiny_llama(seed=2, vocab_size=330)
    with pytest.raises(RankAdaptorError, match="teacher predicts 330 token ids but the student 320"):
        recover(tiny_llama(), tiny_tokenizer(), RankPlan.uniform(4, 2), RecoveryConfig(max_steps=1),
                data=tmp_path / "missing.txt", distill=Distiller(other))
    tok = tiny_tokenizer()
    shuffled = tiny_tokenizer()
    shuffled.add_tokens(["zzzextra"])
    with pytest.raises(RankAdaptorError, match="tokenizer differs"):
        check_same_vocabulary(tiny_llama(), tiny_llama(), tok, shuffled)


def test_teacher_from_the_pruned_manifest(tmp_path):
    pruned = tmp_path / "p"
    pruned.mkdir()
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    for identity, want in [({"spec": "smollm2-135m", "source": "alias", "path": "/elsewhere"}, "smollm2-135m"),
                           ({"spec": "base", "source": "local", "path": str(base_dir)}, str(base_dir))]:
        (pruned / "pruning.json").write_text(json.dumps({"base_model": identity}))
        assert teacher_spec(str(pruned)) == want
    (pruned / "pruning.json").write_text(json.dumps({"base_model": {"spec": "x", "source": "local", "path": "/gone"}}))
    with pytest.raises(RankAdaptorError, match="not found here; pass the unpruned model as --teacher"):
        teacher_spec(str(pruned))
    with pytest.raises(RankAdaptorError, match="not a pruned artefact; pass --teacher"):
        teacher_spec(str(base_dir))


@pytest.mark.parametrize("bad, words", [(dict(alpha=1.5), "alpha"), (dict(temperature=0), "temperature"),
                                        (dict(chunk_tokens=0), "chunk_tokens"), (dict(alpha="x"), "alpha")])
def test_bad_settings(bad, words):
    with pytest.raises(RankAdaptorError, match=words):
        DistillConfig(**bad)
