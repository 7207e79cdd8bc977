"""Database URLs, heartbeats and crash retries, in one process (the multi-process tests are in
test_search_distributed.py)."""

import socket
import sys
import warnings

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from rankadaptor.cli import main
from rankadaptor.errors import RankAdaptorError
from rankadaptor.search.engine import SearchConfig, open_study, retries, run_search
from rankadaptor.search.sampler import make_sampler
from rankadaptor.search.space import SearchSpace, plan_hash
from rankadaptor.search.storage import HeartbeatConfig, check_storage_url, open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
FAST = ["--objective", "synthetic", "--synthetic-layers", "8", "--fixed-first", "1", "--fixed-last", "1",
        "--strategy", "random"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _space():
    kw = dict(n_layers=8, fixed_first=1, fixed_last=1)
    return SearchSpace(**kw, budget=SearchSpace(**kw).uniform_budget(8), tolerance=0.1)


@pytest.mark.parametrize("url, words", [
    ("not a url", ["not a database URL", "sqlite:///"]),
    ("sqlite:/one-slash.db", ["not a database URL"]),
    ("postgresql://u@host:notaport/db", ["not a database URL"]),
    ("redis://localhost:6379", ["unknown database scheme 'redis'", "postgresql://"]),
    ("postgresql+nodriver://u@localhost/db", ["driver 'nodriver' is not available", "install"]),
    ("sqlite:///no/such/dir/s.db", ["does not exist", "create it"]),
])
def test_bad_storage_urls_are_one_clear_error_and_create_nothing(tmp_path, monkeypatch, capsys, url, words):
    monkeypatch.chdir(tmp_path)
    assert main(["search", "toy", *FAST, "--study", "s", "--storage", url, "--trials", "2", "--no-finalize"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and all(w in err for w in words), err
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_names_the_problem_and_hides_the_password(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    url = f"postgresql://rank:s3cret@127.0.0.1:{_closed_port()}/db"
    assert main(["search", "toy", *FAST, "--study", "s", "--storage", url, "--trials", "2", "--no-finalize"]) == 2
    err = capsys.readouterr().err
    assert "cannot open the database" in err and "server is running" in err
    assert "s3cret" not in err and "***" in err
    assert list(tmp_path.iterdir()) == []


def test_missing_driver_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # `import psycopg2` now fails as if not installed
    with pytest.raises(RankAdaptorError, match=r"driver 'psycopg2' is not available.*rankadaptor\[distributed\]"):
        check_storage_url("postgresql://u:p@localhost:5432/db")


def test_postgresql_urls_default_to_the_psycopg2_driver():
    pytest.importorskip("psycopg2")
    assert check_storage_url("postgresql://u:p@db.example:5432/s").drivername == "postgresql+psycopg2"


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path, capsys):
    notes = tmp_path / "notes.db"
    notes.write_text("my notes")
    assert main(["search", "toy", *FAST, "--study", "s", "--storage", f"sqlite:///{notes}", "--trials", "2",
                 "--no-finalize"]) == 2
    assert "cannot open the database" in capsys.readouterr().err
    assert notes.read_text() == "my notes" and len(list(tmp_path.iterdir())) == 1


def test_heartbeat_settings_are_validated(tmp_path, capsys):
    with pytest.raises(RankAdaptorError, match="must exceed"):
        HeartbeatConfig(interval=10, grace_period=10)
    with pytest.raises(RankAdaptorError, match=">= 1"):
        HeartbeatConfig(interval=0)
    url = f"sqlite:///{tmp_path}/h.db"
    assert main(["search", "toy", *FAST, "--study", "s", "--storage", url, "--trials", "2", "--no-finalize",
                 "--heartbeat-interval", "5", "--grace-period", "3"]) == 2
    assert "--grace-period 3 must exceed --heartbeat-interval 5" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_create_only_makes_the_study_once_and_never_overwrites_another(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/c.db"
    assert main(["search", "toy", *FAST, "--study", "c", "--storage", url, "--create-only"]) == 0
    assert "ready (0 completed trials so far)" in capsys.readouterr().out
    study = optuna.load_study(study_name="c", storage=url)
    assert study.user_attrs["rankadaptor_strategy"] == "random"
    assert [t.state for t in study.trials] == [TrialState.WAITING]  # the uniform plan, queued first
    assert main(["search", "toy", *FAST, "--study", "c", "--storage", url, "--create-only",
                 "--synthetic-layers", "9"]) == 2
    assert "different space" in capsys.readouterr().err
    assert main(["search", "toy", *FAST, "--study", "c", "--storage", url, "--no-finalize"]) == 2
    assert "--trials N is required" in capsys.readouterr().err


def _crash_a_trial(study: optuna.Study, storage, ranks, retry_history=()) -> int:
    """What a SIGKILLed worker leaves: a RUNNING trial holding a plan whose heartbeat went silent."""
    with warnings.catch_warnings():  # workers use optimize(); asking directly is how a test mimics one
        warnings.simplefilter("ignore", UserWarning)
        trial = study.ask()
    if retry_history:  # as if this trial were itself a retry of those
        storage.set_trial_system_attr(trial._trial_id, "retry_history", list(retry_history))
    trial.set_user_attr("ranks", [int(r) for r in ranks])
    trial.set_user_attr("plan_hash", plan_hash(ranks))
    storage.record_heartbeat(trial._trial_id)
    with storage.engine.begin() as conn:  # the last heartbeat long ago, instead of waiting for it to age
        conn.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = :t WHERE trial_id = :i"),
                     {"t": "2000-01-01 00:00:00", "i": trial._trial_id})
    return trial.number


def test_a_crashed_trial_is_detected_and_its_plan_retried_once(tmp_path):
    space = _space()
    storage = open_storage(f"sqlite:///{tmp_path}/k.db", HeartbeatConfig(interval=1, grace_period=2, max_retry=1))
    study = open_study("k", storage, space, {"o": "k"}, "random", "maximize", make_sampler("random", space, seed=0))
    evaluated = []

    def objective(ranks, seed=0, fidelity="full"):
        evaluated.append(plan_hash(ranks))
        return float(sum(ranks))

    run_search(study, space, objective, SearchConfig(n_trials=2, poll_interval=0.1))
    lost = space.sample(1, 7)[0]
    crashed = _crash_a_trial(study, storage, lost)
    run_search(study, space, objective, SearchConfig(n_trials=4, poll_interval=0.1))

    trials = study.get_trials(deepcopy=False)
    assert trials[crashed].state == TrialState.FAIL
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 4
    assert retries(study) == {t.number: crashed for t in done if t.user_attrs.get("retry_of") is not None}
    (retry,) = [t for t in done if t.user_attrs.get("retry_of") == crashed]
    assert retry.user_attrs["ranks"] == [int(r) for r in lost]
    hashes = [t.user_attrs["plan_hash"] for t in done]
    assert len(set(hashes)) == 4 and sorted(evaluated) == sorted(hashes)  # each plan evaluated exactly once

    # a retry that crashes again exceeds --max-retry 1: it stays failed and a new plan takes its place
    again = _crash_a_trial(study, storage, space.sample(1, 8)[0], retry_history=[crashed])
    run_search(study, space, objective, SearchConfig(n_trials=5, poll_interval=0.1))
    assert study.get_trials(deepcopy=False)[again].state == TrialState.FAIL
    assert len(retries(study)) == 1 and len(study.get_trials(states=(TrialState.COMPLETE,))) == 5


def test_a_worker_waits_while_others_hold_the_budget_and_takes_over_a_crash(tmp_path):
    """The last place of the budget is held by a (crashed) running trial: the worker waits, then retries it."""
    space = _space()
    storage = open_storage(f"sqlite:///{tmp_path}/w.db", HeartbeatConfig(interval=1, grace_period=2))
    study = open_study("w", storage, space, {"o": "w"}, "random", "maximize", make_sampler("random", space, seed=1))
    run_search(study, space, lambda r, seed=0, fidelity="full": 1.0, SearchConfig(n_trials=2, poll_interval=0.1))
    crashed = _crash_a_trial(study, storage, space.sample(1, 3)[0])
    before = len(study.trials)
    run_search(study, space, lambda r, seed=0, fidelity="full": 2.0, SearchConfig(n_trials=3, poll_interval=0.1))
    # no trial was wasted racing for the held place: the only new trial is the retry
    assert len(study.trials) == before + 1
    assert study.trials[-1].user_attrs["retry_of"] == crashed and study.trials[-1].value == 2.0
