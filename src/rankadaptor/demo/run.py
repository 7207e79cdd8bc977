"""The main job, end to end on the offline default model (issue "make demo").

dense evaluation -> prune 20 % (llm-pruner, element1) -> evaluation without recovery
-> uniform r=8, LoRA* and EVA recovery -> RankAdaptor search (held-out loss, short trials)
-> recovery with the found plan -> PARA (a high-rank adapter compressed to uniform r=8's budget)
-> the super-adapter (nested ranks, cut to the budget by RankAdaptor's cheap-fidelity search)
-> PrunedLoRA (high rank pruned to the same budget) -> AdaLoRA at that budget
-> a report headed by the held-out perplexity table with paired intervals against uniform r=8,
   the accuracy table, pictures and generations (``rankadaptor.report.demo_report``).

Every unit of work writes its result under ``RUN/units/`` atomically, so an interrupted run picks
up where it stopped; a unit whose settings changed is refused rather than silently mixed. Units
run on worker processes (``rankadaptor.scheduler``): independent seeds and methods side by side,
each worker keeping the pruned model and the tokenised recovery corpus in memory. Everything the
libraries log goes to ``RUN/demo.log``; the console shows one progress bar and a line per unit.

This module holds the presets, the run folder, the unit graph with its cost model, and ``run_demo``;
what each unit computes (pruning, each recovery method, the search, evaluation) is in
``rankadaptor.demo.units``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from rankadaptor.errors import RankAdaptorError
from rankadaptor.fileio import claim, read_json, sweep_stale, write_json_atomic
from rankadaptor.demo.presets import (EVAL_TOKENS_PER_DOC, FULL_SPLIT_DOCS, LOAD_SECONDS, SECONDS_PER_CUT_SCORE,
                                      SECONDS_PER_TOKEN, VAL_EXAMPLES, Preset, preset)
from rankadaptor.demo.scheduler import Progress, Unit, run_units
from rankadaptor.demo.units import UnitWork
from rankadaptor.demo.workers import LOG_NAME, default_workers, execute_in_worker, init_worker, log_to_file

log = logging.getLogger(__name__)


class RunDir:
    """Results of finished units, keyed by name, each with the settings it was made with."""

    def __init__(self, root: Path, settings: dict):
        self.root = Path(root)
        self.units = self.root / "units"  # created by the first unit's write, so bad input leaves no directory
        self.settings = json.loads(json.dumps(settings))  # as it reads back from disk (tuples -> lists)

    def done(self, key: str) -> dict | None:
        """The result of a finished unit (made with these settings), or None if it has not run."""
        path = self.units / f"{key}.json"
        if not path.exists():
            return None
        done = read_json(path, f"demo unit {key}")
        if done.get("settings") != self.settings:
            raise RankAdaptorError(
                f"{self.root} holds a run made with other settings (unit {key}); "
                "use a new --out or the same --preset to resume it")
        return done["result"]

    def check_resumable(self) -> None:
        """Refuse, before anything is written, a folder that is not a demo run or holds one made with other
        settings."""
        if self.root.is_dir() and any(self.root.iterdir()) and not (self.units.is_dir()
                                                                    or (self.root / LOG_NAME).is_file()):
            raise RankAdaptorError(f"--out {self.root} is not a demo run folder (it has neither units/ nor {LOG_NAME}); "
                                   "choose a new --out, or an earlier demo run's folder to resume it")
        for path in sorted(self.units.glob("*.json")) if self.units.is_dir() else []:
            self.done(path.stem)

    def unit(self, key: str, fn: Callable[[], dict]) -> dict:
        path = self.units / f"{key}.json"
        finished = self.done(key)
        if finished is not None:
            log.info("resume: %s already done", key)
            return finished
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        # CPU seconds too: on a shared machine they show the unit's own work when wall time does not
        result.update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)
        write_json_atomic(path, {"settings": self.settings, "result": result})
        return result


class Demo(UnitWork):
    """The demo as a graph of units over ``UnitWork``'s stages, run (or resumed) in ``out``."""

    def __init__(self, cfg: Preset, out: Path, model_spec: str = "smollm2-135m"):
        super().__init__(cfg, out, model_spec)
        self.run = RunDir(self.out, {"preset": asdict(cfg), "model": model_spec})

    # ---- the whole pipeline -------------------------------------------------------------------
    def plan(self) -> list[Unit]:
        """Every unit with its expected cost (seconds at one thread) and what it waits for."""
        c = self.cfg
        docs = (c.eval_limit or FULL_SPLIT_DOCS) * 7
        ev = SECONDS_PER_TOKEN * (docs * EVAL_TOKENS_PER_DOC + c.ppl_tokens) + 5
        val = VAL_EXAMPLES * c.seq_len
        train = SECONDS_PER_TOKEN * (3 * c.steps * c.batch_size * c.seq_len + val) + 10
        trial = SECONDS_PER_TOKEN * (3 * c.search_steps * c.batch_size * c.seq_len + val) + 10
        # dense and prune also fetch and load the model: their time is not the machine's compute speed
        units = [Unit("dense", ev + LOAD_SECONDS, calibrates=False), Unit("prune", 2 * LOAD_SECONDS, calibrates=False),
                 Unit("pruned-no-recovery", ev, ("prune",)), Unit("search", c.search_trials * trial, ("prune",))]
        # multipliers of a LoRA recovery measured on the quick preset (benchmarks/results/demo_quick.json):
        # EVA's SVD of the activations costs ~2.5 recoveries; the wide runs ~1.2 (r=32, pruning events)
        for s in c.seeds:
            units += [Unit(f"uniform-s{s}", train + ev, ("prune",)), Unit(f"lora-star-s{s}", train + ev, ("prune",)),
                      Unit(f"eva-s{s}", 3.5 * train + ev, ("prune",)),
                      Unit(f"rankadaptor-s{s}", train + ev, ("search",)), Unit(f"para-s{s}", 1.2 * train + ev, ("prune",)),
                      Unit(f"super-s{s}", 1.3 * train + c.super_trials * SECONDS_PER_CUT_SCORE + ev, ("prune",))]
        units += [Unit(f"{name}-s{s}", 1.2 * train + ev, ("prune",)) for name in ("prunedlora", "adalora") for s in c.seeds]
        return units

    def work(self, key: str) -> Callable[[], dict]:
        """The function that computes unit ``key``."""
        from rankadaptor.lora.ranks import RankPlan

        fixed = {"dense": self.dense, "prune": self.prune, "pruned-no-recovery": self.no_recovery,
                 "search": self.search}
        if key in fixed:
            return fixed[key]
        method, _, s = key.rpartition("-s")
        seed = int(s)
        if method == "rankadaptor":
            return lambda: self.train_and_eval(key, "plan", seed, plan=RankPlan(ranks=self._search_result()["ranks"]))
        if method == "super":
            return lambda: self.super_search(key, seed)
        if method == "lora-star":  # the paper's 4/6/10/12 shape, scaled to the budget (as is, it is 1.5 % under)
            return lambda: self.train_and_eval(key, "static-lora-star", seed)
        if method in ("uniform", "eva", "para", "prunedlora", "adalora"):
            return lambda: self.train_and_eval(key, method, seed)
        raise RankAdaptorError(f"unknown demo unit {key!r}")

    def _search_result(self) -> dict:
        found = self.run.done("search")
        if found is None:
            raise RankAdaptorError(f"the search has not finished in {self.out}; it runs before the found plan")
        return found

    def execute(self, key: str) -> dict:
        return self.run.unit(key, self.work(key))

    def run_all(self, progress: bool = True, workers: int = 1, threads: int = 1, device: str = "cpu",
                dtype: str = "float32") -> dict:
        """Run (or resume) every unit on ``workers`` processes of ``threads`` torch threads each."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial

        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        units = self.plan()
        finished = {u.key: r for u in units if (r := self.run.done(u.key)) is not None}
        if finished:
            log.info("resuming %s: %d of %d units already done", self.out, len(finished), len(units))
        total, initial = sum(u.cost for u in units), sum(u.cost for u in units if u.key in finished)
        bar = tqdm(total=total, initial=initial,
                   disable=not progress, smoothing=0, dynamic_ncols=True,
                   bar_format="demo {percentage:3.0f}%|{bar}| {elapsed} elapsed, ~{remaining} left; running: {desc}")
        count = {"done": len(finished)}
        progress_state = Progress(units, finished, bar)

        def on_done(unit: Unit, result: dict) -> None:
            count["done"] += 1
            # the bar's own estimate, logged so that its accuracy can be checked against the real end
            left_at_start = total - initial
            share = (progress_state.credited() - initial) / left_at_start if left_at_start > 0 else 1.0
            elapsed = time.perf_counter() - t0
            eta = elapsed * (1 - share) / share if share > 0 else float("nan")
            log.info("[%d/%d] %s done in %s%s (elapsed %.0f s, estimated %.0f s left)", count["done"], len(units),
                     unit.key, _duration(result.get("wall_s")), _headline(result), elapsed, eta)

        # the workers build their own Demo from this factory (a picklable partial), once per process
        execute = partial(execute_in_worker, partial(Demo, self.cfg, self.out, self.model_spec), device, dtype)
        context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=init_worker,
                                 initargs=(threads, str(self.out / LOG_NAME))) as pool, logging_redirect_tqdm():
            done = run_units(units, execute, pool, workers, finished, progress_state, on_done)
        bar.n = bar.total  # exactly, not a float sum that may fall short of it
        bar.set_description_str("done")
        bar.close()
        session = {"workers": workers, "threads": threads, "wall_s": time.perf_counter() - t0,
                   "resumed_units": sorted(finished)}
        return self.report({u.key: done[u.key] for u in units}, session)

    def report(self, done: dict[str, dict], session: dict | None = None) -> dict:
        from rankadaptor.provenance import provenance
        from rankadaptor.report.demo_report import write_report

        return write_report(self.out, self.cfg, done, provenance(None), session, model=self.model_spec)



def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _headline(result: dict) -> str:
    """The unit's main numbers for its progress line."""
    from rankadaptor.report.tables import run_scores

    if result.get("refused"):
        return f": NOT REPORTED ({result['refused']})"
    if "results" in result:
        scores = run_scores(result["results"])
        return f": avg acc {scores['avg'] * 100:.1f} %, ppl {scores['ppl']:.1f}" if "ppl" in scores else ""
    if result.get("ranks"):
        ranks = result["ranks"]
        if len(set(ranks)) == 1:
            return f": best plan is uniform r={ranks[0]}"
        return f": best plan has ranks {min(ranks)}..{max(ranks)} over {len(ranks)} layers"
    if result.get("params_after"):
        return f": {result['params_before'] / 1e6:.1f}M -> {result['params_after'] / 1e6:.1f}M parameters"
    return ""


