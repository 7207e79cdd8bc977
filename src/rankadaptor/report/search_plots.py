"""PNG plots of a rank search: history vs the uniform baseline, predicted vs measured, allocation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(rows: Sequence[dict[str, Any]], path: Path, maximize: bool = True,
                 uniform_scores: Sequence[float] = ()) -> Path:
    plt = _plt()
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    x = np.array([r["number"] for r in done])
    y = np.array([r["value"] for r in done], float)
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(y):
        best = np.maximum.accumulate(y) if maximize else np.minimum.accumulate(y)
        ax.scatter(x, y, s=12, alpha=0.6, label="trial")
        ax.step(x, best, where="post", color="C1", label="best so far")
        uni = [r for r in done if r.get("is_uniform")]
        for r in uni:
            ax.scatter([r["number"]], [r["value"]], marker="*", s=120, color="C3", zorder=3)
    if len(uniform_scores):
        m = float(np.mean(uniform_scores))
        ax.axhline(m, color="C3", ls="--", label=f"uniform baseline (mean of {len(uniform_scores)} seeds)")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.legend(fontsize=8)
    ax.set_title("search history")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_predicted_vs_measured(pred: Sequence[float] | None, measured: Sequence[float] | None, path: Path,
                               spearman: float | None = None) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if pred and measured:
        ax.scatter(measured, pred, s=14, alpha=0.7)
        lo, hi = min(min(pred), min(measured)), max(max(pred), max(measured))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1)
    ax.set_xlabel("measured (oriented: larger is better)")
    ax.set_ylabel("predicted out-of-fold")
    ax.set_title(f"performance model, CV Spearman {spearman:.2f}" if spearman is not None else
                 "performance model (too few trials)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_allocation(ranks: Sequence[int], path: Path, uniform: Sequence[int] | None = None) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    idx = np.arange(len(ranks))
    ax.bar(idx, ranks, color="C0", label="chosen plan")
    if uniform is not None:
        ax.step(idx, uniform, where="mid", color="C3", ls="--", label="uniform")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("LoRA rank")
    ax.legend(fontsize=8)
    ax.set_title("per-layer rank allocation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
