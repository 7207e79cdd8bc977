"""Per-layer widths for a structurally pruned causal LM. rankadaptor copies this file beside the weights.

transformers builds every decoder layer from the config's one head count and one MLP width, and
checks ``hidden_size % num_attention_heads`` when the config is made, so ``config.json`` keeps the
base model's counts and lists every layer's real widths in ``pruned_layers``. ``PrunedForCausalLM``
builds the family's own model, then gives each layer its listed widths before the weights load:
nothing else about the model changes. It needs torch and transformers only (not rankadaptor), and
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` finds it through ``auto_map``.
"""

from torch import nn
from transformers import LlamaForCausalLM as FamilyForCausalLM  # rankadaptor: the family's class


def _resized(linear: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=linear.bias is not None,
                     device=linear.weight.device, dtype=linear.weight.dtype)


def apply_layer_widths(model) -> None:
    """Give decoder layer i the heads and MLP channels ``config.pruned_layers[i]`` lists."""
    config, layers = model.config, model.model.layers
    widths = config.pruned_layers
    if len(widths) != len(layers):
        raise ValueError(f"config.json lists {len(widths)} pruned_layers for {len(layers)} decoder layers")
    hidden = config.hidden_size
    for layer, width in zip(layers, widths):
        attn, mlp = layer.self_attn, layer.mlp
        heads, kv_heads, inter = width["num_attention_heads"], width["num_key_value_heads"], width["intermediate_size"]
        head_dim = attn.head_dim
        attn.q_proj = _resized(attn.q_proj, hidden, heads * head_dim)
        attn.k_proj = _resized(attn.k_proj, hidden, kv_heads * head_dim)
        attn.v_proj = _resized(attn.v_proj, hidden, kv_heads * head_dim)
        attn.o_proj = _resized(attn.o_proj, heads * head_dim, hidden)
        # the projections' shapes are the truth; some transformers versions also read these counts
        attn.num_heads, attn.num_key_value_heads = heads, kv_heads
        attn.num_key_value_groups = heads // kv_heads
        mlp.gate_proj = _resized(mlp.gate_proj, hidden, inter)
        mlp.up_proj = _resized(mlp.up_proj, hidden, inter)
        mlp.down_proj = _resized(mlp.down_proj, inter, hidden)
        mlp.intermediate_size = inter


class PrunedForCausalLM(FamilyForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        apply_layer_widths(self)
        self.post_init()  # initialise the resized projections like the rest (from_config; loading overwrites them)
