"""Rank plans: a LoRA rank per decoder layer, and their exact translation to PEFT.

A ``RankPlan`` is what every allocation method produces (RankAdaptor search, LoRA*, PrunedLoRA,
PARA) and what ``recover`` consumes. It converts to a ``peft.LoraConfig`` whose
``rank_pattern`` / ``alpha_pattern`` keys are escaped full module names: PEFT matches a key with
``re.match(rf"(.*\\.)?({key})$", name)``, first match wins, and ``save_pretrained`` sorts the
keys, so short or unescaped keys can silently give a module another layer's rank after a reload.
After wrapping, ``apply_plan`` checks every module's rank against the plan.

JSON format (``to_json`` / ``from_json``)::

    {"format": "rankadaptor-rank-plan/1", "n_layers": 30, "ranks": [8, 8, ...],
     "target_modules": ["q_proj", ...], "overrides": {"model.layers.3.mlp.down_proj": 4},
     "alpha_rule": "2r", "alpha": 16.0, "dropout": 0.05, "model": {...identity or null...}}
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rankadaptor.errors import RankAdaptorError
from rankadaptor.fileio import read_json, write_json_atomic

log = logging.getLogger(__name__)

FORMAT = "rankadaptor-rank-plan/1"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# "2r": alpha = 2·r per module (LLM-Pruner's recipe, scale 2 everywhere); "fixed": alpha = ``alpha``
# (scale alpha/r); "rslora": alpha = ``alpha`` with rank-stabilised scale alpha/sqrt(r).
ALPHA_RULES = ("2r", "fixed", "rslora")
LORA_STAR_RANKS = (4, 6, 10, 12)  # RankAdaptor's "LoRA*": ranks rising by quarter of the layers


def peft_pattern_key(module_name: str) -> str:
    """A rank_pattern/alpha_pattern key that selects exactly ``module_name`` under PEFT's rule.

    The regex-escaped full name: the dots match only dots, and since PEFT only allows a prefix
    ending in ``.`` before the key, no other module of the model (``layers.11`` vs ``layers.1``)
    can match it.
    """
    if not module_name or not isinstance(module_name, str):
        raise RankAdaptorError(f"module name {module_name!r} must be a non-empty string")
    return re.escape(module_name)


@dataclass
class RankPlan:
    """Per-decoder-layer LoRA ranks (0 = no LoRA in that layer) and how they become a LoraConfig."""

    ranks: list[int]
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    overrides: dict[str, int] = field(default_factory=dict)  # full module name -> rank
    alpha_rule: str = "2r"
    alpha: float = 16.0  # used by the "fixed" and "rslora" rules
    dropout: float = 0.05
    model: dict | None = None  # identity of the model the plan was made for, if known

    def __post_init__(self) -> None:
        if not isinstance(self.ranks, (list, tuple)):
            raise RankAdaptorError(f"ranks {self.ranks!r} must be a list with one integer rank per decoder layer")
        self.ranks = [_check_rank(r, f"ranks[{i}]") for i, r in enumerate(self.ranks)]
        if not self.ranks:
            raise RankAdaptorError("a rank plan needs at least one layer; got an empty ranks list")
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        if not isinstance(self.target_modules, (list, tuple)) or not all(
                isinstance(t, str) and t for t in self.target_modules):
            raise RankAdaptorError(f"target_modules {self.target_modules!r} must be a list of module names "
                                   f"such as {list(DEFAULT_TARGETS[:2])}")
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules or len(set(self.target_modules)) != len(self.target_modules):
            raise RankAdaptorError(f"target_modules {list(self.target_modules)} must be a non-empty list without repeats")
        if not isinstance(self.overrides, dict):
            raise RankAdaptorError(f"overrides {self.overrides!r} must be an object {{full module name: rank}}")
        self.overrides = {str(k): _check_rank(v, f"override {k!r}") for k, v in self.overrides.items()}
        if not isinstance(self.alpha_rule, str) or self.alpha_rule not in ALPHA_RULES:
            raise RankAdaptorError(f"alpha_rule {self.alpha_rule!r} unknown; choose from {list(ALPHA_RULES)}")
        if not (_is_number(self.alpha) and math.isfinite(self.alpha) and self.alpha > 0):
            raise RankAdaptorError(f"alpha {self.alpha!r} must be a positive number")
        if not (_is_number(self.dropout) and 0.0 <= float(self.dropout) < 1.0):
            raise RankAdaptorError(f"dropout {self.dropout!r} must be a number in [0, 1)")
        if self.model is not None and not isinstance(self.model, dict):
            raise RankAdaptorError(f"model {self.model!r} must be the model's identity object or null")
        if all(r == 0 for r in self.ranks) and not any(self.overrides.values()):
            raise RankAdaptorError("every rank in the plan is 0, so there is nothing to train; give some layer a rank >= 1")

    # ---- constructors and files -------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.ranks)

    @classmethod
    def uniform(cls, n_layers: int, r: int, **kwargs) -> "RankPlan":
        if not isinstance(n_layers, int) or n_layers < 1:
            raise RankAdaptorError(f"n_layers {n_layers!r} must be an integer >= 1")
        return cls(ranks=[r] * n_layers, **kwargs)

    @classmethod
    def lora_star(cls, n_layers: int, **kwargs) -> "RankPlan":
        """Seed 001's LoRA*: ranks 4, 6, 10, 12 for the first to the last quarter of the layers."""
        if not isinstance(n_layers, int) or n_layers < 1:
            raise RankAdaptorError(f"n_layers {n_layers!r} must be an integer >= 1")
        ranks = [LORA_STAR_RANKS[min(3, (4 * i) // n_layers)] for i in range(n_layers)]
        return cls(ranks=ranks, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return {"format": FORMAT, "n_layers": self.n_layers, **d}

    @classmethod
    def from_dict(cls, d: dict, source: str = "rank plan") -> "RankPlan":
        if not isinstance(d, dict) or "ranks" not in d:
            raise RankAdaptorError(f"{source} must be a JSON object with a 'ranks' list (format {FORMAT})")
        if d.get("format", FORMAT) != FORMAT:
            raise RankAdaptorError(f"{source} has format {d.get('format')!r}; expected {FORMAT!r}")
        if not isinstance(d["ranks"], list):
            raise RankAdaptorError(f"{source}: 'ranks' must be a list of integers, got {type(d['ranks']).__name__}")
        if "n_layers" in d and d["n_layers"] != len(d["ranks"]):
            raise RankAdaptorError(f"{source} says n_layers={d['n_layers']} but lists {len(d['ranks'])} ranks")
        known = {"ranks", "target_modules", "overrides", "alpha_rule", "alpha", "dropout", "model"}
        unknown = set(d) - known - {"format", "n_layers"}
        if unknown:
            raise RankAdaptorError(f"{source} has unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self, path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_json(cls, path) -> "RankPlan":
        return cls.from_dict(read_json(path, what="rank plan"), source=f"rank plan {path}")

    # ---- against a model --------------------------------------------------------------------
    def model_mismatch(self, identity: dict | None) -> str | None:
        """How the model this plan was made for differs from ``identity`` (a loader identity), or None.

        The weights' sha256 decides when both sides have one; otherwise the architecture, layer and
        parameter counts are compared. ``model`` may be a loader identity or the search's identity
        (which nests it as ``model_identity``); a plan that records nothing comparable passes.
        """
        made_for = self.model or {}
        if isinstance(made_for.get("model_identity"), dict):
            made_for = made_for["model_identity"]
        identity = identity or {}
        keys = ("sha256",) if made_for.get("sha256") and identity.get("sha256") else (
            "architecture", "n_layers", "n_params")
        diff = [k for k in keys if made_for.get(k) is not None and identity.get(k) is not None
                and made_for[k] != identity[k]]
        if not diff:
            return None
        shown = ", ".join(f"{k} {str(made_for[k])[:16]} vs {str(identity[k])[:16]}" for k in diff)
        return (f"the rank plan was made for model {made_for.get('spec') or made_for.get('path') or '?'}, not for "
                f"{identity.get('spec') or identity.get('path') or 'this model'} ({shown})")

    def module_ranks(self, model) -> dict[str, int]:
        """{full module name (relative to the base model): rank} for every targeted module, 0s included."""
        layers = decoder_layer_names(model)
        if len(layers) != self.n_layers:
            raise RankAdaptorError(
                f"the rank plan has {self.n_layers} layer ranks but the model has {len(layers)} decoder layers; "
                f"make a plan for {len(layers)} layers (e.g. RankPlan.uniform({len(layers)}, r))"
            )
        shapes = linear_shapes(model)
        out: dict[str, int] = {}
        for i, prefix in enumerate(layers):
            found = _layer_targets(shapes, prefix)
            missing = [t for t in self.target_modules if t not in found]
            if missing:
                raise RankAdaptorError(
                    f"target module(s) {missing} not found in decoder layer {i} ({prefix}); "
                    f"available: {sorted(found)}"
                )
            for t in self.target_modules:
                out[found[t]] = self.ranks[i]
        unmatched = [k for k in self.overrides if k not in out]
        if unmatched:
            raise RankAdaptorError(
                f"rank override(s) {unmatched} name no targeted module; use full names such as {next(iter(out))!r}"
            )
        out.update(self.overrides)
        for name, r in out.items():
            d_out, d_in = shapes[name]
            if r > min(d_in, d_out):
                raise RankAdaptorError(
                    f"rank {r} for module {name} exceeds min(d_in, d_out) = min({d_in}, {d_out}) = {min(d_in, d_out)}; "
                    "lower that layer's rank"
                )
        return out

    def module_alpha(self, r: int) -> float:
        return float(2 * r) if self.alpha_rule == "2r" else float(self.alpha)

    def to_lora_config(self, model, **lora_kwargs):
        """A ``peft.LoraConfig`` giving every module its planned rank and alpha (rank-0 modules left out)."""
        from peft import LoraConfig

        active = {n: r for n, r in self.module_ranks(model).items() if r > 0}
        if not active:
            raise RankAdaptorError("the overrides set every targeted module to rank 0, so there is nothing to train; "
                                   "give some module a rank >= 1")
        base_r = Counter(active.values()).most_common(1)[0][0]
        rank_pattern = {peft_pattern_key(n): r for n, r in active.items() if r != base_r}
        alpha_pattern = {}
        if self.alpha_rule == "2r":
            alpha_pattern = {peft_pattern_key(n): self.module_alpha(r) for n, r in active.items() if r != base_r}
        return LoraConfig(
            r=base_r,
            lora_alpha=self.module_alpha(base_r),
            target_modules=sorted(active),
            rank_pattern=rank_pattern,
            alpha_pattern=alpha_pattern,
            use_rslora=self.alpha_rule == "rslora",
            lora_dropout=float(self.dropout),
            bias="none",
            task_type="CAUSAL_LM",
            **lora_kwargs,
        )


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_rank(r, what: str) -> int:
    if not _is_number(r) or not math.isfinite(r) or int(r) != r or r < 0:
        raise RankAdaptorError(f"{what} = {r!r} must be an integer >= 0 (0 = no LoRA there)")
    return int(r)


def base_model_of(model):
    """The transformers model inside a PeftModel (or the model itself)."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def decoder_layer_names(model) -> list[str]:
    """Full names of the decoder blocks, in order (via the model family when known)."""
    model = base_model_of(model)
    try:
        from rankadaptor.models.families import get_family

        layers = list(get_family(model).layers)
    except (RankAdaptorError, AttributeError):
        layers = list(getattr(getattr(model, "model", None), "layers", []) or [])
    if not layers:
        raise RankAdaptorError(f"cannot find the decoder layers of {type(model).__name__}; expected model.model.layers")
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(layer)] for layer in layers]


def linear_shapes(model) -> dict[str, tuple[int, int]]:
    """{module name: (out_features, in_features)} for every Linear (the LoRA-wrapped base layer too)."""
    import torch

    model = base_model_of(model)
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".lora_" not in name:
            out[name.removesuffix(".base_layer")] = (mod.out_features, mod.in_features)
    return out


def _layer_targets(shapes: dict, prefix: str) -> dict[str, str]:
    """{leaf name: full name} of the Linear modules inside one decoder layer."""
    found = {}
    for name in shapes:
        if name.startswith(prefix + "."):
            found.setdefault(name.rsplit(".", 1)[-1], name)
    return found


def count_lora_params(model, plan: RankPlan) -> int:
    """Exact trainable LoRA parameters of ``plan`` on ``model``: Σ r·(d_in + d_out), no wrapping."""
    shapes = linear_shapes(model)
    return sum(r * (shapes[n][0] + shapes[n][1]) for n, r in plan.module_ranks(model).items())


def layer_costs(model) -> list[int]:
    """LoRA parameters per unit of rank in each decoder layer: Σ (d_in + d_out) over its targets.

    A per-layer rank plan's exact count is then ``Σ ranks[i] * layer_costs[i]`` (pruned layers are
    narrower, so their rank is cheaper: the search's budget constraint needs exactly this)."""
    return [sum(layer.values()) for layer in module_costs(model)]


def module_costs(model, target_modules=DEFAULT_TARGETS) -> list[dict[str, int]]:
    """Per decoder layer, {full module name: LoRA parameters per unit of rank (d_in + d_out)} of its targets.

    What a per-module rank search needs: the names a ``RankPlan`` override uses and the exact cost of
    one rank of each module, in layer order and, within a layer, in ``target_modules`` order."""
    n_layers = len(decoder_layer_names(model))
    shapes = linear_shapes(model)
    names = RankPlan(ranks=[1] * n_layers, target_modules=tuple(target_modules)).module_ranks(model)
    layers = decoder_layer_names(model)
    out = []
    for prefix in layers:
        mine = {n: sum(shapes[n]) for n in names if n.startswith(prefix + ".")}
        order = {t: i for i, t in enumerate(target_modules)}
        out.append(dict(sorted(mine.items(), key=lambda kv: order[kv[0].rsplit(".", 1)[-1]])))
    return out


def paired_lora_init(peft_model, seed: int) -> int:
    """Re-draw every LoRA A of a PeftModel from its own generator, seeded by (seed, module name).

    Common random numbers for a rank search: row i of a module's A is the i-th draw of that module's
    generator whatever its rank, so two plans that give a module the same rank start it identically
    (and a lower rank starts from the first rows of a higher one). The draws follow PEFT's default
    (Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(d_in), 1/sqrt(d_in))); B stays zero. The global
    RNG is not touched. Returns the number of modules re-drawn.
    """
    import hashlib

    import torch
    from peft.tuners.lora import LoraLayer

    n = 0
    for name, mod in base_model_of(peft_model).named_modules():
        if not isinstance(mod, LoraLayer):
            continue
        for adapter, A in mod.lora_A.items():
            if not isinstance(A, torch.nn.Linear):
                continue
            key = hashlib.sha256(f"{int(seed)}:{name}:{adapter}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)
            r, d_in = A.weight.shape
            bound = 1.0 / math.sqrt(d_in)
            rows = torch.stack([torch.rand(d_in, generator=gen, dtype=torch.float64) for _ in range(r)])
            with torch.no_grad():
                A.weight.copy_(((2 * rows - 1) * bound).to(A.weight.dtype))
            n += 1
    return n


def wrapped_ranks(peft_model) -> dict[str, int]:
    """{module name relative to the base model: r} of every LoRA layer inside a PeftModel."""
    from peft.tuners.lora import LoraLayer

    base = base_model_of(peft_model)
    out = {}
    for name, mod in base.named_modules():
        if isinstance(mod, LoraLayer):
            for adapter, r in mod.r.items():
                if adapter in getattr(mod, "lora_A", {}):
                    out[name] = int(r)
    return out


def verify_ranks(peft_model, plan: RankPlan) -> None:
    """Raise if any wrapped module's rank differs from the plan, or a planned module is unwrapped."""
    expected = {n: r for n, r in plan.module_ranks(peft_model).items() if r > 0}
    got = wrapped_ranks(peft_model)
    bad = {n: (expected.get(n, 0), got.get(n, 0)) for n in set(expected) | set(got) if expected.get(n, 0) != got.get(n, 0)}
    if bad:
        shown = ", ".join(f"{n}: planned {a}, got {b}" for n, (a, b) in sorted(bad.items())[:5])
        raise RankAdaptorError(f"{len(bad)} module(s) have the wrong LoRA rank after wrapping ({shown})")


def apply_plan(model, plan: RankPlan, adapter_name: str = "default"):
    """Wrap ``model`` with LoRA as ``plan`` says and check every module's rank; returns a PeftModel."""
    from peft import get_peft_model

    config = plan.to_lora_config(model)
    peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    verify_ranks(peft_model, plan)
    return peft_model


class PlanMethod:
    """Plain LoRA with the ranks of a ``RankPlan`` (uniform, LoRA*, a plan file, a search result)."""

    name = "plan"

    def __init__(self, plan: RankPlan):
        self.plan = plan

    def validate(self, model) -> None:
        self.plan.module_ranks(model)  # raises on wrong layer count, unknown module, rank too big

    def prepare(self, model, config, total_steps: int):
        info = {"plan": self.plan.to_dict(), "planned_params": count_lora_params(model, self.plan)}
        return apply_plan(model, self.plan), [], info


def live_module_ranks(peft_model, adapter: str = "default") -> dict[str, int]:
    """{module name: components that still act} of a trained PEFT LoRA/AdaLoRA model.

    A component i acts when row i of A, column i of B and (AdaLoRA) its singular value E[i] are all
    non-zero; PrunedLoRA zeroes pruned components and AdaLoRA masks E, so this is the rank each
    method really ended with, whatever the adapter's allocated shape.
    """
    ranks = {}
    for name, mod in peft_model.named_modules():
        lora_a = getattr(mod, "lora_A", None)
        if lora_a is None or adapter not in lora_a:
            continue
        a = lora_a[adapter]
        a = a.weight if hasattr(a, "weight") else a  # LoRA: an nn.Linear; AdaLoRA: a Parameter
        b = mod.lora_B[adapter]
        b = b.weight if hasattr(b, "weight") else b
        live = (a.detach().abs().sum(1) > 0) & (b.detach().abs().sum(0) > 0)
        if hasattr(mod, "lora_E") and adapter in mod.lora_E:
            live &= mod.lora_E[adapter].detach().flatten() != 0
        ranks[name.removeprefix("base_model.model.")] = int(live.sum())
    return ranks