def run_demo(preset_name: str = "quick", out: str | Path | None = None, model: str = "smollm2-135m",
             progress: bool = True, workers: int | None = None, threads: int | None = None,
             device: str | None = None) -> dict:
    """Run or resume the demo on ``device`` (None: the CLI's ``--device``, else auto) with ``workers``
    processes (default: 2 on a CPU, 1 on a GPU) of ``threads`` torch threads each (default: the CPU
    cores shared out among the workers)."""
    from rankadaptor.device import dtype_name, resolve_device, resolve_dtype
    from rankadaptor.models.loading import model_source

    cfg = preset(preset_name)
    if model_source(model) == "local":  # a bad --model fails here, before the run directory or its log exist
        from transformers import AutoConfig

        from rankadaptor.models.families import family_for_model_type

        family_for_model_type(AutoConfig.from_pretrained(str(model)).model_type)  # one the demo can prune
    out = Path(out or f"runs/demo-{cfg.name}")
    where = str(resolve_device(device))  # resolved here: the worker processes do not see a `with` block
    dtype = dtype_name(resolve_dtype(None, resolve_device(device), training=True))  # the CLI's --dtype, likewise
    workers = default_workers(where) if workers is None else workers
    if workers < 1:
        raise RankAdaptorError(f"workers must be >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise RankAdaptorError(f"threads must be >= 1, got {threads}")
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    demo = Demo(cfg, out, model)
    with claim(out):  # one demo per run folder at a time; what a killed one half-wrote is then stale
        demo.run.check_resumable()
        sweep_stale(out, recursive=True)
        log_to_file(out / LOG_NAME)
        log.info("demo %s preset -> %s on %s: %d worker(s) x %d thread(s); full log in %s", cfg.name, out, where,
                 workers, threads, out / LOG_NAME)
        return demo.run_all(progress=progress, workers=workers, threads=threads, device=where, dtype=dtype)
