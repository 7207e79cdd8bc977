"""Where models and their tensors live, and in which precision: the one place that picks both.

* ``resolve_device(spec)`` turns what the user wrote into a ``torch.device``: ``None`` / ``"auto"``
  is CUDA when it is present, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` are
  honoured when they exist here, and anything else is a ``RankAdaptorError`` naming the choices.
* ``default_device(spec)`` sets, for a ``with`` block, what ``None`` means: the CLI's global
  ``--device`` uses it, so every subcommand's ``load_model`` follows the flag without each one
  passing it along.
* ``model_device(model)`` and ``move(obj, device)`` are what library code uses to put the tensors
  it builds (recovery batches, calibration text) where the model's weights are.
* ``resolve_dtype(spec, device, training)`` is the precision of the frozen weights: "auto" is
  bfloat16 on a GPU that has it, float32 elsewhere; a precision the device cannot run is an error.
  ``default_dtype(spec)`` scopes the CLI's global ``--dtype`` like ``default_device``.
* ``plan_device_map(model)`` / ``place(model, plan)``: one model spread over the visible GPUs
  (``--device-map auto``), with CPU offload refused unless asked for.

torch is imported inside the functions, so that importing this module (the CLI does) stays cheap.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

from rankadaptor.errors import RankAdaptorError

log = logging.getLogger(__name__)

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


# ---- precision ------------------------------------------------------------------------------------
DTYPES = ("auto", "float32", "bfloat16", "float16")
_default_dtype: str | None = None  # what ``resolve_dtype(None)`` means; set by ``default_dtype``


def resolve_dtype(spec=None, device=None, training: bool = False):
    """``torch.dtype`` the frozen weights run in on ``device``; a precision the device cannot run is an error.

    "auto" is bfloat16 on a CUDA GPU that supports it and float32 elsewhere (the CPU, MPS, older
    GPUs: their float16 training needs loss scaling, which recovery does not do). ``training``
    refuses float16 on the CPU, whose backward pass in half precision is neither fast nor complete.
    """
    import torch

    device = device if isinstance(device, torch.device) else resolve_device(device)
    if spec is None:
        spec = _default_dtype if _default_dtype is not None else "auto"
    name = dtype_name(spec) if isinstance(spec, torch.dtype) else str(spec).strip().lower()
    if name not in DTYPES:
        raise RankAdaptorError(f"dtype {spec!r} unknown; choose one of {', '.join(DTYPES)}")
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" and _cuda_bf16(device) else "float32"
    if name == "bfloat16" and device.type == "cuda" and not _cuda_bf16(device):
        raise RankAdaptorError(f"--dtype bfloat16: {_gpu_name(device)} has no bfloat16 support (it needs compute "
                               "capability 8.0 or newer, e.g. A100, H100); use --dtype float32 (or float16)")
    if name == "float16" and device.type == "cpu" and training:
        raise RankAdaptorError("--dtype float16 cannot train on the CPU (half-precision backward passes are slow "
                               "and incomplete there); use --dtype bfloat16 or float32 on the CPU, or float16 on a GPU")
    return getattr(torch, name)


def dtype_name(dtype) -> str:
    """"bfloat16" for ``torch.bfloat16`` (what results files and manifests record)."""
    return str(dtype).removeprefix("torch.")


def check_trainable(model) -> None:
    """Refuse, before any step, a frozen base whose precision its device cannot train in."""
    import torch

    half = {(p.device, p.dtype) for p in model.parameters() if p.dtype in (torch.float16, torch.bfloat16)}
    for device, dtype in half:
        resolve_dtype(dtype, device, training=True)


def _cuda_bf16(device) -> bool:
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index) >= (8, 0)


def _gpu_name(device) -> str:
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return f"GPU {index} ({torch.cuda.get_device_name(index)}, compute capability {major}.{minor})"


@contextmanager
def default_dtype(spec, device=None, training: bool = False) -> Iterator[None]:
    """Within the block, ``resolve_dtype(None)`` means ``spec`` (checked now against ``device``)."""
    global _default_dtype
    if spec is not None:
        resolve_dtype(spec, device, training=training)  # fail before any work
    old, _default_dtype = _default_dtype, spec if spec is not None else _default_dtype
    try:
        yield
    finally:
        _default_dtype = old


# ---- one model over several GPUs ------------------------------------------------------------------
DEVICE_MAPS = ("auto",)


def gpu_free_memory() -> dict[int, int]:
    """{GPU index: free bytes} for every visible CUDA GPU (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    return {i: int(torch.cuda.mem_get_info(i)[0]) for i in range(torch.cuda.device_count())}


def cpu_available_memory() -> int:
    """Bytes the process can still allocate on the CPU (MemAvailable, as psutil reports it)."""
    import psutil

    return int(psutil.virtual_memory().available)


def plan_device_map(model, spec: str = "auto", allow_offload: bool = False, free: dict | None = None,
                    headroom: float = 0.85) -> dict:
    """Where each block of ``model`` goes: accelerate's balanced placement over the visible GPUs.

    ``model`` may live on the meta device (only shapes and dtypes are read). One device holding
    everything gives ``{"": device}``; without a GPU that device is the CPU. ``headroom`` keeps a
    share of every GPU free for activations. Blocks that would spill to the CPU are refused unless
    ``allow_offload`` (they then run there, slowly); blocks that fit nowhere are always refused.
    """
    if spec not in DEVICE_MAPS:
        raise RankAdaptorError(f"--device-map {spec!r} unknown; choose one of {', '.join(DEVICE_MAPS)}")
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    free = gpu_free_memory() if free is None else dict(free)
    if not free:
        log.info("--device-map auto: no CUDA GPU is visible, so the whole model runs on the cpu")
        return {"": "cpu"}
    max_memory: dict = {i: int(b * headroom) for i, b in free.items()}
    if allow_offload:
        max_memory["cpu"] = int(cpu_available_memory() * headroom)
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if len(free) > 1:
        max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split)
    device_map = dict(infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split))
    need = sum(p.numel() * p.element_size() for p in model.parameters())
    gpus = ", ".join(f"GPU {i}: {_gib(b)} free" for i, b in sorted(free.items()))
    # the CPU is offered to accelerate only with allow_offload: what fits nowhere it marks "disk"
    nowhere = [n for n, d in device_map.items() if d == "disk"]
    spilled = [n for n, d in device_map.items() if d == "cpu"]
    if nowhere:
        where = "the visible GPUs" + (" and the CPU" if allow_offload else "")
        fix = ("add GPUs (CUDA_VISIBLE_DEVICES), free GPU memory or use a smaller --dtype"
               if allow_offload else "pass --allow-cpu-offload to run the rest on the CPU (slow), add GPUs, "
               "free GPU memory or use a smaller --dtype")
        raise RankAdaptorError(f"--device-map auto cannot place the model's {_gib(need)} of weights on {where} "
                               f"({gpus}; {int(headroom * 100)} % of each is usable): {len(nowhere)} "
                               f"module(s) left over, e.g. {nowhere[0]}; {fix}")
    if spilled:
        log.warning("--device-map auto: %d module(s) run on the CPU (offloaded): %s", len(spilled), spilled[:3])
    if len(set(device_map.values())) == 1:
        return {"": next(iter(device_map.values()))}
    return device_map


def place(model, device_map: dict):
    """Put ``model`` where ``device_map`` says: one ``.to()`` for one device, accelerate's hooks otherwise."""
    import torch

    devices = set(device_map.values())
    if len(devices) == 1:
        only = devices.pop()
        return model.to(torch.device("cuda", only) if isinstance(only, int) else torch.device(only))
    from accelerate import dispatch_model

    log.info("spreading the model over %s", sorted(map(str, devices)))
    return dispatch_model(model, device_map=device_map)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"
