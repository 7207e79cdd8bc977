"""Model families: where a decoder-only model keeps the parts that pruning and LoRA touch.

Pruning code never reaches into ``model.model.layers[i].self_attn`` directly; it asks the
model's ``ModelFamily``, so a new architecture is one small class here. Supported families share the
LLaMA block layout (q/k/v/o attention with grouped-query heads, gate/up/down SiLU MLP); they
differ in biases (Qwen2 has q/k/v biases), per-head norms (Qwen3 normalises q and k over the
head dimension with one weight shared by all heads, so head pruning leaves those norms
untouched) and per-layer attention types (Qwen2/3 sliding windows, kept in ``config.layer_types``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rankadaptor.errors import RankAdaptorError

ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJ = ("gate_proj", "up_proj", "down_proj")


@dataclass
class ModelFamily:
    """Access to one model's decoder blocks; subclasses set the family name and quirks."""

    model: object
    name: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    # Modules inside ``self_attn`` that are per-head-dim (shared by all heads): never sliced.
    head_norms: ClassVar[tuple[str, ...]] = ()

    @property
    def config(self):
        return self.model.config

    @property
    def backbone(self):
        return self.model.model

    @property
    def layers(self):
        return self.backbone.layers

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def attention(self, i: int):
        return self.layers[i].self_attn

    def mlp(self, i: int):
        return self.layers[i].mlp

    def attn_proj(self, i: int) -> dict:
        attn = self.attention(i)
        return {n: getattr(attn, n) for n in ATTN_PROJ}

    def mlp_proj(self, i: int) -> dict:
        mlp = self.mlp(i)
        return {n: getattr(mlp, n) for n in MLP_PROJ}

    @property
    def head_dim(self) -> int:
        return int(self.attention(0).head_dim)

    def num_heads(self, i: int) -> int:
        """Query heads of layer ``i``, read from the weight (layers may differ after pruning)."""
        return self.attention(i).q_proj.out_features // self.head_dim

    def num_kv_heads(self, i: int) -> int:
        return self.attention(i).k_proj.out_features // self.head_dim

    def group_size(self, i: int) -> int:
        """Query heads sharing one key/value head (1 without grouped-query attention)."""
        return self.num_heads(i) // self.num_kv_heads(i)

    def intermediate_size(self, i: int) -> int:
        return self.mlp(i).gate_proj.out_features

    def set_head_counts(self, i: int) -> None:
        """Record per-layer head counts on the attention module (the config holds only one)."""
        attn = self.attention(i)
        attn.num_heads = self.num_heads(i)
        attn.num_key_value_heads = self.num_kv_heads(i)
        attn.num_key_value_groups = attn.num_heads // attn.num_key_value_heads

    def renumber_layers(self) -> None:
        """Give every block its new position: the KV cache is indexed by ``layer_idx``."""
        for i, layer in enumerate(self.layers):
            layer.self_attn.layer_idx = i
            if hasattr(layer, "layer_idx"):
                layer.layer_idx = i


class LlamaFamily(ModelFamily):
    name = "llama"
    model_types = ("llama",)


class MistralFamily(ModelFamily):
    name = "mistral"
    model_types = ("mistral",)


class Qwen2Family(ModelFamily):
    name = "qwen2"
    model_types = ("qwen2",)


class Qwen3Family(ModelFamily):
    name = "qwen3"
    model_types = ("qwen3",)
    head_norms = ("q_norm", "k_norm")


FAMILIES: dict[str, type[ModelFamily]] = {
    cls.name: cls for cls in (LlamaFamily, MistralFamily, Qwen2Family, Qwen3Family)
}


def family_for_model_type(model_type: str) -> type[ModelFamily]:
    for cls in FAMILIES.values():
        if model_type in cls.model_types:
            return cls
    raise RankAdaptorError(
        f"unsupported architecture {model_type!r}; supported families: {', '.join(sorted(FAMILIES))}. "
        "Use a LLaMA, Mistral, Qwen2 or Qwen3 causal LM, or add a ModelFamily in rankadaptor.models.families"
    )


def get_family(model) -> ModelFamily:
    """The adapter for ``model`` (a causal LM, possibly wrapped by PEFT), or a clear refusal."""
    # PEFT wraps the causal LM (PeftModel -> LoraModel -> LM); get_base_model() returns the LM.
    base = model.get_base_model() if hasattr(type(model), "get_base_model") else model
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type is None:
        raise RankAdaptorError(
            f"{type(model).__name__} has no config.model_type; pass a Hugging Face causal LM "
            f"of a supported family: {', '.join(sorted(FAMILIES))}"
        )
    return family_for_model_type(model_type)(base)
