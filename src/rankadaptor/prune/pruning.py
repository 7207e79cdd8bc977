"""The pruning entry point: ``prune_model(model, tokenizer, PruneConfig(...)) -> (model, manifest)``.

What to cut comes from ``prune.importance`` (Taylor, magnitude, random) or a depth block scorer
(``prune.depth``); how to cut from ``prune.width`` / ``prune.depth``. The manifest returned is the
one ``rankadaptor.models.artefact.save_pruned`` writes beside the weights (its format is described
there): every per-layer shape, the base model's identity and hash, the settings and provenance.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from dataclasses import asdict, dataclass

import torch

from rankadaptor.errors import RankAdaptorError
from rankadaptor.models.artefact import FORMAT
from rankadaptor.models.families import get_family
from rankadaptor.prune import depth, width
from rankadaptor.prune.importance import IMPORTANCES, calibration_batches, get_importance, layer_gradients, unit_scores

log = logging.getLogger(__name__)

WIDTH_METHODS = ("llm-pruner",)
METHODS = WIDTH_METHODS + tuple(depth.BLOCK_SCORERS)


@dataclass
class PruneConfig:
    """What to prune and how. ``ratio`` is the fraction of all parameters removed, in [0, 1).

    ``ratio == 0`` is allowed in the library (an identity "pruning" that still writes an
    artefact: a control for experiments); the CLI asks for (0, 1) as the issue specifies.
    ``layers`` is (start, end) of the decoder blocks that may be pruned, end exclusive;
    ``None`` means leave the first 4 and last 2 alone (RankAdaptor §4.1, LLM-Pruner).
    """

    method: str = "llm-pruner"
    ratio: float = 0.2
    importance: str = "element1"
    layers: tuple[int, int] | None = None
    calibration: int = 10
    seq_len: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise RankAdaptorError(f"unknown pruning method {self.method!r}; choose one of: {', '.join(METHODS)}")
        if not isinstance(self.ratio, (int, float)) or not 0.0 <= float(self.ratio) < 1.0:
            raise RankAdaptorError(f"ratio {self.ratio!r} is outside [0, 1); give the fraction of parameters to remove, e.g. 0.2")
        if self.importance not in IMPORTANCES:
            raise RankAdaptorError(f"unknown importance {self.importance!r}; choose one of: {', '.join(IMPORTANCES)}")
        if int(self.calibration) < 1:
            raise RankAdaptorError(f"calibration {self.calibration} must be at least 1 sequence (default 10)")
        if int(self.seq_len) < 2:
            raise RankAdaptorError(f"seq_len {self.seq_len} must be at least 2 tokens (default 128)")
        if self.layers is not None:
            if len(self.layers) != 2 or self.layers[0] < 0 or self.layers[1] <= self.layers[0]:
                shown = ":".join(map(str, self.layers))
                raise RankAdaptorError(f"layer range {shown} must be START:END with 0 <= START < END "
                                       "(END exclusive), e.g. --layers 4:28")
            self.layers = (int(self.layers[0]), int(self.layers[1]))

    def layer_range(self, n_layers: int) -> range:
        start, end = self.layers if self.layers is not None else (4, n_layers - 2)
        if not 0 <= start < end <= n_layers:
            raise RankAdaptorError(
                f"layer range {start}:{end} is outside the model's {n_layers} decoder layers "
                f"(valid: 0 <= START < END <= {n_layers}); pass --layers START:END"
            )
        return range(start, end)


def state_dict_sha256(model) -> str:
    """A hash of every tensor's name, shape, dtype and bytes: identifies the exact base weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        # the tensor's own bytes through the buffer protocol: .tobytes() would copy the largest tensor
        # (a 1 GiB LM head at Llama-3-8B) on top of the model
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()


