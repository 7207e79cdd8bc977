"""The search measures its own noise (design §3): repeats of the uniform plan and of the incumbent.

Within a study every screening trial runs on the study's seed (common random numbers), so two
plans differ only by their own, plan-specific noise. To know how big that is, every ``every``
completed trials the uniform plan and the current incumbent (the best measured plan) are measured
again on a fresh seed, both on the same one. From these repeats:

* ``seed_sd``: how much one plan's value moves from seed to seed (pooled over the repeated plans);
* ``pair_sd``: the plan-specific noise left under common random numbers. With d(s) = incumbent(s) −
  uniform(s), ``e = d(s_j) − d(s_0)`` has variance 4σ², so σ = sqrt(mean(e²) / 4). The incumbent was
  picked for a high value on s_0, so this errs on the large side (winner's curse), never the small.

``noise_sd`` (pair_sd when there is one, else seed_sd) is what the surrogate takes as observation
noise, what an improvement must exceed to count in the convergence test, and what ``verdict``
compares the spread of the trial values with (an F test). Repeats are stored as study user attrs
``noise:<checkpoint>:<uniform|incumbent>``, one key per measurement, so workers never overwrite
each other's (two workers measuring the same checkpoint write the same values).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import optuna
from scipy import stats

from rankadaptor.search.space import SearchSpace, plan_hash

log = logging.getLogger(__name__)

PREFIX = "noise:"


def repeat_seed(study_seed: int, checkpoint: int) -> int:
    """The fresh seed of checkpoint j (1, 2, ...): never the study's seed, never a final re-evaluation seed."""
    return int(study_seed) + 1 + 7919 * int(checkpoint)


def measure_due(study: optuna.Study, space: SearchSpace, objective: Callable[..., float], every: int,
                study_seed: int, fidelity: str) -> int:
    """Measure every checkpoint due by now (one per ``every`` completed trials) not measured yet; returns how many."""
    from rankadaptor.search.sampler import completed_data

    if not every:
        return 0
    X, y, trials = completed_data(space, study)
    done = 0
    attrs = study.user_attrs
    uniform = space.uniform()
    uni_trial = next((t for t, x in zip(trials, X) if np.array_equal(x, uniform)), None)
    for j in range(1, len(y) // every + 1):
        if f"{PREFIX}{j:03d}:uniform" in attrs:
            continue
        seed = repeat_seed(study_seed, j)
        uni_value = float(objective(uniform, seed=seed, fidelity=fidelity))
        record: dict[str, Any] = {"seed": seed, "value": uni_value, "plan_hash": plan_hash(uniform),
                                  "at_study_seed": uni_trial.value if uni_trial is not None else None}
        study.set_user_attr(f"{PREFIX}{j:03d}:uniform", record)
        log.info("noise checkpoint %d (seed %d): uniform %.5f", j, seed, uni_value)
        best = X[int(np.argmax(y))]
        if not np.array_equal(best, uniform) and uni_trial is not None:
            inc_trial = trials[int(np.argmax(y))]
            value = float(objective(best, seed=seed, fidelity=fidelity))
            study.set_user_attr(f"{PREFIX}{j:03d}:incumbent", {
                "seed": seed, "value": value, "plan_hash": plan_hash(best), "ranks": [int(r) for r in best],
                "at_study_seed": inc_trial.value, "uniform_value": uni_value,
                "uniform_at_study_seed": uni_trial.value})
            log.info("noise checkpoint %d (seed %d): incumbent (trial %d) %.5f", j, seed, inc_trial.number, value)
        done += 1
    return done


def estimate(study: optuna.Study) -> dict[str, Any]:
    """Noise estimates from the repeats stored in the study (None where there is nothing to estimate from)."""
    repeats = {k: v for k, v in study.user_attrs.items() if k.startswith(PREFIX)}
    by_plan: dict[str, list[float]] = {}
    pairs = []
    for key, rec in sorted(repeats.items()):
        values = by_plan.setdefault(rec["plan_hash"], [])
        if not values and rec.get("at_study_seed") is not None:
            values.append(float(rec["at_study_seed"]))
        values.append(float(rec["value"]))
        if key.endswith(":incumbent"):
            pairs.append((rec["value"] - rec["uniform_value"]) - (rec["at_study_seed"] - rec["uniform_at_study_seed"]))
    ss = sum(float(np.sum((np.asarray(v) - np.mean(v)) ** 2)) for v in by_plan.values())
    dof = sum(len(v) - 1 for v in by_plan.values())
    seed_sd = float(np.sqrt(ss / dof)) if dof > 0 else None
    pair_sd = float(np.sqrt(np.mean(np.square(pairs)) / 4)) if pairs else None
    noise_sd, noise_dof = (pair_sd, len(pairs)) if pair_sd is not None else (seed_sd, dof)
    return {"seed_sd": seed_sd, "seed_dof": dof, "pair_sd": pair_sd, "pair_dof": len(pairs),
            "noise_sd": noise_sd, "noise_dof": noise_dof, "n_repeats": len(repeats)}


def verdict(values: np.ndarray, noise: dict[str, Any]) -> dict[str, Any]:
    """Do the trial values spread more than noise alone would make them? One line and its numbers."""
    values = np.asarray(values, float)
    spread = float(np.std(values, ddof=1)) if len(values) >= 2 else None
    sd, dof = noise.get("noise_sd"), noise.get("noise_dof") or 0
    out = {"trial_sd": spread, "noise_sd": sd, "noise_dof": dof, "differ": None, "f": None, "p_value": None}
    if spread is None or sd is None or dof < 1:
        out["line"] = ("plans differ by more than noise: UNKNOWN (no repeat measured yet; the search re-measures "
                       "the uniform plan every --noise-every trials)")
        return out
    if sd == 0:
        out.update(differ=spread > 0, line=f"plans differ by more than noise: {'YES' if spread > 0 else 'NO'} "
                   f"(trial values sd {spread:.4g}; repeats showed no noise at all: a deterministic objective)")
        return out
    f = spread ** 2 / sd ** 2
    p = float(stats.f.sf(f, len(values) - 1, dof))
    differ = p < 0.05
    out.update(differ=bool(differ), f=float(f), p_value=p)
    out["line"] = (f"plans differ by more than noise: {'YES' if differ else 'NO'} (trial values sd {spread:.4g} vs "
                   f"noise sd {sd:.4g} from {dof} repeat(s); F = {f:.2f}, p = {p:.3g})")
    return out
