"""Read and write standard PEFT LoRA adapter directories without the base model.

A PEFT LoRA adapter is ``adapter_config.json`` plus ``adapter_model.safetensors`` whose keys look
like ``base_model.model.<module>.lora_A.weight`` (r x d_in) and ``...lora_B.weight`` (d_out x r).
The module's update is ``dW = scale * B @ A`` with ``scale = alpha / r`` (or ``alpha / sqrt(r)``
under rsLoRA), where ``r`` and ``alpha`` come from ``rank_pattern`` / ``alpha_pattern`` when a
pattern key matches the module name by PEFT's rule (``re.match(rf"(.*\\.)?({key})$", name)``,
first match in key order wins) and from the top-level ``r`` / ``lora_alpha`` otherwise.

Everything here works on tensors only; nothing needs the model that the adapter was trained on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rankadaptor.checks import BROKEN_ADAPTER, finite_tensors
from rankadaptor.errors import RankAdaptorError
from rankadaptor.fileio import read_json

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
PREFIX = "base_model.model."

# lora_A/lora_B for Linear layers; lora_embedding_A/B for Embedding layers (same B @ A algebra).
# An optional adapter name between the part and ".weight" is accepted (older/hand-made files).
_KEY_RE = re.compile(r"^(?P<module>.+)\.(?P<part>lora_(?:embedding_)?[AB])(?:\.(?P<adapter>[^.]+))?(?:\.weight)?$")


@dataclass
class LoraModule:
    """One adapted module: ``dW = scale * B @ A``."""

    name: str  # module name inside the base model, e.g. "model.layers.0.self_attn.q_proj"
    A: torch.Tensor  # r x d_in
    B: torch.Tensor  # d_out x r
    r: int
    alpha: float
    scale: float
    embedding: bool = False  # stored as lora_embedding_A/B

    @property
    def d_in(self) -> int:
        return int(self.A.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.B.shape[0])

    @property
    def params(self) -> int:
        return self.r * (self.d_in + self.d_out)


@dataclass
class LoraAdapter:
    """A whole adapter: its config dict, its LoRA modules and any other saved tensors."""

    config: dict
    modules: dict[str, LoraModule]
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. modules_to_save
    key_prefix: str = PREFIX

    @property
    def params(self) -> int:
        return sum(m.params for m in self.modules.values())


def pattern_value(patterns: dict | None, name: str, default):
    """PEFT's rank_pattern/alpha_pattern lookup: first key (in dict order) matching the name's suffix."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _check_config(config: dict, path: Path) -> None:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        friendly = {"ADALORA": "AdaLoRA", "IA3": "IA3"}.get(peft_type, peft_type or "unknown-type")
        hint = {
            "ADALORA": "AdaLoRA stores an SVD-style triplet (lora_A, lora_E, lora_B) with its own rank budget",
            "IA3": "IA3 learns per-channel scaling vectors, not low-rank matrices",
        }.get(peft_type, "only plain LoRA adapters have the B @ A factors PARA compresses")
        raise RankAdaptorError(
            f"{path} is a PEFT {friendly} adapter, not a LoRA adapter "
            f"(peft_type must be 'LORA'; {hint}). Pass a LoRA adapter directory."
        )
    if config.get("use_dora"):
        raise RankAdaptorError(
            f"{path} is a DoRA adapter (use_dora=true): its update is rescaled by a learned magnitude "
            "vector, so dW is not scale*B@A and PARA cannot compress it exactly. Pass a plain LoRA adapter."
        )
    if config.get("lora_bias"):
        raise RankAdaptorError(
            f"{path} has lora_bias=true (a bias on lora_B), which PARA does not handle; "
            "pass an adapter trained with lora_bias=false."
        )
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise RankAdaptorError(f"{path}: adapter_config.json has r={r!r}; expected a positive integer")
    alpha = config.get("lora_alpha", 8)
    if not _positive_number(alpha):
        raise RankAdaptorError(f"{path}: adapter_config.json has lora_alpha={alpha!r}; expected a positive number")
    if not isinstance(config.get("use_rslora", False), bool):
        raise RankAdaptorError(f"{path}: adapter_config.json has use_rslora={config['use_rslora']!r}; expected true or false")
    for name, is_int in (("rank_pattern", True), ("alpha_pattern", False)):
        patterns = config.get(name)
        if patterns is None:
            continue
        if not isinstance(patterns, dict):
            raise RankAdaptorError(f"{path}: adapter_config.json {name} must be an object {{module pattern: value}}, "
                                   f"got {type(patterns).__name__}")
        for key, value in patterns.items():
            try:
                re.compile(key)
            except re.error as exc:
                raise RankAdaptorError(f"{path}: {name} key {key!r} is not a valid regular expression ({exc})") from None
            ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) if is_int else _positive_number(value)
            if not ok:
                raise RankAdaptorError(f"{path}: {name}[{key!r}] = {value!r}; expected a positive "
                                       f"{'integer' if is_int else 'number'}")


