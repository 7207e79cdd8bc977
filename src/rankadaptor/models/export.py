"""Pruned models anyone can load: transformers files in every artefact, and ``export`` (issue 17).

Every pruned artefact carries, beside ``pruning.json`` (which rankadaptor reads), a ``config.json``
that plain transformers reads:

* when every block has the same widths and the family's own class builds exactly those shapes from
  a config (depth pruning, ratio 0, or every block pruned alike): a plain config of the family
  (``LlamaForCausalLM`` ...), no custom code;
* otherwise the base config plus ``pruned_layers`` (each block's heads, KV heads and MLP width) and
  ``auto_map`` naming ``modeling_rankadaptor_pruned.PrunedForCausalLM``: ``pruned_modeling.py``
  saved beside the weights, importing the family's class, which it subclasses to resize the
  projections and nothing else. Load it with ``trust_remote_code=True``.

So ``AutoModelForCausalLM.from_pretrained(ARTEFACT, trust_remote_code=True)`` loads an artefact,
and an adapter trained on one (its ``base_model_name_or_path`` is the artefact directory, which
``load_pruned`` records) loads with ``AutoPeftModelForCausalLM.from_pretrained(ADAPTER,
trust_remote_code=True)``.

``export_pruned(PRUNED, OUT, adapter=None, merge=False)`` writes such a directory from any artefact
(also one saved before these files existed): with ``merge`` the adapter is folded into the weights
by PEFT's own ``merge_and_unload`` (its scaling, rank and alpha patterns, rsLoRA); without it the
adapter is copied to ``OUT/adapter`` and pointed at ``OUT``. Everything checkable is checked before
any weight is read.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from rankadaptor.errors import RankAdaptorError
from rankadaptor.fileio import atomic_directory, read_json, refuse_bad_out_parent
from rankadaptor.models.artefact import (
    MANIFEST, WEIGHTS, build_skeleton, load_pruned, load_pruned_tokenizer, manifest_config, read_manifest, write_pruned,
)

log = logging.getLogger(__name__)

MODELING_FILE = "modeling_rankadaptor_pruned.py"
AUTO_CLASS = "PrunedForCausalLM"
_TEMPLATE_IMPORT = "from transformers import LlamaForCausalLM as FamilyForCausalLM"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
MERGEABLE = ("LORA", "ADALORA")  # what rankadaptor trains; PEFT merges both exactly
PEFT_PREFIX = "base_model.model."


# ----------------------------------------------------------------------------- transformers files


def transformers_config(manifest: dict):
    """``(config, needs_code)``: the config.json that rebuilds this artefact's exact shapes."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = manifest_config(manifest)
    config.tie_word_embeddings = bool(manifest.get("tied_embeddings", config.tie_word_embeddings))
    family_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]
    widths = [(w["num_heads"], w["num_key_value_heads"], w["intermediate_size"]) for w in manifest["layers"]]
    if len(set(widths)) == 1:  # one width for all blocks: maybe the family's own config can say it
        heads, kv_heads, inter = widths[0]
        head_dim = build_skeleton(manifest)[0].model.layers[0].self_attn.head_dim
        plain = _plain_config(config, num_attention_heads=heads, num_key_value_heads=kv_heads,
                              intermediate_size=inter, head_dim=head_dim, architectures=[family_class])
        if plain is not None and _builds_shapes(plain, manifest):
            return plain, False
    config.pruned_layers = [{"num_attention_heads": h, "num_key_value_heads": kv, "intermediate_size": i}
                            for h, kv, i in widths]
    config.auto_map = {"AutoModelForCausalLM": f"{Path(MODELING_FILE).stem}.{AUTO_CLASS}"}
    config.architectures = [AUTO_CLASS]
    return config, True


def _plain_config(config, **changes):
    """``config`` with ``changes``, through the constructor's checks (which a load runs too), or None."""
    from transformers import AutoConfig

    values = {**config.to_dict(), **changes}
    model_type = values.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **values)
    except Exception:  # noqa: BLE001  (transformers' validators raise ValueError or hub's StrictDataclass errors)
        return None  # e.g. hidden_size not a multiple of the head count: per-layer widths it is


