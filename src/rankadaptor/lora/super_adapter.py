"""Super-adapter: one LoRA adapter at rank R whose leading components are good sub-adapters.

Nested (ordered-rank) training as DyLoRA does it (Valipour et al., 2023), and as LoNAS / Shears
train their elastic super-adapters: every step, each module (or each decoder layer, one draw shared
by its modules) draws a rank ``b <= R`` and only its first ``b`` components act in the forward pass;
components ``>= b`` neither act nor receive a gradient that step. Component ``j`` therefore trains
in every step whose draw is ``>= j``: the first always, the last only at full rank, so the leading
components carry the most and a prefix of any length is itself a trained adapter.

The draw of ``b``: with probability ``full_rank_prob`` (default 0.25) ``b = R``; otherwise
log-uniform on {1..R}, ``P(b = k) ∝ log((k+1)/k)``. Log-uniform gives every doubling of the rank
the same share of steps, so the small ranks a budget leaves most modules with (uniform-r8's budget
is a quarter of R = 32) are trained as often as the large ones, where DyLoRA's uniform draw spends
half its steps above R/2. The full-rank steps keep the trailing components learning, so the
full adapter (PARA's starting point, the 25 % cut) stays a good LoRA too. ``distribution="uniform"``
is DyLoRA's choice, for comparison.

Scale: a truncation keeps the adapter's own scale (no DyLoRA-style ``alpha / b``). Under the
project's alpha = 2r rule every rank's scale is 2, so the rank-``b`` forward in training is exactly
the rank-``b`` sub-adapter that ``compress/cut.py`` writes (its prefix cut bakes that scale into the
factors) and what a rank-``b`` adapter under the same rule would use.

``nested=False`` is plain LoRA at rank R. On disk the result is an ordinary PEFT adapter at R.
``StartFromAdapter`` is the recovery method that fine-tunes a given (cut) adapter a few steps: the
super-adapter search's high fidelity and its validity benchmark.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.pruned_lora_export import lora_modules
from rankadaptor.lora.ranks import RankPlan, apply_plan, decoder_layer_names

log = logging.getLogger(__name__)

GRANULARITIES = ("module", "layer")
DISTRIBUTIONS = ("loguniform", "uniform")


def _flag(value, what: str) -> bool:
    """A boolean from Python or from ``--method-arg KEY=VALUE`` (which gives 0/1 or a word)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return value.lower() in ("true", "yes", "on")
    raise RankAdaptorError(f"{what} = {value!r} must be true or false (1 or 0)")


@dataclass
class NestedConfig:
    """How ranks are drawn each step; validated on construction."""

    rank: int = 32
    nested: bool = True
    granularity: str = "module"  # one draw per module, or one per decoder layer shared by its modules
    distribution: str = "loguniform"
    full_rank_prob: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise RankAdaptorError(f"rank = {self.rank!r} must be an integer >= 1 (the super-adapter's R, e.g. 32)")
        self.nested = _flag(self.nested, "nested")
        if self.granularity not in GRANULARITIES:
            raise RankAdaptorError(f"granularity {self.granularity!r} unknown; choose from {list(GRANULARITIES)}")
        if self.distribution not in DISTRIBUTIONS:
            raise RankAdaptorError(f"distribution {self.distribution!r} unknown; choose from {list(DISTRIBUTIONS)}")
        if not isinstance(self.full_rank_prob, (int, float)) or not 0.0 <= self.full_rank_prob <= 1.0:
            raise RankAdaptorError(f"full_rank_prob = {self.full_rank_prob!r} must be a number in [0, 1]")

    def rank_probabilities(self) -> torch.Tensor:
        """P(b = k) for k = 1..R (index k-1), the full-rank share included."""
        k = torch.arange(1, self.rank + 1, dtype=torch.float64)
        base = torch.log((k + 1) / k) if self.distribution == "loguniform" else torch.ones_like(k)
        p = (1.0 - self.full_rank_prob) * base / base.sum()
        p[-1] += self.full_rank_prob
        return p