def prune_model(model, tokenizer, config: PruneConfig, texts=None, identity: dict | None = None, inplace: bool = False,
                calibration_source: str | None = None):
    """Prune ``model`` (a copy unless ``inplace``); return ``(pruned_model, manifest)``.

    ``texts`` are calibration strings (or one string); they are needed by every method and
    importance except ``llm-pruner`` with l1 / l2 / random (and ratio 0).
    """
    fam = get_family(model)
    layers = config.layer_range(fam.n_layers)
    is_width = config.method in WIDTH_METHODS
    if is_width:  # fail on an impossible ratio before the expensive gradients
        width.plan_width(fam, config.ratio, layers)
    else:
        depth.blocks_to_remove(fam, config.ratio, layers)
    imp = get_importance(config.importance, seed=config.seed)
    needs_grad = imp.needs_grad if is_width else depth.BLOCK_SCORERS[config.method].needs_grad
    needs_text = config.ratio > 0 and (needs_grad or not is_width)
    batches = None
    if needs_text:
        if texts is None:
            raise RankAdaptorError(f"method {config.method!r} with importance {config.importance!r} needs calibration text")
        batches = calibration_batches(tokenizer, texts, config.calibration, config.seq_len)

    base_hash = state_dict_sha256(model)
    params_before = width.count_params(model)
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    if not inplace:
        model = copy.deepcopy(model)
        fam = get_family(model)
    scores, gradient_bytes = None, None
    if is_width and imp.needs_grad and batches is not None:
        # Taylor scores block by block, each block's gradients freed at once (lean Taylor, issue 17)
        grads = layer_gradients(model, batches, layers, fisher=imp.needs_fisher,
                                reduce=lambda i, stats: {kind: unit_scores(fam, i, kind, imp, stats)
                                                         for kind in ("attn", "mlp")})
        scores, gradient_bytes = grads.results, grads.peak_gradient_bytes
    base_layers = list(range(fam.n_layers))
    if is_width:
        result = width.prune_width(fam, config.ratio, layers, imp, scores)
        removed: list[int] = []
    else:
        result = depth.prune_depth(fam, config.method, config.ratio, layers, batches)
        removed = result["removed_layers"]
        gradient_bytes = result.get("peak_gradient_bytes")
    for i in range(fam.n_layers):
        fam.set_head_counts(i)
    wall = time.perf_counter() - t0
    params_after = width.count_params(model)

    kept_layers = [i for i in base_layers if i not in set(removed)]
    per_layer = []
    for new_i, base_i in enumerate(kept_layers):
        kept = result.get("kept", {}).get(base_i) if is_width else None
        per_layer.append({
            "index": new_i,
            "base_index": base_i,
            "pruned": kept is not None,
            "num_heads": fam.num_heads(new_i),
            "num_key_value_heads": fam.num_kv_heads(new_i),
            "intermediate_size": fam.intermediate_size(new_i),
            "kept_kv_groups": kept["kv_groups"] if kept else None,
            "kept_channels": kept["channels"] if kept else None,
        })
    from rankadaptor.provenance import provenance

    manifest = {
        "format": FORMAT,
        "format_version": 1,
        "family": fam.name,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "config": model.config.to_dict(),
        "base_model": {**(identity or {}), "state_dict_sha256": base_hash, "num_layers": len(base_layers)},
        "method": config.method,
        "importance": config.importance if is_width else ("element1 (block sum)" if config.method == "shortened-taylor" else None),
        "ratio": config.ratio,
        "layer_range": [layers.start, layers.stop],
        "layer_ratio": result.get("layer_ratio"),
        "layers": per_layer,
        "removed_layers": removed,
        "block_scores": result.get("block_scores"),
        "params_before": params_before,
        "params_after": params_after,
        "achieved_ratio": 1 - params_after / params_before,
        "calibration": {"sequences": config.calibration, "seq_len": config.seq_len, "used": batches is not None,
                        "source": calibration_source, "peak_gradient_bytes": gradient_bytes},
        "seed": config.seed,
        "pruning_wall_time_s": wall,
        "config_used": asdict(config),
        "provenance": provenance(config.seed),
    }
    log.info("pruned %s: %d -> %d parameters (%.2f%%)", config.method, params_before, params_after,
             100 * manifest["achieved_ratio"])
    return model, manifest
