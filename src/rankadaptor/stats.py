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


NO_TEST = "no test"
SPREAD_TOLERANCE = 1e-9
Z_95 = float(_st.norm.ppf(0.975))  # two-sided alpha = 0.05
Z_POWER_80 = float(_st.norm.ppf(0.80))


def verdict(low: float, high: float, n: int, spread: float) -> str:
    """"significant" when the interval excludes 0, else "not significant"; "no test" when there is
    nothing to test: fewer than 3 paired observations or no spread at all (every pair differs by the
    same amount, e.g. two models right on exactly the same documents). A spread below 1e-9 is
    float rounding (0.61 − 0.56 ≠ 0.60 − 0.55 in binary) and counts as none."""
    if n < 3 or not spread > SPREAD_TOLERANCE or math.isnan(low) or math.isnan(high):
        return NO_TEST
    return "not significant" if low <= 0.0 <= high else "significant"


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean of a − b (paired by seed) with its t-interval and a verdict (see ``verdict``).

    ``significant`` is True only for the verdict "significant" (never for "no test").
    """
    if len(a) != len(b):
        raise ValueError(f"paired difference needs equal lengths, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    ci = mean_ci(diffs, confidence)
    spread = max(diffs) - min(diffs) if diffs else 0.0
    v = verdict(ci.low, ci.high, ci.n, spread)
    return {**ci.to_dict(), "verdict": v, "significant": v == "significant"}


def verdict_of(diff: dict) -> str:
    """The verdict of a ``paired_difference`` dict, also for ones saved before verdicts were stored
    (a t-interval has zero width exactly when the differences have no spread)."""
    if "verdict" in diff:
        return diff["verdict"]
    return verdict(diff["ci_low"], diff["ci_high"], diff["n"], diff["ci_high"] - diff["ci_low"])


def detectable_difference(sd: float, n: int, z_alpha: float = Z_95, z_power: float = Z_POWER_80) -> float:
    """The smallest mean paired difference a two-sided test at alpha 0.05 detects with 80 % power,
    for per-observation differences of standard deviation ``sd`` over ``n`` observations."""
    return (z_alpha + z_power) * sd / math.sqrt(n) if n > 0 else math.inf


def observations_needed(sd: float, delta: float, z_alpha: float = Z_95, z_power: float = Z_POWER_80) -> int:
    """How many paired observations ``detectable_difference`` needs to reach ``delta``."""
    if not delta > 0:
        raise ValueError(f"the difference to detect must be > 0, got {delta!r}")
    return max(3, math.ceil(((z_alpha + z_power) * sd / delta) ** 2))
