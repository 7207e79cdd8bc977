"""A ``rankadaptor search`` worker process for the distributed tests, with an observable objective.

``python synthetic_worker.py LOG_DIR BARRIER HANG_AT DELAY -- <search arguments>`` runs the real
CLI (``--objective synthetic``) after wrapping the synthetic objective so that it:

* appends one JSON line per *completed* evaluation to ``LOG_DIR/evaluations-<pid>.jsonl``
  (seed, plan hash), so the test can count how often each plan was evaluated;
* on its first call writes ``LOG_DIR/ready-<pid>`` and waits until BARRIER workers have (so that
  all workers are inside trials at once, without relying on start-up timing);
* on its HANG_AT-th call (0 = never) writes ``LOG_DIR/hanging-<pid>.json`` and blocks forever,
  i.e. it is inside a trial when the test sends SIGKILL;
* sleeps DELAY seconds per evaluation so that the workers' trials overlap.
"""

import json
import os
import sys
import time
from pathlib import Path

from rankadaptor.cli import main
from rankadaptor.search import objective as objective_module
from rankadaptor.search.space import plan_hash


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name)
    tmp.write_text(text)
    os.replace(tmp, path)


def install(log_dir: Path, barrier: int, hang_at: int, delay: float) -> None:
    synthetic = objective_module.SyntheticObjective.__call__
    calls = 0
    pid = os.getpid()

    def observed(self, ranks, seed=0, fidelity="full"):
        nonlocal calls
        calls += 1
        entry = {"pid": pid, "seed": seed, "plan": plan_hash(ranks)}
        if calls == 1:
            _write_atomic(log_dir / f"ready-{pid}", "")
            deadline = time.monotonic() + 300
            while len(list(log_dir.glob("ready-*"))) < barrier:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(list(log_dir.glob('ready-*')))} of {barrier} workers started")
                time.sleep(0.05)
        if calls == hang_at:
            _write_atomic(log_dir / f"hanging-{pid}.json", json.dumps(entry))
            while True:  # the test kills this process here, in the middle of the trial
                time.sleep(1)
        time.sleep(delay)
        value = synthetic(self, ranks, seed=seed, fidelity=fidelity)
        with open(log_dir / f"evaluations-{pid}.jsonl", "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        return value

    objective_module.SyntheticObjective.__call__ = observed


if __name__ == "__main__":
    log_dir, barrier, hang_at, delay, sep, *search_args = sys.argv[1:]
    assert sep == "--", "usage: synthetic_worker.py LOG_DIR BARRIER HANG_AT DELAY -- <search arguments>"
    install(Path(log_dir), int(barrier), int(hang_at), float(delay))
    sys.exit(main(search_args))
