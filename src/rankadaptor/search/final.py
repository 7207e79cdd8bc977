"""The end of a search (RankAdaptor §3.3, Convergence): pick, re-evaluate against uniform, say what it means.

The finalists (the best measured plans and, for RankAdaptor's own strategy, the surrogate's optimum) and the
uniform plan are re-evaluated at fidelity ``"final"`` on fresh
seeds the search never used, each seed shared by all of them (paired). The report states the
paired difference of the pick to uniform with its 95 % interval and verdict, how well the
surrogate predicted held-out trials (out-of-fold Spearman), and in one line whether the plans the
search measured differed by more than its measured noise.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import optuna
from scipy import stats as st

from rankadaptor.errors import RankAdaptorError
from rankadaptor.search import noise
from rankadaptor.search.sampler import completed_data, maximise
from rankadaptor.search.space import SearchSpace, plan_hash
from rankadaptor.search.surrogates import DEFAULT_SURROGATE, make_surrogate, oof_predictions
from rankadaptor.stats import mean_ci, paired_difference, verdict_of

log = logging.getLogger(__name__)

FINAL_SEED_BASE = 10_000  # final re-evaluation seeds: 10000, 10001, ... (screening uses the study's seed)


def oof_spearman(space: SearchSpace, study: optuna.Study, surrogate: str = DEFAULT_SURROGATE, folds: int = 5,
                 noise_sd: float | None = None, noise_dof: int | None = None, **options) -> dict[str, Any]:
    """Out-of-fold Spearman of the surrogate on all completed trials, with its p-value."""
    X, y, _ = completed_data(space, study)
    if len(y) < max(folds, 6) or np.std(y) == 0:
        return {"spearman": None, "p_value": None, "n": int(len(y)), "better_than_chance": False,
                "surrogate": surrogate}
    pred = oof_predictions(surrogate, space, X, y, folds=folds, noise_sd=noise_sd, noise_dof=noise_dof, **options)
    res = st.spearmanr(pred, y) if np.std(pred) > 0 else None
    rho = 0.0 if res is None or np.isnan(res.statistic) else float(res.statistic)
    p = 1.0 if res is None else float(res.pvalue)
    return {"spearman": rho, "p_value": p, "n": int(len(y)), "better_than_chance": bool(rho > 0 and p < 0.05),
            "surrogate": surrogate, "pred_oof": pred.tolist(), "measured": y.tolist()}


def finalize(study: optuna.Study, space: SearchSpace, objective, config, surrogate_options: dict | None = None,
             **_ignored) -> dict[str, Any]:
    """Re-evaluate finalists and the uniform plan on fresh seeds at fidelity "final"; say what it means."""
    X, y, trials = completed_data(space, study)
    if len(y) == 0:
        raise RankAdaptorError("the study has no completed trials to finalise; run more --trials")
    options = dict(surrogate_options or {})
    sign = 1.0 if study.direction.name == "MAXIMIZE" else -1.0
    order = np.argsort(-y)
    finalists = [("measured", X[i]) for i in order[:config.finalists]]
    measured_noise = noise.estimate(study)
    cv = oof_spearman(space, study, config.surrogate, noise_sd=measured_noise["noise_sd"],
                      noise_dof=measured_noise["noise_dof"], **options)
    if config.model_finalist and len(y) >= 3:  # the surrogate's optimum joins the finalists; fresh seeds decide
        # the measured noise counts for as many degrees of freedom as it has (1-3 repeats can be 10x off)
        model = make_surrogate(config.surrogate, space, config.seed, **options)
        model.fit(X, y, measured_noise["noise_sd"], measured_noise["noise_dof"])
        cands, _, mean, _ = maximise(space, model, X, y, np.random.default_rng(config.seed), kappa=0.0)
        finalists.append(("model", cands[int(np.argmax(mean))]))
    uniform = space.uniform()
    uniq: dict[str, tuple[str, np.ndarray]] = {}
    for source, ranks in finalists:
        if not np.array_equal(ranks, uniform):  # uniform is re-evaluated anyway, as the baseline
            uniq.setdefault(plan_hash(ranks), (source, ranks))
    seeds = [FINAL_SEED_BASE + s for s in range(config.final_seeds)]
    base_scores = [float(objective(uniform, seed=s, fidelity="final")) for s in seeds]
    base = {"ranks": uniform.tolist(), "plan_hash": plan_hash(uniform), "source": "uniform", "scores": base_scores,
            "mean": float(np.mean(base_scores)) if seeds else None}
    evaluated = []
    for h, (source, ranks) in uniq.items():
        scores = [float(objective(ranks, seed=s, fidelity="final")) for s in seeds]
        evaluated.append({"ranks": [int(r) for r in ranks], "plan_hash": h, "source": source, "scores": scores,
                          "mean": float(np.mean(scores)) if scores else None})
    best = (max(evaluated, key=lambda e: sign * e["mean"]) if seeds else evaluated[0]) if evaluated else base
    spread = noise.verdict(y, measured_noise)
    report: dict[str, Any] = {
        "best": best, "finalists": evaluated,
        "uniform": {"ranks": uniform.tolist(), "scores": base_scores},
        "direction": study.direction.name.lower(), "seeds": seeds, "fidelity": "final",
        "noise": {**measured_noise, **spread},
        "model_cv": {k: v for k, v in cv.items() if k not in ("pred_oof", "measured")},
        "search_best_value": float(sign * y[order[0]]), "search_best_trial": trials[order[0]].number,
        "objective_calls": {"trials": int(len(y)), "noise_repeats": int(measured_noise["n_repeats"]),
                            "final": len(seeds) * (1 + len(evaluated))},
    }
    messages = [spread["line"]]
    if not evaluated:
        messages.append("no trial beat the uniform plan: the pick is the uniform plan")
    elif len(seeds) >= 2:
        diff = paired_difference([sign * s for s in best["scores"]], [sign * s for s in base_scores])
        verdict = verdict_of(diff)
        report["difference_vs_uniform"] = {**diff, "verdict": verdict, "significant": verdict == "significant",
                                           "note": "best finalist minus uniform, oriented so that > 0 is better"}
        ci = f"95% CI {diff['ci_low']:+.4f} .. {diff['ci_high']:+.4f}, {len(seeds)} fresh seeds"
        if verdict == "significant":
            word = "better" if diff["mean"] > 0 else "WORSE"
            messages.append(f"the best finalist is {word} than uniform by {diff['mean']:+.4f} ({ci})")
        else:
            messages.append(f"{verdict.upper()}: the best finalist vs uniform differs by {diff['mean']:+.4f} ({ci})")
        report["uniform_ci"] = mean_ci(base_scores).to_dict()
        report["best_ci"] = mean_ci(best["scores"]).to_dict()
        if diff["mean"] < 0:  # never hand out a plan that did worse than uniform on the fresh seeds
            report["best"] = base
            messages.append("no finalist beat uniform on the fresh seeds: the pick is the uniform plan")
    else:
        messages.append("fewer than 2 re-evaluation seeds: no interval, the difference to uniform is unknown")
    if len(seeds) > 0 and len(uniq) > 1:
        messages.append(f"the best of {len(uniq)} finalists was picked on the same seeds: the difference "
                        "is optimistic (winner's curse)")
    if not cv["better_than_chance"]:
        messages.append(f"the {cv['surrogate']} surrogate predicts held-out trials NO better than chance "
                        f"(CV Spearman {cv['spearman']}, p={cv['p_value']}, n={cv['n']}); its predictions are no "
                        "guide, only the fresh-seed re-evaluation is")
    report["messages"] = messages
    report["_cv_points"] = {"pred": cv.get("pred_oof"), "measured": cv.get("measured")}
    return report
