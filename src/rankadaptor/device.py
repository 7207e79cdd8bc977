"""Where models and their tensors live: the one place that picks a torch device.

* ``resolve_device(spec)`` turns what the user wrote into a ``torch.device``: ``None`` / ``"auto"``
  is CUDA when it is present, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` are
  honoured when they exist here, and anything else is a ``RankAdaptorError`` naming the choices.
* ``default_device(spec)`` sets, for a ``with`` block, what ``None`` means: the CLI's global
  ``--device`` uses it, so every subcommand's ``load_model`` follows the flag without each one
  passing it along.
* ``model_device(model)`` and ``move(obj, device)`` are what library code uses to put the tensors
  it builds (recovery batches, calibration text) where the model's weights are.

torch is imported inside the functions, so that importing this module (the CLI does) stays cheap.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from rankadaptor.errors import RankAdaptorError

_default: str | None = None  # what ``resolve_device(None)`` means; set by ``default_device``


def available_devices() -> list[str]:
    """Device names that work on this machine, for error messages and ``--help``."""
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec=None):
    """``torch.device`` for ``spec`` (None = the ``default_device``, else "auto"); an unusable one is an error."""
    import torch

    if spec is None:
        spec = _default if _default is not None else "auto"
    text = str(spec).strip().lower()
    choices = f"use auto, or one available here: {', '.join(available_devices())}"
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise RankAdaptorError(f"device {spec!r} is not a device name; {choices}") from None
    if device.type == "cpu":
        return torch.device("cpu")  # "cpu:0" and "cpu" are the same memory
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RankAdaptorError(f"device {spec!r} asked for CUDA, but no CUDA GPU is usable here "
                                   f"(torch {torch.__version__}); {choices}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RankAdaptorError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA "
                                   f"device(s); {choices}")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise RankAdaptorError(f"device {spec!r} asked for Apple MPS, which is not available here; {choices}")
        return device
    raise RankAdaptorError(f"device {spec!r} ({device.type}) is not supported by rankadaptor; {choices}")


def requested_device() -> str | None:
    """The device the user asked for (``--device``), or None when they did not."""
    return _default


@contextmanager
def default_device(spec) -> Iterator[None]:
    """Within the block, ``resolve_device(None)`` means ``spec`` (checked now); None leaves "auto"."""
    global _default
    if spec is not None:
        resolve_device(spec)  # fail before any work, not at the first model load
    old, _default = _default, spec if spec is not None else _default
    try:
        yield
    finally:
        _default = old


def model_device(model):
    """The device of the model's weights (the first parameter's; CPU for a model without any)."""
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def move(obj: Any, device) -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples) on ``device``; a no-op where it already is."""
    import torch

    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: move(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [move(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(move(v, device) for v in obj)
    return obj
