import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rankadaptor.errors import RankAdaptorError
from rankadaptor.models.families import FAMILIES, get_family
from tests.prune.helpers import tiny_family


@pytest.mark.parametrize("name", ["llama", "qwen2", "qwen3", "mistral"])
def test_family_exposes_blocks(name):
    fam = get_family(tiny_family(name))
    assert fam.name == name
    assert fam.n_layers == 4
    assert fam.head_dim == 16
    assert (fam.num_heads(0), fam.num_kv_heads(0), fam.group_size(0)) == (4, 2, 2)
    assert fam.intermediate_size(2) == 128
    assert set(fam.attn_proj(1)) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert fam.mlp_proj(1)["down_proj"].in_features == 128


def test_qwen3_head_norms_are_per_head_dim():
    fam = get_family(tiny_family("qwen3"))
    assert fam.head_norms == ("q_norm", "k_norm")
    assert fam.attention(0).q_norm.weight.shape == (fam.head_dim,)


def test_unsupported_architecture_lists_supported():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(RankAdaptorError) as exc:
        get_family(gpt2)
    for name in FAMILIES:
        assert name in str(exc.value)
    assert "gpt2" in str(exc.value)


def test_get_family_unwraps_peft():
    from peft import LoraConfig, get_peft_model

    model = tiny_family("llama")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    fam = get_family(peft_model)
    assert fam.name == "llama" and fam.n_layers == 4
    assert torch.is_tensor(fam.attention(0).q_proj.base_layer.weight)
