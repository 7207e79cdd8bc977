import math

import pytest
import torch

from rankadaptor.models.families import get_family
from rankadaptor.prune.importance import calibration_batches
from rankadaptor.models.artefact import load_pruned, save_pruned
from rankadaptor.prune.pruning import PruneConfig, prune_model
from tests.prune.helpers import TEXTS, ids, tiny_family
from tests.tiny_models import tiny_tokenizer

def _identity_block(model, i):
    """Make block i a no-op (zero attention and MLP outputs): every depth score must pick it."""
    with torch.no_grad():
        model.model.layers[i].self_attn.o_proj.weight.zero_()
        model.model.layers[i].mlp.down_proj.weight.zero_()
    return model


@pytest.mark.parametrize("method", ["shortened-taylor", "shortgpt"])
def test_depth_removes_the_useless_block(method):
    base = _identity_block(tiny_family("llama", num_hidden_layers=6), 3)
    cfg = PruneConfig(method=method, ratio=0.12, layers=(1, 5), calibration=2, seq_len=16)
    pruned, man = prune_model(base, tiny_tokenizer(), cfg, TEXTS)
    assert man["block_scores"]["3"] == pytest.approx(0.0, abs=1e-6)
    assert man["removed_layers"] == [3]
    assert [layer["base_index"] for layer in man["layers"]] == [0, 1, 2, 4, 5]
    fam = get_family(pruned)
    assert fam.n_layers == 5 == pruned.config.num_hidden_layers
    assert [fam.attention(i).layer_idx for i in range(5)] == list(range(5))
    with torch.no_grad():  # removing an identity block changes nothing
        assert torch.allclose(pruned(ids()).logits, base(ids()).logits, atol=1e-5)
    assert len(base.model.layers) == 6


def test_perplexity_score_is_ppl_without_the_block():
    base = _identity_block(tiny_family("llama", num_hidden_layers=6), 3)
    tok = tiny_tokenizer()
    cfg = PruneConfig(method="shortened-ppl", ratio=0.12, layers=(1, 5), calibration=2, seq_len=16)
    pruned, man = prune_model(base, tok, cfg, TEXTS)
    batches = calibration_batches(tok, TEXTS, 2, 16)
    with torch.no_grad():
        base_ppl = math.exp(sum(float(base(input_ids=r[None], labels=r[None]).loss) for r in batches) / 2)
    scores = {int(k): v for k, v in man["block_scores"].items()}
    assert scores[3] == pytest.approx(base_ppl, rel=1e-5)  # skipping a no-op block = the base model
    assert man["removed_layers"] == [min(scores, key=scores.get)]
    for i in (1, 2, 4):  # skipping a real block really skips it: perplexity moves
        assert abs(scores[i] - base_ppl) > 1e-3 * base_ppl


@pytest.mark.parametrize("family,method", [("llama", "shortgpt"), ("qwen3", "shortened-ppl"), ("mistral", "shortened-taylor")])
def test_depth_pruned_generates_same_with_and_without_cache(family, method, tmp_path):
    base = tiny_family(family, num_hidden_layers=6)
    cfg = PruneConfig(method=method, ratio=0.3, layers=(1, 5), calibration=2, seq_len=16)
    pruned, man = prune_model(base, tiny_tokenizer(), cfg, TEXTS)
    assert len(man["removed_layers"]) == 2
    save_pruned(pruned, tiny_tokenizer(), man, tmp_path / "p")
    loaded = load_pruned(tmp_path / "p")
    prompt = ids(length=6)[:1]
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with_cache = loaded.generate(prompt, use_cache=True, **kw)
    without = loaded.generate(prompt, use_cache=False, **kw)
    assert torch.equal(with_cache, without)
    with torch.no_grad():
        assert torch.equal(loaded(ids()).logits, pruned(ids()).logits)
    if getattr(loaded.config, "layer_types", None) is not None:
        assert len(loaded.config.layer_types) == 4


def test_width_then_reload_generates_with_cache(tmp_path):
    base = tiny_family("qwen3")
    cfg = PruneConfig(method="llm-pruner", ratio=0.3, layers=(1, 4), calibration=2, seq_len=16)
    pruned, man = prune_model(base, tiny_tokenizer(), cfg, TEXTS)
    save_pruned(pruned, tiny_tokenizer(), man, tmp_path / "p")
    loaded = load_pruned(tmp_path / "p")
    prompt = ids(length=6)[:1]
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded.generate(prompt, use_cache=True, **kw), loaded.generate(prompt, use_cache=False, **kw))