def _positive_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def read_adapter(adapter_dir: str | Path) -> LoraAdapter:
    """Load a PEFT LoRA adapter directory, validating its config against the tensors' shapes."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise RankAdaptorError(f"adapter directory {adapter_dir} does not exist or is not a directory")
    config_path = adapter_dir / CONFIG_NAME
    if not config_path.is_file():
        raise RankAdaptorError(
            f"{adapter_dir} is not a PEFT adapter: it has no {CONFIG_NAME}. "
            "Pass the directory written by PeftModel.save_pretrained."
        )
    config = read_json(config_path, what="adapter config")
    if not isinstance(config, dict):
        raise RankAdaptorError(f"{config_path} must hold a JSON object, found {type(config).__name__}")
    _check_config(config, adapter_dir)
    tensors = _read_tensors(adapter_dir)
    return _build_adapter(config, tensors, adapter_dir)


def _read_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    weights = adapter_dir / WEIGHTS_NAME
    if not weights.is_file():
        if (adapter_dir / LEGACY_WEIGHTS_NAME).is_file():
            raise RankAdaptorError(
                f"{adapter_dir} holds {LEGACY_WEIGHTS_NAME} (a pickle), which rankadaptor refuses to load "
                "because unpickling can run code. Re-save it with PeftModel.save_pretrained("
                "..., safe_serialization=True) to get adapter_model.safetensors."
            )
        raise RankAdaptorError(f"{adapter_dir} has {CONFIG_NAME} but no {WEIGHTS_NAME}; the adapter is incomplete")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise RankAdaptorError(f"{weights} is not a readable safetensors file ({exc}); the file is corrupt or truncated") from exc


def _build_adapter(config: dict, tensors: dict[str, torch.Tensor], path: Path) -> LoraAdapter:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    extra: dict[str, torch.Tensor] = {}
    prefixes = set()
    for key, tensor in tensors.items():
        m = _KEY_RE.match(key)
        if m is None:
            extra[key] = tensor
            continue
        full = m.group("module")
        prefix = PREFIX if full.startswith(PREFIX) else ""
        prefixes.add(prefix)
        name = full[len(prefix):]
        parts.setdefault(name, {})[m.group("part")] = tensor
    if not parts:
        raise RankAdaptorError(f"{path}/{WEIGHTS_NAME} contains no lora_A/lora_B tensors; it is not a LoRA adapter")
    check_targets(config, parts, path)
    modules = {name: _build_module(name, p, config, path) for name, p in sorted(parts.items(), key=lambda kv: _natural(kv[0]))}
    return LoraAdapter(config=config, modules=modules, extra_tensors=extra, key_prefix=prefixes.pop() if len(prefixes) == 1 else PREFIX)


def check_targets(config: dict, module_names, path) -> None:
    """Every module with LoRA weights must be one the config's ``target_modules`` select.

    PEFT builds LoRA layers from the config alone and drops weights of modules it did not build,
    so such an adapter would evaluate without them, and a compressed copy would quietly start
    applying them: either way a different adapter. Matching is PEFT's own rule (with
    ``layers_to_transform``, ``exclude_modules`` ...).
    """
    from types import SimpleNamespace

    from peft.tuners.tuners_utils import check_target_module_exists

    targets = config.get("target_modules")
    if targets is None or targets == "all-linear":
        return  # nothing to compare: PEFT resolves these against the model itself
    spec = SimpleNamespace(**{k: config.get(k) for k in ("exclude_modules", "modules_to_save", "target_modules",
                                                          "target_parameters", "layers_to_transform",
                                                          "layers_pattern")})
    spec.target_modules = targets if isinstance(targets, str) else list(targets)
    missed = [n for n in module_names if not check_target_module_exists(spec, n)]  # excluded ones are falsy
    if missed:
        raise RankAdaptorError(
            f"{path}: {len(missed)} module(s) with LoRA weights, e.g. {missed[0]}, are not selected by "
            f"adapter_config.json's target_modules {targets!r}; PEFT would ignore their weights, so the config and "
            "weights do not belong together: save the adapter again with PeftModel.save_pretrained")


def _natural(name: str) -> list:
    """Sort layers numerically (layers.2 before layers.10) so tables read in model order."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _build_module(name: str, parts: dict[str, torch.Tensor], config: dict, path: Path) -> LoraModule:
    embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
    a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
    if a_key not in parts or b_key not in parts:
        missing = a_key if a_key not in parts else b_key
        raise RankAdaptorError(f"{path}: module {name} has no {missing} tensor; the adapter file is incomplete")
    A, B = parts[a_key], parts[b_key]
    if A.ndim != 2 or B.ndim != 2:
        raise RankAdaptorError(
            f"{path}: module {name} has lora tensors of shapes {tuple(A.shape)} / {tuple(B.shape)}; "
            "only 2-D (Linear or Embedding) LoRA factors are supported, not convolution adapters"
        )
    for part, t in ((a_key, A), (b_key, B)):
        if not t.is_floating_point():
            raise RankAdaptorError(f"{path}: module {name} {part} has dtype {t.dtype}; LoRA factors are floating point")
    finite_tensors(((f"{name}.{a_key}", A), (f"{name}.{b_key}", B)), f"adapter {path}", BROKEN_ADAPTER)
    r = int(pattern_value(config.get("rank_pattern"), name, config["r"]))
    alpha = float(pattern_value(config.get("alpha_pattern"), name, config.get("lora_alpha", 8)))
    if A.shape[0] != r or B.shape[1] != r:
        raise RankAdaptorError(
            f"{path}: module {name} has lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)}, but the config "
            f"gives it rank {r} (r / rank_pattern); the config and weights do not belong together"
        )
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return LoraModule(name=name, A=A, B=B, r=r, alpha=alpha, scale=scale, embedding=embedding)


