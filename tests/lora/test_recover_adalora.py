"""AdaLoRA: the schedule really reallocates ranks, and the final budget equals the uniform baseline's."""

import pytest
from peft import PeftModel

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.adalora import AdaLoraMethod, current_ranks, effective_params
from rankadaptor.lora.ranks import RankPlan, count_lora_params
from rankadaptor.lora.methods import get_method
from rankadaptor.lora.recover import RecoveryConfig, recover
from tests.tiny_models import TINY_TEXT, tiny_llama, tiny_tokenizer


def test_adalora_reallocates_to_the_uniform_budget(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(TINY_TEXT * 20))
    method = get_method("adalora")(uniform_r=4)
    assert isinstance(method, AdaLoraMethod)
    model = tiny_llama()
    uniform = count_lora_params(model, RankPlan.uniform(4, 4))
    budget = method.budget(model)
    assert budget["target_params"] == budget["uniform_params"] == uniform and budget["init_r"] == 6
    cfg = RecoveryConfig(max_steps=20, lr=5e-3, batch_size=2, seq_len=16)
    res = recover(model, tiny_tokenizer(), config=cfg, data=corpus, method=method, out=tmp_path / "ad")
    info = res.record["adalora"]
    assert (info["tinit"], info["tfinal"], info["total_step"]) == (2, 4, 20)
    ranks = current_ranks(res.model)
    assert len(ranks) == 28 and len(set(ranks.values())) > 1  # ranks moved away from init_r = 6, unevenly
    final = effective_params(res.model)
    assert final == res.record["adalora_effective_params"]
    biggest_component = 64 + 128
    assert uniform - biggest_component < final <= uniform
    history = [h["total_rank"] for h in res.record["adalora_rank_history"]]
    assert history[0] == 6 * 28 and history[-1] < history[0]
    # the saved adapter reloads with the same per-module ranks and is usable
    reloaded = PeftModel.from_pretrained(tiny_llama(), tmp_path / "ad")
    sizes = {n.split(".lora_E.")[0].removeprefix("base_model.model."): p.shape[0]
             for n, p in reloaded.named_parameters() if ".lora_E." in n}
    assert sizes == ranks


def test_adalora_bad_input():
    with pytest.raises(RankAdaptorError, match="tinit"):
        AdaLoraMethod().phases(1)
    with pytest.raises(RankAdaptorError, match="init_r"):
        AdaLoraMethod(uniform_r=30).budget(tiny_llama())  # 1.5 * 30 > k_proj's 32 outputs
    with pytest.raises(RankAdaptorError, match="valid: .*adalora"):
        get_method("nope")


def test_adalora_validation_loss_is_the_language_model_loss(tmp_path):
    """PEFT adds AdaLoRA's orthogonality regulariser to ``outputs.loss`` even in eval mode; the
    recorded validation loss must be the plain next-token cross-entropy, comparable across methods."""
    import torch

    from rankadaptor.data import load_recovery_data
    from rankadaptor.lora.recover import _collate, validation_loss

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(TINY_TEXT * 20))
    tok = tiny_tokenizer()
    cfg = RecoveryConfig(max_steps=6, lr=5e-3, batch_size=2, seq_len=16)
    res = recover(tiny_llama(), tok, config=cfg, data=corpus, method=AdaLoraMethod(uniform_r=4))
    data = load_recovery_data(corpus, tok, seq_len=16, max_val=cfg.max_val)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = res.model.eval()
    with torch.no_grad():
        batch = _collate(data.val[:1], pad)
        with_reg = float(model(**batch).loss)
        labels = batch.pop("labels")
        logits = model(**batch).logits
        plain = float(torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100))
    assert with_reg > plain + 1e-3  # PEFT's loss carries the regulariser ...
    ce = validation_loss(model, data.val[:1], pad, cfg)
    assert abs(ce - plain) < 1e-5  # ... the recorded validation loss does not


def test_a_run_too_short_for_a_final_phase_is_refused():
    # PEFT fixes AdaLoRA's final budget at step total_step - tfinal, which a 2-step run never reaches
    with pytest.raises(RankAdaptorError, match="train longer"):
        get_method("adalora")(uniform_r=4).phases(2)
    assert get_method("adalora")(uniform_r=4).phases(3)[1] >= 1