# ---- rank masks: only the first b components of a LoRA module act ----------------------------------
class RankMasks:
    """Forward hooks on every ``lora_A`` that zero its outputs beyond each module's current rank.

    Zeroing the r-dimensional output of A is the truncation: B then sees only the first ``b``
    components, and components ``>= b`` get no gradient. ``train_only`` leaves eval-mode forwards
    (validation, the saved adapter) at full rank.
    """

    def __init__(self, peft_model, adapter: str = "default", train_only: bool = True):
        self.layers = lora_modules(peft_model, adapter)
        if not self.layers:
            raise RankAdaptorError("the model has no LoRA modules to truncate; wrap it with LoRA first")
        self.full = {n: int(layer.r[adapter]) for n, layer in self.layers.items()}
        self.masks = {}
        for n, layer in self.layers.items():
            w = layer.lora_A[adapter].weight
            self.masks[n] = torch.ones(self.full[n], dtype=w.dtype, device=w.device)
        self.train_only = train_only
        self._hooks = [layer.lora_A[adapter].register_forward_hook(self._hook(n)) for n, layer in self.layers.items()]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if self.train_only and not module.training:
                return None
            return output * self.masks[name]
        return hook

    def set_ranks(self, ranks: dict[str, int]) -> None:
        for n, b in ranks.items():
            if not 0 <= b <= self.full[n]:
                raise RankAdaptorError(f"rank {b} for {n} is outside 0..{self.full[n]}")
            self.masks[n].zero_()
            self.masks[n][:b] = 1.0

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def module_groups(model, names, granularity: str) -> list[list[str]]:
    """Modules that share one draw: each alone, or all modules of one decoder layer together."""
    if granularity == "module":
        return [[n] for n in names]
    groups: dict[int, list[str]] = {}
    prefixes = decoder_layer_names(model)
    for n in names:
        layer = next((i for i, p in enumerate(prefixes) if n.startswith(p + ".")), None)
        groups.setdefault(-1 - len(groups) if layer is None else layer, []).append(n)
    return [groups[k] for k in sorted(groups)]


class NestedRankCallback:
    """Draws every group's rank for the next step (``rankadaptor.lora.recover`` hooks)."""

    def __init__(self, config: NestedConfig, seed: int = 0, adapter: str = "default"):
        self.config, self.seed, self.adapter = config, seed, adapter
        self.masks: RankMasks | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.probs = config.rank_probabilities()
        self.draws = torch.zeros(config.rank, dtype=torch.int64)  # how often each rank was drawn

    def on_train_begin(self, model, optimizer, total_steps: int) -> None:
        self.masks = RankMasks(model, self.adapter, train_only=True)
        bad = {n: r for n, r in self.masks.full.items() if r != self.config.rank}
        if bad:
            raise RankAdaptorError(f"nested training expects every module at rank {self.config.rank}; "
                                   f"got {dict(list(bad.items())[:3])}")
        self.groups = module_groups(model, list(self.masks.full), self.config.granularity)
        self._draw()

    def _draw(self) -> None:
        """One rank per group from ``probs`` (a seeded generator of its own: dropout's stream is untouched)."""
        b = torch.multinomial(self.probs, len(self.groups), replacement=True, generator=self.generator) + 1
        self.current = b
        self.draws += torch.bincount(b - 1, minlength=self.config.rank)
        self.masks.set_ranks({n: int(r) for group, r in zip(self.groups, b.tolist()) for n in group})

    def on_step_end(self, step: int, model, optimizer) -> None:
        self._draw()  # the ranks of the next step

    def on_train_end(self, model) -> None:
        self.masks.remove()  # the adapter is used (and saved) at full rank

    def record(self) -> dict:
        return {"super_adapter": {**asdict(self.config), "seed": self.seed, "groups": len(self.groups),
                                  "rank_draws": self.draws.tolist()}}

    # ---- checkpoints (``rankadaptor.lora.checkpoint``) -----------------------------------------
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "current": self.current.clone(), "draws": self.draws.clone()}

    def load_state_dict(self, state: dict) -> None:
        current = state["current"].to("cpu", torch.int64)
        if current.numel() != len(self.groups):
            raise RankAdaptorError(f"the checkpoint has rank draws for {current.numel()} groups, this model "
                                   f"{len(self.groups)}; it belongs to another model or granularity")
        self.generator.set_state(state["generator"].to("cpu", torch.uint8))
        self.draws = state["draws"].to("cpu", torch.int64).clone()
        self.current = current
        self.masks.set_ranks({n: int(r) for group, r in zip(self.groups, current.tolist()) for n in group})


