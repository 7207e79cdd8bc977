"""Where a study lives: a database URL -> an Optuna RDB storage with heartbeats and crash retries.

Any number of ``rankadaptor search`` workers, on one machine or many, share a study through one
database. SQLite (a file, one machine) is the default; PostgreSQL is the tested multi-machine
backend (``postgresql://user:password@host:5432/db``, driver psycopg2 from the ``distributed``
extra). A URL is checked before anything is opened, so that a typo, an unknown scheme, a missing
driver or an unreachable server is one clear error and creates nothing on disk.

Every worker records a heartbeat for its running trial every ``interval`` seconds. A trial whose
heartbeat is older than ``grace_period`` (its worker was killed, the machine died) is marked FAIL
by the next worker that looks, and ``RetryCrashedTrial`` queues its plan again (at most
``max_retry`` times) with ``retry_of`` naming the original trial: a plan whose first attempt never
completed is evaluated again, a completed plan never is.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from rankadaptor.errors import RankAdaptorError

log = logging.getLogger(__name__)

# backend -> (default driver, how to install it); other backends SQLAlchemy knows are refused
BACKENDS = {
    "sqlite": ("pysqlite", "it is part of Python"),
    "postgresql": ("psycopg2", "pip install 'rankadaptor[distributed]' (psycopg2-binary)"),
    "mysql": ("pymysql", "pip install PyMySQL"),
}
# user attrs that belong to one attempt, not to the plan: a retry starts without them
ATTEMPT_FLAGS = ("duplicate", "budget_full", "invalid")


@dataclass(frozen=True)
class HeartbeatConfig:
    """How fast a crashed worker's trial is noticed and how often its plan is retried."""

    interval: int = 30  # seconds between heartbeats of a running trial
    grace_period: int = 120  # a trial silent for longer is taken as crashed
    max_retry: int = 2  # re-queues of a crashed trial's plan before it stays failed

    def __post_init__(self) -> None:
        if self.interval < 1 or self.grace_period < 1 or self.max_retry < 0:
            raise RankAdaptorError(f"--heartbeat-interval {self.interval} and --grace-period {self.grace_period} "
                                   f"must be >= 1 second and --max-retry {self.max_retry} >= 0")
        if self.grace_period <= self.interval:
            raise RankAdaptorError(
                f"--grace-period {self.grace_period} must exceed --heartbeat-interval {self.interval} (use a few "
                f"intervals, e.g. {4 * self.interval}): otherwise a live trial between two heartbeats looks crashed")


# a study name is data (stored in the database), but it also names the default SQLite file: no
# path separators, no leading dot or dash, nothing a shell or a filesystem treats specially
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_study_name(name: str) -> str:
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name):
        raise RankAdaptorError(f"--study {name!r} is not a valid study name: use 1-128 letters, digits, '.', '_' or "
                               "'-', starting with a letter or digit (it also names the default <study>.db file in "
                               "the working directory)")
    return name


def default_storage_url(study: str) -> str:
    """``sqlite:///<study>.db`` in the working directory (the name is checked to be a plain file name)."""
    return f"sqlite:///{check_study_name(study)}.db"


