"""The pruning entry point and the pruned-model artefact (safetensors + JSON manifest + tokenizer).

transformers 5 cannot load per-layer widths with ``from_pretrained`` and insists on
``hidden_size % num_attention_heads == 0`` at config time, so the artefact keeps the *base*
head counts in its config and the real per-layer shapes in ``pruning.json``. ``load_pruned``
builds the model on the meta device, resizes every pruned projection from the manifest,
assigns the saved tensors (``load_state_dict(assign=True)``), re-ties the embeddings and
re-creates the rotary embedding, whose buffer is not saved.

``pruning.json`` (format ``rankadaptor-pruned-model``, format_version 1):

* ``family``, ``dtype``, ``config`` (the transformers config dict after pruning: base head counts,
  ``num_hidden_layers`` and ``layer_types`` after block removal), ``tied_embeddings``;
* ``base_model``: the loader's identity (spec, path, file hash ...) plus ``state_dict_sha256``
  (hash of every base tensor) and ``num_layers``;
* ``method``, ``importance``, ``ratio`` (asked, whole model), ``layer_range`` [start, end),
  ``layer_ratio`` (derived per-layer ratio, width only), ``achieved_ratio``,
  ``params_before`` / ``params_after``;
* ``layers``: one entry per remaining block: ``index``, ``base_index``, ``pruned``,
  ``num_heads``, ``num_key_value_heads``, ``intermediate_size``, ``kept_kv_groups`` and
  ``kept_channels`` (base indices, ``null`` for blocks outside the range or depth pruning);
* ``removed_layers`` (base indices), ``block_scores`` (depth), ``calibration``
  {sequences, seq_len, used, source}, ``seed``, ``pruning_wall_time_s``, ``config_used``,
  ``provenance``.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from rankadaptor.errors import RankAdaptorError
from rankadaptor.fileio import atomic_directory, read_json, write_json_atomic
from rankadaptor.models.families import FAMILIES, family_for_model_type, get_family
from rankadaptor.prune import depth, width
from rankadaptor.prune.importance import IMPORTANCES, calibration_batches, get_importance, gradient_stats

log = logging.getLogger(__name__)

WIDTH_METHODS = ("llm-pruner",)
METHODS = WIDTH_METHODS + tuple(depth.BLOCK_SCORERS)
MANIFEST = "pruning.json"
WEIGHTS = "model.safetensors"
FORMAT = "rankadaptor-pruned-model"


@dataclass
class PruneConfig:
    """What to prune and how. ``ratio`` is the fraction of all parameters removed, in [0, 1).

    ``ratio == 0`` is allowed in the library (an identity "pruning" that still writes an
    artefact: a control for experiments); the CLI asks for (0, 1) as the issue specifies.
    ``layers`` is (start, end) of the decoder blocks that may be pruned, end exclusive;
    ``None`` means leave the first 4 and last 2 alone (seed 001, LLM-Pruner).
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
                raise RankAdaptorError(f"layer range {self.layers} must be START:END with 0 <= START < END")
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
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
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
    stats = None
    if needs_grad and batches is not None:
        stats = gradient_stats(model, batches, fisher=imp.needs_fisher, only=[fam.layers[i] for i in layers])
    base_layers = list(range(fam.n_layers))
    if is_width:
        result = width.prune_width(fam, config.ratio, layers, imp, stats)
        removed: list[int] = []
    else:
        result = depth.prune_depth(fam, config.method, config.ratio, layers, batches, stats)
        removed = result["removed_layers"]
    del stats
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
                        "source": calibration_source},
        "seed": config.seed,
        "pruning_wall_time_s": wall,
        "config_used": asdict(config),
        "provenance": provenance(config.seed),
    }
    log.info("pruned %s: %d -> %d parameters (%.2f%%)", config.method, params_before, params_after,
             100 * manifest["achieved_ratio"])
    return model, manifest


# ----------------------------------------------------------------------------- save / load


def _tied(model) -> bool:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and out.weight is inp.weight


def save_pruned(model, tokenizer, manifest: dict, out, overwrite: bool = False) -> Path:
    """Write ``out/model.safetensors``, ``out/pruning.json`` and the tokenizer, atomically."""
    from safetensors.torch import save_file

    state = model.state_dict()
    if _tied(model):
        state.pop("lm_head.weight", None)  # stored once; load_pruned re-ties it
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        write_json_atomic(tmp / MANIFEST, {**manifest, "tied_embeddings": _tied(model)})
    return Path(out)


def _meta_linear(src: nn.Linear, out_f: int, in_f: int) -> nn.Linear:
    return nn.Linear(in_f, out_f, bias=src.bias is not None, device="meta")


