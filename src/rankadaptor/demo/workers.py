"""The demo's worker processes and where their output goes.

Each worker is a fresh (spawned) interpreter with its own torch thread count. It draws no progress
bars and writes every library's log lines (lm-eval's task construction, transformers' loading
messages, Python warnings) to the run's ``demo.log``; only rankadaptor's warnings and errors reach
the console, where the main process shows the overall progress bar and a line per finished unit.
A worker keeps one ``Demo`` (and so its cached pruned model and tokenised corpus) for its life.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable

LOG_NAME = "demo.log"
_WORKER_DEMO: dict[str, Any] = {}  # this worker process's demo and the factory that made it


def log_to_file(log_file: str | Path) -> None:
    """Send every logger's INFO+ lines and Python warnings to ``log_file`` (appended)."""
    root = logging.getLogger()
    path = str(Path(log_file).resolve())
    if not any(getattr(h, "baseFilename", None) == path for h in root.handlers):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(f"%(asctime)s {os.getpid()} %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    logging.captureWarnings(True)
    try:  # transformers keeps its own stderr handler; route its records through ours instead
        import transformers.utils.logging as hf_logging

        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
    except ImportError:
        pass


def init_worker(threads: int, log_file: str) -> None:
    # before anything imports tqdm / datasets: the workers draw no progress bars of their own
    os.environ.update(TQDM_DISABLE="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                      HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    import torch

    torch.set_num_threads(threads)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.addFilter(console_filter)
    root.addHandler(console)
    log_to_file(log_file)


def console_filter(record: logging.LogRecord) -> bool:
    """What the demo's console shows: its own progress lines, rankadaptor's warnings, any error."""
    if record.name in ("rankadaptor.demo.run", "rankadaptor.demo.scheduler"):
        return True
    if record.name.startswith("rankadaptor"):
        return record.levelno >= logging.WARNING
    return record.levelno >= logging.ERROR


def execute_in_worker(make_demo: Callable[[], Any], device: str, dtype: str, key: str) -> dict:
    """Run unit ``key`` on this worker's demo, built once by ``make_demo`` (its caches live as long
    as the worker: the pruned model, the tokenised corpus)."""
    from rankadaptor.device import default_device, default_dtype

    if not _same_factory(_WORKER_DEMO.get("factory"), make_demo):
        _WORKER_DEMO.clear()
        _WORKER_DEMO.update(factory=make_demo, demo=make_demo())
    # every model the unit loads (dense, pruned, search trials) goes there, in that precision
    with default_device(device), default_dtype(dtype):
        return _WORKER_DEMO["demo"].execute(key)


def _same_factory(a, b) -> bool:
    """Equal factories build equal demos (a partial arrives as a new object with every unit)."""
    if isinstance(a, partial) and isinstance(b, partial):
        return a.func is b.func and a.args == b.args and a.keywords == b.keywords
    return a is not None and a == b


def default_workers(device: str = "cpu") -> int:
    """Two 1-thread workers on a CPU with two or more cores (one process per core beats two threads
    in one process for these small shapes); one worker on an accelerator."""
    if not device.startswith("cpu"):
        return 1
    return max(1, min(2, os.cpu_count() or 1))
