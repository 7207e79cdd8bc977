"""Run units of work that depend on each other on a pool of workers, with one progress estimate.

The demo is a small graph: pruning comes before every recovery, the search before the recovery
with the plan it finds, and everything else (seeds, methods) is independent. On a small CPU two
worker processes with one torch thread each finish such a graph sooner than one process with
two threads (per-document evaluation and 4×128-token steps are too small to use two cores well),
so units are handed to a pool, longest remaining chain first (list scheduling), as soon as what
they need is done.

Progress is measured in *expected cost* (seconds at one thread, from a rough cost model): a
finished unit counts in full, a running one by the share of its expected time it has run (at most
95 %), corrected by how far the finished units' real times were from their estimates. The bar's
remaining time is therefore an estimate for the whole run, refreshed every second.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from rankadaptor.errors import RankAdaptorError


@dataclass(frozen=True)
class Unit:
    key: str
    cost: float  # expected seconds at one thread; orders the queue and scales the progress bar
    deps: tuple[str, ...] = ()
    # False for units dominated by downloads and loading (their time says nothing about the machine's
    # compute speed), so the bar does not rescale the rest of the run by them
    calibrates: bool = True

    def __post_init__(self) -> None:
        if not self.cost > 0:
            raise RankAdaptorError(f"unit {self.key}: cost must be positive, got {self.cost!r}")


def chain_lengths(units: Iterable[Unit]) -> dict[str, float]:
    """Each unit's cost plus the costliest chain of units that wait for it (its scheduling priority)."""
    units = list(units)
    by_key = {u.key: u for u in units}
    if len(by_key) != len(units):
        raise RankAdaptorError("unit keys must be unique")
    waiting: dict[str, list[str]] = {u.key: [] for u in units}
    for u in units:
        for d in u.deps:
            if d not in by_key:
                raise RankAdaptorError(f"unit {u.key} depends on unknown unit {d}")
            waiting[d].append(u.key)
    memo: dict[str, float] = {}

    def length(key: str, seen: tuple[str, ...]) -> float:
        if key in seen:
            raise RankAdaptorError(f"units depend on each other in a cycle: {' -> '.join(seen + (key,))}")
        if key not in memo:
            memo[key] = by_key[key].cost + max((length(k, seen + (key,)) for k in waiting[key]), default=0.0)
        return memo[key]

    return {u.key: length(u.key, ()) for u in units}


class Progress:
    """Credit for finished and running units; ``bar`` is anything with ``n``, ``refresh`` and
    ``set_description_str`` (a tqdm bar; the description lists the running units), or None."""

    def __init__(self, units: list[Unit], finished: Iterable[str], bar=None):
        self.cost = {u.key: u.cost for u in units}
        self.calibrates = {u.key for u in units if u.calibrates}
        self.done = set(finished)
        self.bar = bar
        self.running: dict[str, float] = {}
        self.spent = 0.0  # real seconds of the units finished in this session
        self.expected = 0.0  # their expected cost

    @property
    def slowness(self) -> float:
        """Real seconds per expected second, from this session's finished units (1 before any)."""
        return self.spent / self.expected if self.expected > 0 else 1.0

    def start(self, key: str) -> None:
        self.running[key] = time.monotonic()

    def finish(self, key: str, wall_s: float | None) -> None:
        started = self.running.pop(key, None)
        if wall_s is None and started is not None:
            wall_s = time.monotonic() - started
        if wall_s is not None and key in self.calibrates:
            self.spent += wall_s
            self.expected += self.cost[key]
        self.done.add(key)

    def credited(self) -> float:
        now = time.monotonic()
        partial = sum(min(0.95, (now - t0) / (self.cost[k] * self.slowness)) * self.cost[k]
                      for k, t0 in self.running.items())
        return sum(self.cost[k] for k in self.done) + partial

    def show(self) -> None:
        if self.bar is None:
            return
        self.bar.n = self.credited()
        self.bar.set_description_str(", ".join(sorted(self.running)) or "-", refresh=False)
        self.bar.refresh()


def run_units(units: list[Unit], execute: Callable[[str], dict], pool: Executor, workers: int,
              finished: Mapping[str, dict] | None = None, progress: Progress | None = None,
              on_done: Callable[[Unit, dict], None] | None = None, tick_s: float = 1.0) -> dict[str, dict]:
    """Run every unit not in ``finished`` through ``pool.submit(execute, key)``; return all results.

    At most ``workers`` units run at once; a unit starts when all its ``deps`` have results. A
    failing unit stops the run: nothing new is started, the running units are waited for (their
    results are kept by ``execute`` itself) and the first error is raised.
    """
    if workers < 1:
        raise RankAdaptorError(f"workers must be >= 1, got {workers}")
    priority = chain_lengths(units)
    results: dict[str, dict] = dict(finished or {})
    pending = {u.key: u for u in units if u.key not in results}
    running: dict[Future, Unit] = {}
    error: BaseException | None = None
    while pending or running:
        if error is None:
            ready = sorted((u for u in pending.values() if all(d in results for d in u.deps)),
                           key=lambda u: -priority[u.key])
            for u in ready[:workers - len(running)]:
                del pending[u.key]
                running[pool.submit(execute, u.key)] = u
                if progress:
                    progress.start(u.key)
        if not running:
            break  # after an error, or nothing can start (cannot happen for a checked graph)
        done, _ = wait(list(running), timeout=tick_s, return_when=FIRST_COMPLETED)
        for fut in done:
            unit = running.pop(fut)
            try:
                results[unit.key] = fut.result()
            except BaseException as exc:  # noqa: BLE001 - re-raised once the running units end
                error = error or exc
                continue
            if progress:
                progress.finish(unit.key, results[unit.key].get("wall_s"))
            if on_done:
                on_done(unit, results[unit.key])
        if progress:
            progress.show()
    if error is not None:
        raise error
    return results