def build_skeleton(manifest: dict, dtype: torch.dtype | None = None):
    """The pruned architecture on the meta device, every projection at its manifest shape."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_dict = dict(manifest["config"])
    model_type = cfg_dict.pop("model_type", None)
    if model_type is None:
        raise RankAdaptorError("pruning.json has no config.model_type; the artefact is damaged")
    family_for_model_type(model_type)
    config = AutoConfig.for_model(model_type, **cfg_dict)
    dtype = dtype or getattr(torch, manifest.get("dtype", "float32"))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    fam = get_family(model)
    if fam.n_layers != len(manifest["layers"]):
        raise RankAdaptorError(f"pruning.json lists {len(manifest['layers'])} layers but its config has {fam.n_layers}")
    hidden, hd = config.hidden_size, fam.head_dim
    for i, info in enumerate(manifest["layers"]):
        attn, mlp = fam.attention(i), fam.mlp(i)
        nh, nkv, inter = info["num_heads"], info["num_key_value_heads"], info["intermediate_size"]
        attn.q_proj = _meta_linear(attn.q_proj, nh * hd, hidden)
        attn.k_proj = _meta_linear(attn.k_proj, nkv * hd, hidden)
        attn.v_proj = _meta_linear(attn.v_proj, nkv * hd, hidden)
        attn.o_proj = _meta_linear(attn.o_proj, hidden, nh * hd)
        mlp.gate_proj = _meta_linear(mlp.gate_proj, inter, hidden)
        mlp.up_proj = _meta_linear(mlp.up_proj, inter, hidden)
        mlp.down_proj = _meta_linear(mlp.down_proj, hidden, inter)
        fam.set_head_counts(i)
    fam.renumber_layers()
    return model, config


def load_pruned(directory, dtype: torch.dtype | None = None):
    """Rebuild the exact pruned model saved by ``save_pruned`` (eval mode, CPU)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    from safetensors import SafetensorError

    directory = Path(directory)
    manifest = read_json(directory / MANIFEST, what="pruning manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise RankAdaptorError(f"{directory / MANIFEST} is not a rankadaptor pruned-model manifest (format {found!r})")
    _check_manifest(manifest, directory / MANIFEST)
    if not (directory / WEIGHTS).is_file():
        raise RankAdaptorError(f"{directory} has no {WEIGHTS}; the artefact is incomplete")
    model, config = build_skeleton(manifest, dtype)
    try:
        state = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise RankAdaptorError(f"{directory / WEIGHTS} is not a readable safetensors file ({exc}); "
                               "the artefact is corrupt or truncated") from exc
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # a tensor whose shape is not the one pruning.json gives
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:300])
        raise RankAdaptorError(f"{directory / WEIGHTS} does not match the shapes in pruning.json: {detail}") from exc
    tied = manifest.get("tied_embeddings", False)
    allowed_missing = {"lm_head.weight"} if tied else set()
    if set(missing) - allowed_missing or unexpected:
        raise RankAdaptorError(
            f"{directory / WEIGHTS} does not match pruning.json: missing {sorted(set(missing) - allowed_missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    # inv_freq is a non-persistent buffer: it was never saved and is still on the meta device
    rope = model.model.rotary_emb
    model.model.rotary_emb = type(rope)(config=config)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise RankAdaptorError(f"load_pruned left tensors uninitialised: {leftovers[:5]}; please report this")
    return model.eval()


_LAYER_SIZES = ("num_heads", "num_key_value_heads", "intermediate_size")


def _check_manifest(manifest: dict, where: Path) -> None:
    """The fields ``build_skeleton`` reads, with their types: a damaged file fails with a message."""
    if not isinstance(manifest.get("config"), dict):
        raise RankAdaptorError(f"{where} has no 'config' object (the transformers config); the artefact is damaged")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        raise RankAdaptorError(f"{where} has no 'layers' list (one entry per decoder block); the artefact is damaged")
    for i, info in enumerate(layers):
        if not isinstance(info, dict):
            raise RankAdaptorError(f"{where}: layers[{i}] must be an object, got {type(info).__name__}")
        for key in _LAYER_SIZES:
            v = info.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RankAdaptorError(f"{where}: layers[{i}].{key} = {v!r}; expected a positive integer")
    dtype = manifest.get("dtype", "float32")
    if not isinstance(dtype, str) or not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise RankAdaptorError(f"{where}: dtype {dtype!r} is not a torch dtype name such as 'float32'")


def load_pruned_tokenizer(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def supported_families() -> list[str]:
    return sorted(FAMILIES)
