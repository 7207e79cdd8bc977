"""How to cut, in width: keep chosen KV groups / MLP channels of each layer (LLM-Pruner, block-wise).

The whole-model ratio R (fraction of all parameters removed, as LLM-Pruner reports it) becomes a
per-layer ratio inside the layer range: attention loses ``round(p * kv_groups)`` groups per layer,
and the MLP loses as many channels as the remaining budget needs, spread evenly over the range.
Attention is coarse (SmolLM2 has 3 KV groups), so the MLP absorbs the rounding and the achieved
ratio stays close to R. Both the derived ratio and what was achieved are recorded.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from rankadaptor.errors import RankAdaptorError
from rankadaptor.models.families import ModelFamily
from rankadaptor.prune.importance import Importance, unit_scores

log = logging.getLogger(__name__)


def count_params(model) -> int:
    """Parameters counted once each (tied embeddings count once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _unit_sizes(fam: ModelFamily, i: int) -> tuple[int, int]:
    """Parameters freed by removing one KV group, and one MLP channel, of layer i."""
    attn = fam.attn_proj(i)
    groups = fam.num_kv_heads(i)
    per_group = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0) for m in attn.values())
    per_group -= attn["o_proj"].bias.numel() if attn["o_proj"].bias is not None else 0  # o bias stays
    mlp = fam.mlp_proj(i)
    per_channel = sum(m.weight.numel() for m in mlp.values()) // fam.intermediate_size(i)
    per_channel += sum(mlp[n].bias.numel() for n in ("gate_proj", "up_proj") if mlp[n].bias is not None) // fam.intermediate_size(i)
    return per_group // groups, per_channel


def plan_width(fam: ModelFamily, ratio: float, layers: range) -> dict:
    """How many KV groups and MLP channels each layer in ``layers`` loses for whole-model ratio R."""
    total = count_params(fam.model)
    target = ratio * total
    sizes = {i: _unit_sizes(fam, i) for i in layers}
    prunable = sum(s[0] * fam.num_kv_heads(i) + s[1] * fam.intermediate_size(i) for i, s in sizes.items())
    layer_ratio = target / prunable if prunable else float("inf")
    if layer_ratio >= 1.0:
        raise RankAdaptorError(
            f"--ratio {ratio} would remove {target:.0f} of {total} parameters, more than the "
            f"{prunable} prunable ones in layers {layers.start}:{layers.stop} (every head and channel); "
            "lower --ratio or widen --layers"
        )
    drop_groups = {i: int(round(layer_ratio * fam.num_kv_heads(i))) for i in layers}
    for i in layers:
        if drop_groups[i] >= fam.num_kv_heads(i):
            raise RankAdaptorError(
                f"--ratio {ratio} (per-layer ratio {layer_ratio:.3f}) would remove all "
                f"{fam.num_kv_heads(i)} key/value groups of layer {i}; lower --ratio or widen --layers"
            )
    left = target - sum(sizes[i][0] * drop_groups[i] for i in layers)
    per_channel_total = sum(sizes[i][1] for i in layers)  # one channel from every layer in range
    n_ch = max(0, int(round(left / per_channel_total))) if per_channel_total else 0
    drop_channels = {i: n_ch for i in layers}
    for i in layers:
        if n_ch >= fam.intermediate_size(i):
            raise RankAdaptorError(
                f"--ratio {ratio} would remove all {fam.intermediate_size(i)} MLP channels of layer {i}; "
                "lower --ratio or widen --layers"
            )
    return {"layer_ratio": layer_ratio, "drop_groups": drop_groups, "drop_channels": drop_channels}


def choose_units(fam: ModelFamily, plan: dict, imp: Importance, scores=None) -> dict[int, dict]:
    """Per layer: sorted indices of the KV groups and channels to keep (highest importance).

    ``scores`` ({layer: {"attn": ..., "mlp": ...}}) are the gradient-based scores computed while the
    gradients existed (``importance.layer_gradients``); other importances are scored here.
    """
    keep: dict[int, dict] = {}
    for i in plan["drop_groups"]:
        if plan["drop_groups"][i] == 0 and plan["drop_channels"][i] == 0:  # nothing to choose (ratio 0)
            keep[i] = {"kv_groups": list(range(fam.num_kv_heads(i))), "channels": list(range(fam.intermediate_size(i)))}
            continue
        attn = scores[i]["attn"] if scores is not None else unit_scores(fam, i, "attn", imp)
        mlp = scores[i]["mlp"] if scores is not None else unit_scores(fam, i, "mlp", imp)
        keep[i] = {
            "kv_groups": _top(attn, len(attn) - plan["drop_groups"][i]),
            "channels": _top(mlp, len(mlp) - plan["drop_channels"][i]),
        }
    return keep


def _top(scores: torch.Tensor, k: int) -> list[int]:
    # stable tie-break by index, so equal scores (e.g. ratio 0) keep everything in order
    order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))
    return sorted(order[:k])


# ----------------------------------------------------------------------------- slicing


def _linear(src: nn.Linear, rows=None, cols=None) -> nn.Linear:
    """A new Linear holding the chosen output rows / input columns of ``src``."""
    w = src.weight.detach()
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    out = nn.Linear(w.shape[1], w.shape[0], bias=src.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if src.bias is not None:
            out.bias.copy_(src.bias.detach()[rows] if rows is not None else src.bias.detach())
    out.weight.requires_grad_(src.weight.requires_grad)
    return out


def head_index(groups: list[int], per_group_heads: int, head_dim: int) -> torch.Tensor:
    """Row indices of the heads belonging to the kept groups (heads of a group are contiguous)."""
    span = per_group_heads * head_dim
    return torch.cat([torch.arange(g * span, (g + 1) * span) for g in groups]) if groups else torch.zeros(0, dtype=torch.long)


def slice_layer(fam: ModelFamily, i: int, kv_groups: list[int], channels: list[int]) -> None:
    """Keep only the given KV groups (with their query heads and o_proj columns) and channels."""
    attn, hd, gs = fam.attention(i), fam.head_dim, fam.group_size(i)
    q_idx = head_index(kv_groups, gs, hd)
    kv_idx = head_index(kv_groups, 1, hd)
    attn.q_proj = _linear(attn.q_proj, rows=q_idx)
    attn.k_proj = _linear(attn.k_proj, rows=kv_idx)
    attn.v_proj = _linear(attn.v_proj, rows=kv_idx)
    attn.o_proj = _linear(attn.o_proj, cols=q_idx)
    fam.set_head_counts(i)
    mlp, ch = fam.mlp(i), torch.tensor(channels, dtype=torch.long)
    mlp.gate_proj = _linear(mlp.gate_proj, rows=ch)
    mlp.up_proj = _linear(mlp.up_proj, rows=ch)
    mlp.down_proj = _linear(mlp.down_proj, cols=ch)
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = len(channels)


def prune_width(fam: ModelFamily, ratio: float, layers: range, imp: Importance, scores=None) -> dict:
    """Slice every layer in range in place; return the plan and the kept indices per layer."""
    plan = plan_width(fam, ratio, layers)
    keep = choose_units(fam, plan, imp, scores)
    for i, k in keep.items():
        slice_layer(fam, i, k["kv_groups"], k["channels"])
    log.info("width pruning: per-layer ratio %.4f in layers %d:%d", plan["layer_ratio"], layers.start, layers.stop)
    return {"layer_ratio": plan["layer_ratio"], "kept": keep}
