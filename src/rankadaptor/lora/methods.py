"""Recovery methods: how ``recover`` wraps the model before it trains, one line per method.

A method is a small class whose constructor takes keyword options and which has
``prepare(model, config, total_steps) -> (peft_model, callbacks, info)``; optionally
``validate(model)`` (bad settings fail before any data is read), ``settings()`` (what a checkpoint
must match to resume) and ``expected_ranks(peft_model)``. A new method is one import and one line
in ``METHODS``.
"""

from __future__ import annotations

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.adalora import AdaLoraMethod
from rankadaptor.lora.pruned_lora import PrunedLoRAMethod
from rankadaptor.lora.ranks import PlanMethod
from rankadaptor.lora.super_adapter import SuperAdapterMethod

METHODS: dict[str, type] = {
    "plan": PlanMethod,  # plain LoRA with a rank plan: uniform, LoRA*, a searched or allocated plan
    "adalora": AdaLoraMethod,  # AdaLoRA (Zhang et al., 2023): SVD-form LoRA with importance-driven budget
    "prunedlora": PrunedLoRAMethod,  # PrunedLoRA: high rank pruned during training, OBS compensation
    "super": SuperAdapterMethod,  # super-adapter: rank R with nested-rank (DyLoRA) training, cut to a budget later
}


def get_method(name: str) -> type:
    """The method class registered as ``name``; an unknown name lists the valid ones."""
    if name not in METHODS:
        raise RankAdaptorError(f"recovery method {name!r} unknown; valid: {sorted(METHODS)}")
    return METHODS[name]