def check_storage_url(url: str):
    """The parsed SQLAlchemy URL, or a RankAdaptorError naming what is wrong with ``url`` and the fix."""
    from sqlalchemy.engine import make_url

    shown = _hide_password(url)
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
    except Exception as exc:  # ArgumentError, ValueError (bad port), NoSuchModuleError (unknown scheme)
        raise RankAdaptorError(
            f"--storage {shown!r} is not a database URL ({exc}); use e.g. sqlite:///study.db or "
            "postgresql://user:password@host:5432/dbname") from None
    if backend not in BACKENDS:
        raise RankAdaptorError(f"--storage {shown!r}: unknown database scheme {backend!r}; use one of "
                               f"{sorted(BACKENDS)} (sqlite:///FILE, postgresql://user:password@host:port/db)")
    if "+" not in parsed.drivername:  # SQLAlchemy 2.1 would pick psycopg 3 for postgresql://; we ship psycopg2
        parsed = parsed.set(drivername=f"{backend}+{BACKENDS[backend][0]}")
    try:
        parsed.get_dialect().import_dbapi()
    except Exception as exc:  # NoSuchModuleError for an unknown driver, ImportError for a missing one
        raise RankAdaptorError(
            f"--storage {shown!r}: the database driver {parsed.get_driver_name()!r} is not available "
            f"({exc}); install it: {BACKENDS[backend][1]}") from None
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or ":memory:" in database or parsed.query.get("mode") == "memory":
            raise RankAdaptorError(f"--storage {shown!r} is an in-memory SQLite database: other workers cannot share "
                                   "it and nothing is kept to resume from; use a file, e.g. sqlite:///study.db")
        parent = Path(database).expanduser().resolve().parent
        if not parent.is_dir():
            raise RankAdaptorError(f"--storage {shown!r}: directory {parent} does not exist; create it first "
                                   "or point the URL at an existing directory")
        from rankadaptor.fileio import not_writable

        problem = not_writable(parent)
        if problem:
            raise RankAdaptorError(f"--storage {shown!r}: cannot write in {parent} ({problem}); point the URL at a "
                                   "writable directory")
    return parsed


def open_storage(url: str, heartbeat: HeartbeatConfig | None = None) -> optuna.storages.RDBStorage:
    """Connect (creating Optuna's tables if the database is new) with heartbeats and crash retries on."""
    heartbeat = heartbeat or HeartbeatConfig()
    parsed = check_storage_url(url)
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        # several processes write one file: wait for a lock instead of failing after pysqlite's 5 s
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        # pre-ping: trials outlast server idle timeouts; connect timeout: an unreachable host fails fast
        engine_kwargs["pool_pre_ping"] = True
        if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
            engine_kwargs["connect_args"] = {"connect_timeout": 15}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9; we test them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                parsed.render_as_string(hide_password=False), engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat.interval, grace_period=heartbeat.grace_period,
                heartbeat_stale_trial_callback=RetryCrashedTrial(heartbeat.max_retry))
    except Exception as exc:
        import sqlalchemy.exc

        # RuntimeError: Optuna's table schema check (its message says how to upgrade the database)
        if not isinstance(exc, (sqlalchemy.exc.SQLAlchemyError, ImportError, RuntimeError)):
            raise
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        fix = ("the file must be an SQLite database made by rankadaptor/Optuna, or a new file"
               if parsed.get_backend_name() == "sqlite" else
               "check that the server is running and reachable from here, the database exists and the "
               "user/password are right")
        raise RankAdaptorError(f"--storage {_hide_password(url)!r}: cannot open the database ({reason}); {fix}") \
            from None


def _hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url if "@" not in url else "<unparsable URL with credentials>"


class RetryCrashedTrial:
    """Heartbeat-stale callback: queue the crashed trial's plan again, recording which trial it retries.

    Like Optuna's ``RetryHeartbeatStaleTrialCallback``, plus a ``retry_of`` user attr (the first
    attempt's number, shown in the search summary) and without the per-attempt flags.
    """

    def __init__(self, max_retry: int):
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if "plan_hash" not in trial.user_attrs or any(trial.user_attrs.get(f) for f in ATTEMPT_FLAGS):
            return  # it crashed before claiming a plan, or while yielding one: nothing to retry
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        first = history[0]
        if len(history) > self.max_retry:
            log.warning("trial %d (a crash of plan %s) failed %d time(s); not retried again (--max-retry %d)",
                        trial.number, trial.user_attrs.get("plan_hash"), len(history), self.max_retry)
            return
        user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_FLAGS}
        user_attrs["retry_of"] = first
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs=user_attrs, system_attrs={"failed_trial": first, "retry_history": history}))
        log.warning("trial %d stopped sending heartbeats (its worker died); its plan is queued again "
                    "(retry %d of %d)", trial.number, len(history), self.max_retry)