def _builds_shapes(config, manifest: dict) -> bool:
    """Does the family's own class, from ``config`` alone, build every tensor at the artefact's shape?"""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    want = {n: t.shape for n, t in build_skeleton(manifest)[0].state_dict().items()}
    return {n: t.shape for n, t in plain.state_dict().items()} == want


def modeling_source(model_type: str) -> str:
    """``pruned_modeling.py`` with the family's class in its one import line."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    text = Path(__file__).with_name("pruned_modeling.py").read_text()
    if _TEMPLATE_IMPORT not in text:
        raise RankAdaptorError("pruned_modeling.py lost its family import line; please report this")
    family_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]
    return text.replace(_TEMPLATE_IMPORT, f"from transformers import {family_class} as FamilyForCausalLM")


def write_transformers_files(directory: Path, manifest: dict) -> bool:
    """Write config.json (and the modeling file when widths differ by block); return whether code is needed."""
    config, needs_code = transformers_config(manifest)
    config.save_pretrained(str(directory))
    if needs_code:
        (Path(directory) / MODELING_FILE).write_text(modeling_source(config.model_type))
    return needs_code


# ----------------------------------------------------------------------------- checks before work


def check_export(pruned, out, adapter=None, merge: bool = False) -> tuple[dict, dict | None]:
    """``(manifest, adapter config)`` once every input and the output are known to be usable."""
    pruned, out = Path(pruned), Path(out)
    if not pruned.is_dir():
        raise RankAdaptorError(f"PRUNED {pruned} is not a directory; pass the directory `rankadaptor prune` wrote")
    if not (pruned / MANIFEST).is_file():
        why = ("it is a Hugging Face model directory, which transformers loads as it is"
               if (pruned / "config.json").is_file() else "pass the directory `rankadaptor prune` wrote")
        raise RankAdaptorError(f"{pruned} is not a pruned artefact (it has no {MANIFEST}); {why}")
    if merge and adapter is None:
        raise RankAdaptorError("--merge folds an adapter into the weights; name it with --adapter DIR")
    if out.exists():
        raise RankAdaptorError(f"--out {out} already exists; choose a new directory or remove it")
    for name, inp in (("PRUNED", pruned), ("--adapter", adapter)):
        if inp is not None and Path(inp).exists():
            inp = Path(inp).resolve()
            if out.resolve() == inp or inp in out.resolve().parents:
                raise RankAdaptorError(f"--out {out} lies inside the input {name} {inp}; choose a directory outside it")
    refuse_bad_out_parent(out)
    manifest = read_manifest(pruned)
    adapter_config = check_adapter(adapter, manifest, pruned, merge) if adapter is not None else None
    return manifest, adapter_config


def check_adapter(adapter, manifest: dict, pruned: Path, merge: bool) -> dict:
    """The adapter's config, once its every LoRA tensor is known to fit this pruned model."""
    from safetensors import SafetensorError, safe_open
    from torch import nn

    adapter = Path(adapter)
    if not (adapter / ADAPTER_CONFIG).is_file():
        raise RankAdaptorError(f"--adapter {adapter} is not a PEFT adapter directory (no {ADAPTER_CONFIG}); "
                               "pass the directory `rankadaptor recover` wrote")
    config = read_json(adapter / ADAPTER_CONFIG, what="adapter config")
    peft_type = str(config.get("peft_type", "")).upper() if isinstance(config, dict) else ""
    if peft_type not in MERGEABLE:
        raise RankAdaptorError(f"--adapter {adapter} is a {peft_type or 'unknown'} adapter; export handles "
                               f"{' and '.join(MERGEABLE)} adapters (what `rankadaptor recover` writes)")
    if not (adapter / ADAPTER_WEIGHTS).is_file():
        raise RankAdaptorError(f"--adapter {adapter} has no {ADAPTER_WEIGHTS} (a pickled adapter_model.bin is not "
                               "read); re-save it with PeftModel.save_pretrained")
    modules = dict(build_skeleton(manifest)[0].named_modules())
    base = config.get("base_model_name_or_path")
    names_base = f"it names {base!r} as its base" if base else "it names no base model"
    try:
        with safe_open(str(adapter / ADAPTER_WEIGHTS), "pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise RankAdaptorError(f"{adapter / ADAPTER_WEIGHTS} is not a readable safetensors file ({exc})") from exc
    lora = {k: s for k, s in shapes.items() if ".lora_A" in k or ".lora_B" in k or ".lora_embedding_" in k}
    if not lora:
        raise RankAdaptorError(f"{adapter / ADAPTER_WEIGHTS} holds no lora_A/lora_B tensors; it is not a LoRA adapter")
    targets = set()
    for key, shape in lora.items():
        name, part = key.split(".lora_", 1)
        name = name.removeprefix(PEFT_PREFIX)
        targets.add(name)
        module = modules.get(name)
        if isinstance(module, nn.Linear):
            dims = (module.in_features, module.out_features)
        elif isinstance(module, nn.Embedding):
            dims = (module.num_embeddings, module.embedding_dim)
        else:
            raise RankAdaptorError(f"--adapter {adapter} adapts {name}, which {pruned} does not have: the adapter "
                                   f"was made for another model ({names_base}); pass one trained on {pruned}")
        side, want, got = (("input", dims[0], shape[-1]) if part.split(".")[0].endswith("A")
                           else ("output", dims[1], shape[0]))
        if want != got:
            raise RankAdaptorError(f"--adapter {adapter} was made for another model: its {name} has {side} size "
                                   f"{got} but {pruned} has {want} ({names_base}); pass an adapter trained on {pruned}")
    if merge and manifest.get("tied_embeddings") and targets & {"model.embed_tokens", "lm_head"}:
        raise RankAdaptorError(f"--adapter {adapter} adapts a tied embedding; merging it would change the input and "
                               "output embeddings alike, unlike the adapter; export without --merge")
    return config


# ----------------------------------------------------------------------------- export


def export_pruned(pruned, out, adapter=None, merge: bool = False) -> dict:
    """Write ``out``: weights (merged with ``adapter`` if ``merge``), config.json (+ code), tokenizer,
    pruning.json with an ``export`` record, and ``out/adapter`` when an adapter is kept separate."""
    from rankadaptor.provenance import provenance, sha256_file

    pruned, out = Path(pruned), Path(out)
    manifest, adapter_config = check_export(pruned, out, adapter, merge)
    dtype = getattr(torch, manifest.get("dtype", "float32"))
    model = load_pruned(pruned, dtype=torch.float32 if merge else None)  # merged in float32, stored in dtype
    tokenizer = load_pruned_tokenizer(pruned)
    record = {"source": str(pruned.resolve()), "source_weights_sha256": sha256_file(pruned / WEIGHTS),
              "merged": merge, "adapter": None}
    if adapter is not None:
        adapter = Path(adapter)
        record["adapter"] = {"path": str(adapter.resolve()), "peft_type": adapter_config.get("peft_type"),
                             "weights_sha256": sha256_file(adapter / ADAPTER_WEIGHTS)}
    if merge:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().to(dtype)
    manifest = {**manifest, "export": {**record, "provenance": provenance(None)}}
    with atomic_directory(out) as tmp:
        write_pruned(model, tokenizer, manifest, tmp)
        if adapter is not None and not merge:
            shutil.copytree(adapter, tmp / "adapter")
            _point_adapter_at(tmp / "adapter", out)
    needs_code = (out / MODELING_FILE).is_file()
    log.info("exported %s to %s (%s)", pruned, out, "custom per-layer widths" if needs_code else "plain config")
    return {"out": str(out), "needs_trust_remote_code": needs_code, "merged": merge,
            "adapter_dir": str(out / "adapter") if adapter is not None and not merge else None}


def _point_adapter_at(adapter_dir: Path, base: Path) -> None:
    """The copied adapter names the exported model (an absolute path: PEFT resolves it from the cwd)."""
    from rankadaptor.fileio import write_json_atomic

    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    config["base_model_name_or_path"] = str(base.resolve())
    write_json_atomic(adapter_dir / ADAPTER_CONFIG, config)
