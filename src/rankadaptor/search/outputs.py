"""Files a finished search leaves: the best plan (RankPlan JSON), a summary JSON and PNG plots."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna

from rankadaptor.fileio import atomic_directory, write_json_atomic
from rankadaptor.provenance import provenance
from rankadaptor.search.engine import SearchConfig, history
from rankadaptor.search.space import SearchSpace, to_rank_plan

log = logging.getLogger(__name__)


def write_plan(path: str | Path, ranks: list[int], model: dict | None = None, space: SearchSpace | None = None) -> Path:
    """The plan in RankPlan format (per-module ranks as overrides), so ``recover --ranks FILE`` takes it as is."""
    (space.to_rank_plan(ranks, model) if space is not None else to_rank_plan(ranks, model)).to_json(path)
    return Path(path)


def write_outputs(study: optuna.Study, space: SearchSpace, report: dict[str, Any], out: str | Path,
                  report_dir: str | Path | None, config: SearchConfig, identity: dict[str, Any]) -> dict[str, Path]:
    from rankadaptor.report.search_plots import plot_allocation, plot_history, plot_predicted_vs_measured

    out = Path(out)
    report_dir = Path(report_dir) if report_dir else out.with_name(out.stem + ".search")
    rows = history(study, space)
    cv_points = report.pop("_cv_points", {})
    maximize = report["direction"] == "maximize"
    with atomic_directory(report_dir) as tmp:
        summary = {"study": study.study_name, "identity": identity, "space": space.to_dict(),
                   "strategy": study.user_attrs.get("rankadaptor_strategy"), "config": asdict(config),
                   "result": report, "history": rows, "provenance": provenance(config.seed)}
        write_json_atomic(tmp / "summary.json", summary)
        plot_history(rows, tmp / "history.png", maximize, report["uniform"]["scores"])
        plot_predicted_vs_measured(cv_points.get("pred"), cv_points.get("measured"), tmp / "predicted_vs_measured.png",
                                   report["model_cv"]["spearman"])
        plot_allocation(report["best"]["ranks"], tmp / "allocation.png", report["uniform"]["ranks"])
    plan = write_plan(out, report["best"]["ranks"], identity, space)
    return {"plan": plan, "report": report_dir}
