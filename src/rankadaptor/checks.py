"""Non-finite numbers never pass silently: one check for scalars, one for tensors.

A NaN loss, perplexity or log-likelihood, or a NaN/Inf weight, means a broken input (corrupt
weights, a diverged adapter) or a learning rate too high; carrying on would report a number that
means nothing (a NaN adapter scores 50 % on a two-choice task). Each check stops the run with a
``RankAdaptorError`` that names the value and its likely cause. torch is imported lazily.
"""

from __future__ import annotations

import math
from typing import Iterable

from rankadaptor.errors import RankAdaptorError

# likely causes, one wording per kind of number
CORRUPT_WEIGHTS = ("the model's weights are corrupt or were saved broken; run `rankadaptor assets verify` for "
                   "the offline model, or save the model again")
BROKEN_ADAPTER = "the adapter is broken (a diverged training?); train or save it again"
BROKEN_OUTPUTS = ("the model produces NaN/Inf outputs: its weights or its adapter are broken (try the model "
                  "alone), or its dtype overflows (use float32)")


def finite(value: float, what: str, cause: str) -> float:
    """``value`` as a float; a ``RankAdaptorError`` ("WHAT is nan: CAUSE") if it is NaN or infinite."""
    value = float(value)
    if not math.isfinite(value):
        raise RankAdaptorError(f"{what} is {value}: {cause}")
    return value


def finite_tensors(named: Iterable, what: str, cause: str) -> None:
    """Check every ``(name, tensor)``; the first one holding NaN/Inf is named in the error.

    Integer tensors cannot hold NaN and meta tensors hold no values: both are skipped. A sum is NaN/Inf whenever an element is (or
    when it overflows, which the exact check below then clears), so one reduction per tensor
    keeps this cheap: about 0.1 s for a 135M-parameter model on one CPU thread.
    """
    import torch

    for name, tensor in named:
        if not tensor.is_floating_point() or tensor.is_meta or bool(torch.isfinite(tensor.detach().sum())):
            continue
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise RankAdaptorError(f"{what}: tensor {name} has {bad} NaN/Inf value(s) of {tensor.numel()}; {cause}")