class SuperAdapterMethod:
    """``recover --method super``: uniform LoRA at rank R, with nested-rank training unless ``nested=false``."""

    name = "super"

    def __init__(self, rank: int = 32, nested=True, granularity: str = "module", distribution: str = "loguniform",
                 full_rank_prob: float = 0.25, alpha_rule: str = "2r", alpha: float = 16.0, dropout: float = 0.05,
                 target_params: int | None = None):
        if target_params is not None:
            raise RankAdaptorError("--method super trains the whole rank-R adapter; the budget is applied when it "
                                   "is cut (rankadaptor search with the super fidelity, or rankadaptor.compress.cut); "
                                   "drop --target-params")
        self.config = NestedConfig(rank, nested, granularity, distribution, full_rank_prob)
        self.plan_kwargs = {"alpha_rule": alpha_rule, "alpha": alpha, "dropout": dropout}
        self.callback: NestedRankCallback | None = None

    def _plan(self, model) -> RankPlan:
        return RankPlan.uniform(len(decoder_layer_names(model)), self.config.rank, **self.plan_kwargs)

    def validate(self, model) -> None:
        self._plan(model).module_ranks(model)  # a rank above a module's width fails here

    def prepare(self, model, config, total_steps: int):
        plan = self._plan(model)
        peft_model = apply_plan(model, plan)
        callbacks = []
        if self.config.nested:
            self.callback = NestedRankCallback(self.config, seed=config.seed)
            callbacks.append(self.callback)
        info = {"plan": plan.to_dict(), "super_adapter": {**asdict(self.config), "seed": config.seed}}
        return peft_model, callbacks, info

    def settings(self) -> dict:
        return {"nested": asdict(self.config), **self.plan_kwargs}


# ---- fine-tuning a given (cut) adapter --------------------------------------------------------------
class StartFromAdapter:
    """A recovery method that starts from an in-memory ``LoraAdapter`` (e.g. a cut) instead of LoRA's init.

    The model is wrapped with the adapter's exact per-module ranks and its factors are copied in;
    training then continues as any recovery does (the cut's scale is baked into its factors, alpha = r).
    """

    name = "from-adapter"

    def __init__(self, adapter, dropout: float = 0.05):
        self.adapter = adapter
        self.dropout = dropout

    def validate(self, model) -> None:
        from rankadaptor.compress.cut import check_fits_model

        check_fits_model(self.adapter, model)

    def prepare(self, model, config, total_steps: int):
        from peft import LoraConfig, get_peft_model

        c = self.adapter.config
        lora = LoraConfig(r=c["r"], lora_alpha=c["lora_alpha"], target_modules=list(self.adapter.modules),
                          rank_pattern=c.get("rank_pattern") or {}, alpha_pattern=c.get("alpha_pattern") or {},
                          use_rslora=bool(c.get("use_rslora", False)), lora_dropout=float(self.dropout),
                          bias="none", task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, lora)
        load_factors(peft_model, self.adapter)
        ranks = {n: m.r for n, m in self.adapter.modules.items()}
        params = sum(m.params for m in self.adapter.modules.values())
        return peft_model, [], {"start_ranks": ranks, "final_params": params}

    def settings(self) -> dict:
        return {"ranks": {n: m.r for n, m in self.adapter.modules.items()}, "dropout": self.dropout}


@torch.no_grad()
def load_factors(peft_model, adapter, name: str = "default") -> None:
    """Copy a ``LoraAdapter``'s A and B into a PeftModel wrapped with the same ranks; shapes are checked."""
    layers = lora_modules(peft_model, name)
    missing = sorted(set(adapter.modules) - set(layers))
    if missing:
        raise RankAdaptorError(f"the wrapped model has no LoRA module {missing[0]} (and {len(missing) - 1} more)")
    for n, m in adapter.modules.items():
        A, B = layers[n].lora_A[name].weight, layers[n].lora_B[name].weight
        if A.shape != m.A.shape or B.shape != m.B.shape:
            raise RankAdaptorError(f"module {n}: adapter factors {tuple(m.A.shape)}/{tuple(m.B.shape)} do not fit "
                                   f"the wrapped {tuple(A.shape)}/{tuple(B.shape)}")
        if not math.isclose(float(layers[n].scaling[name]), m.scale, rel_tol=1e-6):
            raise RankAdaptorError(f"module {n}: wrapped scale {float(layers[n].scaling[name])} differs from the "
                                   f"adapter's {m.scale}")
        A.copy_(m.A.to(A.dtype))
        B.copy_(m.B.to(B.dtype))