def exact_pattern_key(module_name: str) -> str:
    """A rank_pattern/alpha_pattern key that matches exactly this module.

    Uses the recover engineer's ``peft_pattern_key`` when present; a full module name is exact
    under PEFT's suffix rule anyway, and ``write_adapter`` verifies that every key selects only
    its own module.
    """
    try:
        from rankadaptor.lora.ranks import peft_pattern_key
    except ImportError:
        return module_name
    return peft_pattern_key(module_name)


def output_config(source: dict, modules: dict[str, LoraModule]) -> dict:
    """The input config with exact per-module ranks; alpha = r so every scale is 1 (baked in)."""
    if not modules:
        raise RankAdaptorError("no LoRA module keeps a rank above 0; lower the threshold or set --min-rank 1")
    names = list(modules)
    ranks = {exact_pattern_key(n): modules[n].r for n in names}
    counts: dict[int, int] = {}
    for r in ranks.values():
        counts[r] = counts.get(r, 0) + 1
    common = max(counts, key=lambda r: (counts[r], r))
    config = dict(source)
    config.update(
        r=common,
        lora_alpha=common,
        rank_pattern=ranks,
        alpha_pattern=dict(ranks),
        use_rslora=False,
        target_modules=names,
        layers_to_transform=None,
        layers_pattern=None,
        exclude_modules=None,
    )
    _verify_patterns(config, modules)
    return config


def _verify_patterns(config: dict, modules: dict[str, LoraModule]) -> None:
    """PEFT sorts pattern keys on save; check each module resolves to its own rank in that order."""
    for patterns_name in ("rank_pattern", "alpha_pattern"):
        sorted_patterns = dict(sorted(config[patterns_name].items()))
        for name, module in modules.items():
            got = pattern_value(sorted_patterns, name, None)
            if got != module.r:
                raise RankAdaptorError(
                    f"internal error: {patterns_name} key for {name} resolves to {got}, not {module.r}"
                )


def write_adapter(out_dir: Path, adapter: LoraAdapter, dtype: torch.dtype | None = None) -> None:
    """Write adapter_config.json + adapter_model.safetensors into an existing (temporary) directory."""
    from safetensors.torch import save_file

    from rankadaptor.fileio import write_json_atomic

    tensors: dict[str, torch.Tensor] = dict(adapter.extra_tensors)
    for name, m in adapter.modules.items():
        a_part, b_part = ("lora_embedding_A", "lora_embedding_B") if m.embedding else ("lora_A", "lora_B")
        suffix = "" if m.embedding else ".weight"
        for part, t in ((a_part, m.A), (b_part, m.B)):
            t = t.to(dtype) if dtype is not None else t
            tensors[f"{adapter.key_prefix}{name}.{part}{suffix}"] = t.contiguous()
    save_file(tensors, str(Path(out_dir) / WEIGHTS_NAME), metadata={"format": "pt"})
    write_json_atomic(Path(out_dir) / CONFIG_NAME, adapter.config)
