"""Means with confidence intervals: every comparison this project reports goes through here.

The effects rank allocation produces are about the size of run-to-run noise (design.md §3), so a
number without its interval is not reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats as _st


@dataclass(frozen=True)
class MeanCI:
    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def fmt(self, scale: float = 1.0, digits: int = 2) -> str:
        if self.n < 2 or math.isnan(self.half_width):
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.half_width * scale:.{digits}f}"

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n}


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Student-t interval of the mean; a single value gets an interval of NaN width."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_ci needs at least one value")
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return MeanCI(m, math.nan, math.nan, len(xs))
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    h = _st.t.ppf((1 + confidence) / 2, len(xs) - 1) * sd / math.sqrt(len(xs))
    return MeanCI(m, m - h, m + h, len(xs))


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean of a − b (paired by seed) with its t-interval and whether the interval excludes 0."""
    if len(a) != len(b):
        raise ValueError(f"paired difference needs equal lengths, got {len(a)} and {len(b)}")
    ci = mean_ci([x - y for x, y in zip(a, b)], confidence)
    significant = ci.n >= 2 and not (ci.low <= 0.0 <= ci.high)
    return {**ci.to_dict(), "significant": bool(significant)}
