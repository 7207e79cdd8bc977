"""The pictures of a budget comparison: where each method put its ranks, how it trained, what it bought.

Every function takes plain data (lists and dicts as the results files store them) and writes one
PNG, so the demo and the benchmarks draw from their JSON alone:

* ``rank_heatmaps``: a layers × modules grid per allocation, side by side, one colour scale;
* ``loss_curves``: held-out (validation) loss during recovery, one line per method, mean over seeds;
* ``params_vs_perplexity``: final LoRA parameters against held-out perplexity with 95 % intervals;
* ``search_history``: cheap super-adapter evaluations and real trials on one axis of compute.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from rankadaptor.report.search_plots import _plt

MODULE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_LAYER = re.compile(r"layers\.(\d+)\.")


def rank_grid(module_ranks: Mapping[str, int], n_layers: int,
              modules: Sequence[str] = MODULE_ORDER) -> np.ndarray:
    """{full module name: rank} -> an (n_layers, len(modules)) array; modules without LoRA are 0."""
    grid = np.zeros((n_layers, len(modules)))
    for name, r in module_ranks.items():
        m = _LAYER.search(name)
        leaf = name.rsplit(".", 1)[-1]
        if m and leaf in modules and int(m.group(1)) < n_layers:
            grid[int(m.group(1)), modules.index(leaf)] = r
    return grid


def rank_heatmaps(allocations: Mapping[str, Mapping[str, int]], n_layers: int | None, path: Path,
                  title: str = "LoRA rank per layer and module") -> Path:
    """One panel per method (its {module: rank}), all on the colour scale of the largest rank;
    ``n_layers`` None: one past the highest layer any module name carries."""
    plt = _plt()
    names = list(allocations)
    if n_layers is None:
        n_layers = 1 + max((int(m.group(1)) for ranks in allocations.values() for name in ranks
                            if (m := _LAYER.search(name))), default=0)
    grids = [rank_grid(allocations[n], n_layers) for n in names]
    vmax = max([g.max() for g in grids] + [1.0])
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(1.6 * max(1, len(names)) + 1.2, 0.16 * n_layers + 1.6),
                             squeeze=False, sharey=True)
    image = None
    for ax, name, grid in zip(axes[0], names, grids):
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(name, fontsize=7)
        ax.set_xticks(range(len(MODULE_ORDER)), [m.split("_")[0] for m in MODULE_ORDER], fontsize=6, rotation=90)
    axes[0][0].set_ylabel("decoder layer")
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="rank")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def loss_curves(curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]], path: Path,
                ylabel: str = "validation loss (recovery corpus)") -> Path:
    """``curves[method]`` is one [(step, loss), ...] list per seed; the line is their mean."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (method, runs) in enumerate(curves.items()):
        steps = sorted({s for run in runs for s, _ in run})
        if not steps:
            continue
        by_step = {s: [v for run in runs for t, v in run if t == s] for s in steps}
        ax.plot(steps, [float(np.mean(by_step[s])) for s in steps], marker="o", ms=3, label=method, color=f"C{i % 10}")
    ax.set_xlabel("recovery step")
    ax.set_ylabel(ylabel)
    return _finish(fig, ax, path, f"{ylabel.split(' (')[0]} during recovery (mean over seeds)")


def params_vs_perplexity(points: Mapping[str, Mapping[str, float]], path: Path, budget: float | None = None) -> Path:
    """``points[method] = {"params", "ppl", "ppl_low", "ppl_high"}`` (interval optional)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (method, p) in enumerate(points.items()):
        lo, hi = p.get("ppl_low"), p.get("ppl_high")
        yerr = None if lo is None or hi is None else [[p["ppl"] - lo], [hi - p["ppl"]]]
        ax.errorbar([p["params"]], [p["ppl"]], yerr=yerr, fmt="o", capsize=3, label=method, color=f"C{i % 10}")
    if budget:
        ax.axvline(budget, color="grey", ls="--", lw=1, label="budget")
    ax.set_xlabel("final LoRA parameters")
    ax.set_ylabel("held-out perplexity")
    return _finish(fig, ax, path, "what each method bought with its parameters (95 % intervals)")


def search_history(series: Mapping[str, Sequence[tuple[float, float]]], path: Path, maximize: bool = False,
                   ylabel: str = "objective") -> Path:
    """``series[name] = [(compute seconds when measured, value), ...]``, all on one compute axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (name, pts) in enumerate(series.items()):
        if not pts:
            continue
        x = np.array([p[0] for p in pts], float)
        y = np.array([p[1] for p in pts], float)
        order = np.argsort(x)
        x, y = x[order], y[order]
        best = np.maximum.accumulate(y) if maximize else np.minimum.accumulate(y)
        ax.scatter(x, y, s=8, alpha=0.5, color=f"C{i % 10}", label=f"{name} ({len(y)})")
        ax.step(x, best, where="post", color=f"C{i % 10}")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("compute spent by the search (seconds, one thread)")
    ax.set_ylabel(ylabel)
    return _finish(fig, ax, path, "search history (points: evaluations, line: best so far)")


def _finish(fig, ax, path: Path, title: str) -> Path:
    """Legend, title, tight layout, written at one resolution, figure closed."""
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return Path(path)
