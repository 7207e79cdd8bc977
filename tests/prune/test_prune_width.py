import pytest
import torch

from rankadaptor.models.families import get_family
from rankadaptor.models.artefact import load_pruned, save_pruned
from rankadaptor.prune.pruning import PruneConfig, prune_model
from rankadaptor.prune.importance import IMPORTANCES, Element1, Element2, Slice, get_importance, layer_gradients, unit_scores, calibration_batches
from tests.prune.helpers import TEXTS, ids, tiny_family
from tests.tiny_models import tiny_tokenizer


def _prune(model, ratio=0.3, importance="element1", layers=(1, 4), **kw):
    cfg = PruneConfig(method="llm-pruner", ratio=ratio, importance=importance, layers=layers, calibration=2, seq_len=16, **kw)
    return prune_model(model, tiny_tokenizer(), cfg, TEXTS)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_width_pruning_shapes_and_reload(family, tmp_path):
    base = tiny_family(family)
    pruned, man = _prune(base)
    fam = get_family(pruned)
    assert fam.num_kv_heads(0) == 2 and fam.intermediate_size(0) == 128  # outside the range
    for i in (1, 2, 3):
        attn = fam.attention(i)
        kv = fam.num_kv_heads(i)
        assert kv == 1 and fam.num_heads(i) == 2  # one of two KV groups with its two query heads
        assert attn.o_proj.in_features == attn.q_proj.out_features == 2 * fam.head_dim
        assert attn.num_heads == 2 and attn.num_key_value_heads == 1
        ch = fam.intermediate_size(i)
        assert ch < 128 and fam.mlp(i).up_proj.out_features == ch == fam.mlp(i).down_proj.in_features
        if family == "qwen2":
            assert attn.q_proj.bias.shape == (2 * fam.head_dim,)
    assert abs(man["achieved_ratio"] - 0.3) < 0.02
    assert man["params_after"] == sum(p.numel() for p in {id(p): p for p in pruned.parameters()}.values())
    with torch.no_grad():
        out = pruned(ids()).logits
        assert torch.isfinite(out).all()
    save_pruned(pruned, tiny_tokenizer(), man, tmp_path / "p")
    loaded = load_pruned(tmp_path / "p")
    with torch.no_grad():
        assert torch.equal(loaded(ids()).logits, out)
    # the input model is untouched by default (prune_model works on a copy)
    assert get_family(base).num_kv_heads(1) == 2


def test_kept_indices_select_base_weights():
    base = tiny_family("qwen2")
    pruned, man = _prune(base)
    info = man["layers"][2]
    hd = 16
    g = info["kept_kv_groups"][0]
    base_attn, new_attn = base.model.layers[2].self_attn, pruned.model.layers[2].self_attn
    assert torch.equal(new_attn.k_proj.weight, base_attn.k_proj.weight[g * hd:(g + 1) * hd])
    assert torch.equal(new_attn.q_proj.bias, base_attn.q_proj.bias[g * 2 * hd:(g + 1) * 2 * hd])
    assert torch.equal(new_attn.o_proj.weight, base_attn.o_proj.weight[:, g * 2 * hd:(g + 1) * 2 * hd])
    ch = torch.tensor(info["kept_channels"])
    assert torch.equal(pruned.model.layers[2].mlp.down_proj.weight, base.model.layers[2].mlp.down_proj.weight[:, ch])


def test_plain_heads_without_gqa(tmp_path):
    base = tiny_family("llama", num_key_value_heads=4)
    pruned, man = _prune(base, ratio=0.25)
    fam = get_family(pruned)
    for i in (1, 2, 3):
        assert fam.num_heads(i) == fam.num_kv_heads(i) < 4
    assert len(man["layers"][1]["kept_kv_groups"]) == fam.num_heads(1)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_ratio_zero_reproduces_base_logits(family, tmp_path):
    base = tiny_family(family)
    pruned, man = _prune(base, ratio=0.0)
    assert man["params_after"] == man["params_before"]
    save_pruned(pruned, tiny_tokenizer(), man, tmp_path / "p")
    loaded = load_pruned(tmp_path / "p")
    with torch.no_grad():
        assert torch.equal(loaded(ids()).logits, base(ids()).logits)


@pytest.mark.parametrize("name", ["element1", "element2", "vector", "l1", "l2"])
def test_zeroed_group_and_channel_score_lowest(name):
    model = tiny_family("llama")
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    with torch.no_grad():
        attn.q_proj.weight[32:64] = 0  # KV group 1 = query heads 2,3
        attn.k_proj.weight[16:32] = 0
        attn.v_proj.weight[16:32] = 0
        attn.o_proj.weight[:, 32:64] = 0
        mlp.gate_proj.weight[5] = 0
        mlp.up_proj.weight[5] = 0
        mlp.down_proj.weight[:, 5] = 0
    imp = get_importance(name)
    fam = get_family(model)
    if imp.needs_grad:
        batches = calibration_batches(tiny_tokenizer(), TEXTS, 2, 16)
        grads = layer_gradients(model, batches, range(1, 2), fisher=imp.needs_fisher,
                                reduce=lambda i, stats: (unit_scores(fam, i, "attn", imp, stats),
                                                         unit_scores(fam, i, "mlp", imp, stats)))
        attn_scores, mlp_scores = grads.results[1]
    else:
        attn_scores, mlp_scores = unit_scores(fam, 1, "attn", imp), unit_scores(fam, 1, "mlp", imp)
    assert attn_scores[1] == 0 and attn_scores[0] > 0
    assert int(mlp_scores.argmin()) == 5 and mlp_scores[5] == 0
    # the pruner drops exactly the zeroed group
    pruned, man = _prune(model, ratio=0.15, importance=name, layers=(1, 2))
    assert man["layers"][1]["kept_kv_groups"] == [0]
    assert 5 not in man["layers"][1]["kept_channels"]


def test_element2_adds_fisher_term():
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    g = torch.tensor([[0.1, 0.2], [-0.3, 0.0]])
    f = torch.tensor([[0.4, 0.0], [1.0, 0.2]])
    e1 = Element1().score(Slice(w, g, f))
    e2 = Element2().score(Slice(w, g, f))
    assert torch.allclose(e1, torch.tensor([0.1 + 0.4, 0.15]))
    # |g w - 0.5 w^2 F| per element: row 0: |0.1-0.2| + |-0.4-0| ; row 1: |-0.15-0.125| + |0-0.9|
    assert torch.allclose(e2, torch.tensor([0.1 + 0.4, 0.275 + 0.9]))
    assert torch.allclose(Element2().score(Slice(w, g, torch.zeros_like(f))), e1)


def test_random_importance_is_seeded():
    base = tiny_family("llama")
    _, a = _prune(base, importance="random", seed=1)
    _, b = _prune(base, importance="random", seed=1)
    assert a["layers"] == b["layers"]
    assert set(IMPORTANCES) == {"element1", "element2", "vector", "l1", "l2", "random"}
