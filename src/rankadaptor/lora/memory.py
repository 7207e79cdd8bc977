"""What recovery does to fit in memory: float32 LoRA over a low-precision base, activation checkpointing.

A bfloat16 base halves the weights' memory; the LoRA weights stay float32 so that their small
updates are not rounded away (bfloat16 keeps 8 bits of mantissa) and AdamW's moments, created
like the parameters, are float32 too. Gradient checkpointing keeps only each decoder block's input
and recomputes the rest during the backward pass: activation memory falls from every block's
intermediates to one block's, for about one extra forward pass of time.
"""

from __future__ import annotations

from rankadaptor.errors import RankAdaptorError


def lora_in_float32(peft_model) -> list:
    """The trainable (LoRA) parameters, made float32 whatever the base's dtype, so their updates and
    AdamW's moments keep full precision; PEFT's autocast does this for its own wrappers, this
    makes it hold for every method. Returns them (what the optimizer trains)."""
    import torch

    params = [p for p in peft_model.parameters() if p.requires_grad]
    for p in params:
        if p.dtype != torch.float32:
            p.data = p.data.float()
    return params


def enable_gradient_checkpointing(peft_model) -> bool:
    """transformers' per-block activation checkpointing, made correct under PEFT.

    With a frozen embedding no input of a checkpointed block requires grad, and torch's reentrant
    checkpoint then returns no gradient for the LoRA weights inside it: silently untrained.
    The non-reentrant variant has no such rule, and the embedding output is made to require grad
    too (PEFT's ``enable_input_require_grads``), so either variant trains every LoRA weight.
    Returns the config's ``use_cache`` before, for ``disable_gradient_checkpointing``.
    """
    from rankadaptor.lora.ranks import base_model_of

    base = base_model_of(peft_model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise RankAdaptorError(f"{type(base).__name__} does not support gradient checkpointing; "
                               "train without --gradient-checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x; older ones have only the old name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.enable_input_require_grads()
    use_cache, base.config.use_cache = base.config.use_cache, False  # a KV cache would keep every block's K/V
    return use_cache


def disable_gradient_checkpointing(peft_model, use_cache: bool = True) -> None:
    """Undo ``enable_gradient_checkpointing`` (the model is evaluated and saved as it came)."""
    from rankadaptor.lora.ranks import base_model_of

    base = base_model_of(peft_model)
    (getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable)()
    base.disable_input_require_grads()
    base.config.use_cache = use_cache


def dtype_of(model, trainable: bool) -> str | None:
    """The dtype(s) of the trainable or of the frozen parameters, as results record them."""
    dtypes = {str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad == trainable}
    return ",".join(sorted(dtypes)) or None
