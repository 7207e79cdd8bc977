"""Several ``rankadaptor search`` worker processes on one study (SQLite, PostgreSQL), and a worker
killed with SIGKILL in the middle of a trial. The objective is the synthetic one (no model), observed
by tests/search/synthetic_worker.py.

PostgreSQL runs where RANKADAPTOR_TEST_POSTGRES_URL names a database (.ci/run starts a throw-away
server on loopback and sets it); elsewhere those tests are skipped.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from rankadaptor.cli import main
from rankadaptor.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
SRC = Path(__file__).resolve().parents[2] / "src"
WORKER = Path(__file__).with_name("synthetic_worker.py")
PG_URL = os.environ.get("RANKADAPTOR_TEST_POSTGRES_URL")
needs_pg = pytest.mark.skipif(not PG_URL, reason="RANKADAPTOR_TEST_POSTGRES_URL is not set (.ci/run starts a "
                                                 "throw-away PostgreSQL and sets it)")
SEARCH = ["search", "toy", "--objective", "synthetic", "--synthetic-layers", "10", "--fixed-first", "1",
          "--fixed-last", "1", "--strategy", "random", "--no-finalize", "--noise-every", "0",
          "--heartbeat-interval", "1", "--grace-period", "3", "--poll-interval", "0.2"]


def _load(study: str, url: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=open_storage(url))  # postgresql:// -> psycopg2


def _storage(kind: str, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/study.db" if kind == "sqlite" else PG_URL


def _worker(log_dir: Path, *args: str, barrier=1, hang_at=0, delay=0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, str(WORKER), str(log_dir), str(barrier), str(hang_at), str(delay), "--",
           "--threads", "1", *SEARCH, *args]
    return subprocess.Popen(cmd, cwd=log_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(outs)
    return outs


def _evaluations(log_dir: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(log_dir.glob("evaluations-*.jsonl"))
            for line in f.read_text().splitlines()]


def _check_study(url: str, study_name: str, n_trials: int, log_dir: Path) -> list[optuna.trial.FrozenTrial]:
    """Exactly n_trials completed, each plan evaluated to completion once, the logs agree with the study."""
    done = _load(study_name, url).get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == n_trials
    hashes = [t.user_attrs["plan_hash"] for t in done]
    assert len(set(hashes)) == n_trials
    evaluated = Counter(e["plan"] for e in _evaluations(log_dir))
    assert evaluated == Counter(hashes)  # no plan evaluated twice, none evaluated outside a completed trial
    return done


def _run_workers(url: str, tmp_path: Path, n_workers: int, n_trials: int) -> None:
    study = f"w{uuid.uuid4().hex[:8]}"  # the PostgreSQL database is shared by every test of the run
    assert main([*SEARCH, "--study", study, "--storage", url, "--create-only"]) == 0
    procs = [_worker(tmp_path, "--study", study, "--storage", url, "--trials", str(n_trials),
                     barrier=n_workers, delay=0.1) for i in range(n_workers)]
    _finish(procs)
    done = _check_study(url, study, n_trials, tmp_path)
    # every worker was inside a trial at once (the barrier), so each completed at least one
    assert len({e["pid"] for e in _evaluations(tmp_path)}) == n_workers
    assert {e["seed"] for e in _evaluations(tmp_path)} == {0}  # every trial on the study's seed


@pytest.mark.slow
def test_three_workers_share_one_sqlite_study(tmp_path):
    _run_workers(_storage("sqlite", tmp_path), tmp_path, n_workers=3, n_trials=12)


@needs_pg
@pytest.mark.slow
def test_three_workers_share_one_postgresql_study(tmp_path):
    _run_workers(PG_URL, tmp_path, n_workers=3, n_trials=12)


def _wait_for(path_glob: str, folder: Path, proc: subprocess.Popen, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(folder.glob(path_glob))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}) before {path_glob}:\n"
                                 f"{proc.stdout.read().decode()}")
        time.sleep(0.05)
    raise AssertionError(f"{path_glob} did not appear in {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=needs_pg)])
def test_a_worker_killed_mid_trial_loses_nothing_and_another_finishes(tmp_path, kind):
    url, study, n_trials = _storage(kind, tmp_path), f"k{uuid.uuid4().hex[:8]}", 6
    first = _worker(tmp_path, "--study", study, "--storage", url, "--trials", str(n_trials), hang_at=3)
    marker = _wait_for("hanging-*.json", tmp_path, first)
    hung = json.loads(marker.read_text())
    first.send_signal(signal.SIGKILL)  # no clean-up of any kind: the trial stays RUNNING in the database
    first.wait(timeout=60)
    first.stdout.close()

    trials = _load(study, url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    assert trials[2].user_attrs["plan_hash"] == hung["plan"]

    out = _finish([_worker(tmp_path, "--study", study, "--storage", url, "--trials", str(n_trials))])[0]
    done = _check_study(url, study, n_trials, tmp_path)
    # the two trials finished before the kill are kept; the killed one failed and its plan was retried once
    trials = _load(study, url).get_trials()
    assert trials[2].state == TrialState.FAIL
    (retry,) = [t for t in done if t.user_attrs.get("retry_of") is not None]
    assert retry.user_attrs["retry_of"] == trials[2].number and retry.user_attrs["plan_hash"] == hung["plan"]
    assert {t.number for t in done} >= {0, 1}
    assert f"trial {retry.number} retried the plan of trial {trials[2].number}" in out
