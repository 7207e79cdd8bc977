"""The pruned-model artefact on disk: safetensors + a JSON manifest of per-layer shapes + the tokenizer.

transformers 5 cannot load per-layer widths with ``from_pretrained`` and insists on
``hidden_size % num_attention_heads == 0`` at config time, so the artefact keeps the *base*
head counts in its config and the real per-layer shapes in ``pruning.json``. ``load_pruned``
builds the model on the meta device, resizes every pruned projection from the manifest,
assigns the saved tensors (``load_state_dict(assign=True)``), re-ties the embeddings and
re-creates the rotary embedding, whose buffer is not saved. Beside them ``save_pruned`` writes a
``config.json`` (and, for per-layer widths, a small modeling file) so that plain transformers and
PEFT load the artefact too (``rankadaptor.models.export``).

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
  {sequences, seq_len, used, source, peak_gradient_bytes}, ``seed``, ``pruning_wall_time_s``,
  ``config_used``, ``provenance``;
* ``export`` (only in a directory ``rankadaptor export`` wrote): source, merged, adapter, provenance.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from rankadaptor.errors import RankAdaptorError
from rankadaptor.fileio import atomic_directory, read_json, write_json_atomic
from rankadaptor.models.families import FAMILIES, family_for_model_type, get_family

log = logging.getLogger(__name__)

MANIFEST = "pruning.json"
WEIGHTS = "model.safetensors"
FORMAT = "rankadaptor-pruned-model"


def _tied(model) -> bool:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and out.weight is inp.weight


def save_pruned(model, tokenizer, manifest: dict, out, overwrite: bool = False) -> Path:
    """Write ``out/model.safetensors``, ``out/pruning.json``, the tokenizer and the transformers files, atomically."""
    with atomic_directory(out, overwrite=overwrite) as tmp:
        write_pruned(model, tokenizer, manifest, tmp)
    return Path(out)


def write_pruned(model, tokenizer, manifest: dict, directory: Path) -> None:
    """The artefact's files, into an existing (temporary) directory."""
    from safetensors.torch import save_file

    from rankadaptor.models.export import write_transformers_files

    state = model.state_dict()
    if _tied(model):
        state.pop("lm_head.weight", None)  # stored once; load_pruned re-ties it
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(directory / WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    manifest = {**manifest, "tied_embeddings": _tied(model)}
    write_json_atomic(directory / MANIFEST, manifest)
    # config.json (+ a small modeling file): plain transformers and PEFT load the artefact too
    write_transformers_files(directory, manifest)


def _meta_linear(src: nn.Linear, out_f: int, in_f: int) -> nn.Linear:
    return nn.Linear(in_f, out_f, bias=src.bias is not None, device="meta")


def manifest_config(manifest: dict):
    """The transformers config recorded in ``pruning.json`` (base head counts, remaining blocks)."""
    from transformers import AutoConfig

    cfg_dict = dict(manifest["config"])
    model_type = cfg_dict.pop("model_type", None)
    if model_type is None:
        raise RankAdaptorError("pruning.json has no config.model_type; the artefact is damaged")
    family_for_model_type(model_type)
    return AutoConfig.for_model(model_type, **cfg_dict)


def build_skeleton(manifest: dict, dtype: torch.dtype | None = None):
    """The pruned architecture on the meta device, every projection at its manifest shape."""
    from transformers import AutoModelForCausalLM

    config = manifest_config(manifest)
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

    from safetensors import SafetensorError

    directory = Path(directory)
    manifest = read_manifest(directory)
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
    # as from_pretrained does: the model names where it was loaded from, so an adapter trained on it
    # records this directory (PEFT's base_model_name_or_path), not the dense model it was pruned from
    model.name_or_path = model.config._name_or_path = str(directory.resolve())
    return model.eval()


def read_manifest(directory) -> dict:
    """``pruning.json`` of a pruned artefact, checked; a clear refusal for anything else."""
    directory = Path(directory)
    manifest = read_json(directory / MANIFEST, what="pruning manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise RankAdaptorError(f"{directory / MANIFEST} is not a rankadaptor pruned-model manifest (format {found!r})")
    _check_manifest(manifest, directory / MANIFEST)
    if not (directory / WEIGHTS).is_file():
        raise RankAdaptorError(f"{directory} has no {WEIGHTS}; the artefact is incomplete")
    return manifest


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
