"""Attach a saved PEFT LoRA adapter to a model for evaluation, with a precise error on mismatch.

PEFT's own failures on a mismatching adapter are either a long state-dict dump or silence (keys
of modules the model lacks are skipped with a warning). We check every LoRA tensor against the
model first: the module must exist, be a linear layer, and have the shapes lora_A [r, in] and
lora_B [out, r] imply. The first module that fails is named in the error.
"""

from __future__ import annotations

import re
from pathlib import Path

from rankadaptor.compress.adapter_io import check_targets
from rankadaptor.errors import RankAdaptorError
from rankadaptor.fileio import read_json
from rankadaptor.provenance import sha256_file

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?(?:\.weight)?$")


def _adapter_files(adapter_dir: Path) -> tuple[Path, Path]:
    cfg = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    if not adapter_dir.is_dir() or not cfg.is_file() or not weights.is_file():
        raise RankAdaptorError(
            f"{adapter_dir} is not a PEFT adapter directory (needs adapter_config.json and "
            "adapter_model.safetensors, as written by PeftModel.save_pretrained)")
    return cfg, weights


def check_adapter_fits(model, adapter_dir: str | Path) -> dict[str, int]:
    """Raise RankAdaptorError naming the first LoRA module that does not fit ``model``.

    Returns {module name: rank} for the adapter.
    """
    from safetensors import SafetensorError, safe_open
    from torch import nn

    _, weights = _adapter_files(Path(adapter_dir))
    modules = dict(model.named_modules())
    ranks: dict[str, int] = {}
    try:
        fh = safe_open(str(weights), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise RankAdaptorError(f"{weights} is not a readable safetensors file ({exc}); the adapter is corrupt or "
                               "truncated: save it again with PeftModel.save_pretrained") from exc
    with fh:
        for key in sorted(fh.keys()):
            m = _KEY.match(key)
            if m is None:
                continue
            name, shape = m["module"], tuple(fh.get_slice(key).get_shape())
            mod = modules.get(name)
            if mod is None:
                raise RankAdaptorError(
                    f"adapter {adapter_dir} does not fit the model: module {name!r} (from tensor {key!r}) does "
                    "not exist in the model; was the adapter trained on a different (e.g. pruned) model?")
            if not isinstance(mod, nn.Linear):
                raise RankAdaptorError(f"adapter {adapter_dir}: module {name!r} is a {type(mod).__name__}, not a Linear")
            if m["ab"] == "A":
                ranks[name] = shape[0]
                want, got = mod.in_features, shape[1]
                what = "in_features"
            else:
                want, got = mod.out_features, shape[0]
                what = "out_features"
            if want != got:
                raise RankAdaptorError(
                    f"adapter {adapter_dir} does not fit the model at module {name!r}: lora_{m['ab']} has shape "
                    f"{list(shape)} implying {what}={got}, but the model's layer has {what}={want}; use the "
                    "adapter with the model it was trained on")
    if not ranks:
        raise RankAdaptorError(f"adapter {adapter_dir} contains no LoRA tensors (lora_A / lora_B weights)")
    return ranks


def load_adapter(model, adapter_dir: str | Path):
    """``PeftModel.from_pretrained(model, adapter_dir)`` after ``check_adapter_fits``; eval mode.

    Returns (peft_model, identity dict).
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    cfg_path, weights = _adapter_files(adapter_dir)
    cfg = read_json(cfg_path, what="adapter config")  # PEFT's own error on a damaged file names no file
    if not isinstance(cfg, dict):
        raise RankAdaptorError(f"{cfg_path} must hold a JSON object (a PEFT adapter config), found "
                               f"{type(cfg).__name__}; save the adapter again with PeftModel.save_pretrained")
    ranks = check_adapter_fits(model, adapter_dir)
    check_targets(cfg, ranks, adapter_dir)  # weights of modules the config does not name would be dropped
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:  # anything our check did not foresee
        raise RankAdaptorError(f"PEFT could not attach adapter {adapter_dir}: {str(exc)[:800]}; check its "
                               "adapter_config.json or save the adapter again with PeftModel.save_pretrained") from exc
    peft_model.eval()
    from rankadaptor.checks import BROKEN_ADAPTER, finite_tensors

    finite_tensors(((n, p) for n, p in peft_model.named_parameters() if "lora_" in n), f"adapter {adapter_dir}",
                   BROKEN_ADAPTER)
    identity = {
        "path": str(adapter_dir.resolve()), "sha256": sha256_file(weights), "peft_type": cfg.get("peft_type"),
        "n_modules": len(ranks), "rank_total": sum(ranks.values()),
        "rank_min": min(ranks.values()), "rank_max": max(ranks.values()),
        "n_lora_params": sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n),
    }
    return peft_model, identity
