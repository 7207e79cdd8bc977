"""Resumable recovery: checkpoints of a training run in safetensors + JSON, nothing pickled.

A checkpoint is one directory ``step-000040/`` inside the run's checkpoint folder (by default
``OUT.checkpoints/`` beside the adapter directory ``OUT``) holding

* ``tensors.safetensors``: every tensor of the state: the trainable LoRA weights, the optimizer's
  moments and step counts, the torch RNG state, method statistics (PrunedLoRA masks and Fisher
  EMAs, AdaLoRA's importance scores);
* ``checkpoint.json``: everything else (the step reached, loss curves, Python / NumPy RNG states,
  optimizer hyper-parameters, method history) with each tensor replaced by a reference
  ``{"__tensor__": key}``, plus the run's ``settings`` (see ``run_settings``).

Nested state dicts (``optimizer.state_dict()``, callbacks' ``state_dict()``) go through
``encode`` / ``decode``, which keep int dict keys and tuples, so they load back exactly. A
checkpoint directory appears only when complete (``atomic_directory``); older ones are removed
after a newer one is in place, so a kill at any moment leaves at least one whole checkpoint.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from rankadaptor import device as dev
from rankadaptor.errors import RankAdaptorError
from rankadaptor.fileio import atomic_directory, read_json, write_json_atomic

log = logging.getLogger(__name__)

FORMAT = "rankadaptor-recovery-checkpoint/1"
TENSORS = "tensors.safetensors"
META = "checkpoint.json"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
# Keys that name where an input lives rather than what it is: a resumed run may spell the same
# model or data file differently, so only content (hashes, sizes, hyper-parameters) must match.
_LOCATION_KEYS = {"spec", "path", "source"}
# Settings that change how a run is executed but not its result.
_EXECUTION_ONLY = {"threads", "checkpoint_every", "gradient_checkpointing"}


def checkpoint_dir_for(out) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".checkpoints")


# ---- nested state <-> JSON + tensors -------------------------------------------------------------
def encode(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """JSON-able copy of ``obj`` with tensors moved into ``tensors`` (keys are their paths)."""
    if torch.is_tensor(obj):
        tensors[path] = obj.detach().cpu().clone().contiguous()  # clone: safetensors refuses shared storage
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: encode(v, tensors, f"{path}/{k}") for k, v in obj.items()}
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in obj):
            raise TypeError(f"state at {path!r} has dict keys that are neither str nor int")
        return {"__items__": [[k, encode(v, tensors, f"{path}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, set):
        return {"__set__": sorted(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"state at {path!r} holds a {type(obj).__name__}, which checkpoints cannot store")


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            try:
                return tensors[obj["__tensor__"]]
            except KeyError:
                raise RankAdaptorError(f"checkpoint refers to tensor {obj['__tensor__']!r}, which its "
                                       f"{TENSORS} lacks; the checkpoint is damaged") from None
        if "__items__" in obj:
            return {k: decode(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(decode(v, tensors) for v in obj["__tuple__"])
        if "__set__" in obj:
            return set(obj["__set__"])
        return {k: decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    return obj


# ---- RNG states ----------------------------------------------------------------------------------
def rng_state() -> dict:
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- settings that must match for a resume -------------------------------------------------------
def run_settings(**parts) -> dict:
    """A JSON-normal dict of what determines the run's result (locations and thread counts left out)."""
    return _strip(json.loads(json.dumps(parts, default=str)))


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in _LOCATION_KEYS and k not in _EXECUTION_ONLY}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def first_difference(saved, current, path: str = "") -> tuple[str, Any, Any] | None:
    """(dotted path, saved value, current value) of the first setting that differs, or None."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in list(saved) + [k for k in current if k not in saved]:
            diff = first_difference(saved.get(key, "<absent>"), current.get(key, "<absent>"),
                                    f"{path}.{key}" if path else key)
            if diff:
                return diff
        return None
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        for i, (a, b) in enumerate(zip(saved, current)):
            diff = first_difference(a, b, f"{path}[{i}]")
            if diff:
                return diff
        return None
    return None if saved == current else (path, saved, current)


# ---- the store -----------------------------------------------------------------------------------
class CheckpointStore:
    """The checkpoints of one run: ``save`` a state, ``latest`` step, ``load`` it, ``clear`` at the end."""

    def __init__(self, directory, keep: int = 1):
        self.dir = Path(directory)
        self.keep = max(1, keep)

    def steps(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        found = []
        for p in self.dir.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / META).is_file() and (p / TENSORS).is_file():
                found.append(int(m.group(1)))
        return sorted(found)

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: dict, settings: dict) -> Path:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        meta = {"format": FORMAT, "step": step, "settings": settings, "state": encode(state, tensors)}
        target = self.dir / f"step-{step:06d}"
        with atomic_directory(target, overwrite=True) as tmp:
            save_file(tensors, str(tmp / TENSORS), metadata={"format": "pt"})
            write_json_atomic(tmp / META, meta)
        for old in self.steps()[:-self.keep]:
            shutil.rmtree(self.dir / f"step-{old:06d}", ignore_errors=True)
        log.info("checkpoint after step %d: %s", step, target)
        return target

    def load(self, step: int) -> tuple[dict, dict]:
        """(state, settings) saved after ``step``."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        where = self.dir / f"step-{step:06d}"
        meta = read_json(where / META, what="recovery checkpoint")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise RankAdaptorError(f"{where / META} is not a {FORMAT} checkpoint; remove {self.dir} to start over")
        try:
            tensors = load_file(str(where / TENSORS))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise RankAdaptorError(f"checkpoint {where / TENSORS} is unreadable ({exc}); remove {self.dir} "
                                   "to start over") from exc
        if not isinstance(meta.get("state"), dict) or not isinstance(meta.get("settings"), dict):
            raise RankAdaptorError(f"{where / META} lacks its 'state' or 'settings'; the checkpoint is damaged, "
                                   f"remove {self.dir} to start over")
        return decode(meta["state"], tensors), meta["settings"]

    def check_settings(self, saved: dict, current: dict) -> None:
        diff = first_difference(saved, current)
        if diff:
            key, old, new = diff
            raise RankAdaptorError(
                f"cannot resume from {self.dir}: it was made with {key} = {_short(old)}, this run has "
                f"{key} = {_short(new)}. Re-run with the same settings to resume, or remove {self.dir} to start over"
            )

    def clear_partials(self) -> None:
        """Remove half-written checkpoint directories a killed run left behind (ours by name)."""
        if self.dir.is_dir():
            for p in self.dir.glob(".step-*.partial"):
                shutil.rmtree(p, ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


# ---- model and optimizer pieces ------------------------------------------------------------------
def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable_state(model, saved: dict[str, torch.Tensor]) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(saved):
        missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        raise RankAdaptorError(f"checkpoint weights do not fit the model (missing {missing[:3]}, extra {extra[:3]})")
    for n, p in params.items():
        if p.shape != saved[n].shape:
            raise RankAdaptorError(f"checkpoint weight {n} has shape {tuple(saved[n].shape)}, model {tuple(p.shape)}")
        p.copy_(saved[n])


# ---- the recovery loop's state -------------------------------------------------------------------
def snapshot(peft_model, optimizer, callbacks, curve, val_curve, seconds, resumed) -> dict:
    """Everything the recovery loop needs to continue exactly after a restart."""
    return {
        "weights": trainable_state(peft_model),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "callbacks": {f"{i}:{type(cb).__name__}": cb.state_dict() for i, cb in enumerate(callbacks)
                      if hasattr(cb, "state_dict")},
        "loss_curve": curve,
        "val_curve": val_curve,
        "train_seconds": seconds,
        "resumed_after_steps": resumed,
    }


def restore(state: dict, peft_model, optimizer, callbacks):
    """Put a ``snapshot`` back; a hand-edited or damaged state fails with a message."""
    try:
        return _restore(state, peft_model, optimizer, callbacks)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise RankAdaptorError(f"the checkpoint does not restore ({type(exc).__name__}: {exc}); it is damaged "
                               "or from another version: remove the checkpoint folder to start over") from exc


def _restore(state: dict, peft_model, optimizer, callbacks):
    load_trainable_state(peft_model, state["weights"])
    optimizer.load_state_dict(state["optimizer"])
    saved_cbs = state["callbacks"]
    current = {f"{i}:{type(cb).__name__}": cb for i, cb in enumerate(callbacks) if hasattr(cb, "state_dict")}
    if set(saved_cbs) != set(current):
        raise RankAdaptorError(f"the checkpoint holds state for callbacks {sorted(saved_cbs)} but this run has "
                               f"{sorted(current)}; resume with the same method and callbacks")
    # tensors load on the CPU whatever device saved them; callback state goes beside the weights
    # (the weights and the optimizer's moments are copied to their parameters' device by torch)
    device = dev.model_device(peft_model)
    for key, cb in current.items():
        cb.load_state_dict(dev.move(saved_cbs[key], device))
    set_rng_state(state["rng"])  # last: nothing above may consume random numbers after it
    return list(state["loss_curve"]), list(state["val_curve"]), float(state["train_seconds"]), \
        list(state["resumed_after_steps"])
