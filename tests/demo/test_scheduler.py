import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rankadaptor.errors import RankAdaptorError
from rankadaptor.demo.scheduler import Progress, Unit, chain_lengths, run_units


def _graph():
    # the demo's shape: prune before everything but dense; search before the found plan's recovery
    return [Unit("dense", 1), Unit("prune", 1), Unit("search", 5, ("prune",)), Unit("found", 2, ("search",)),
            Unit("a", 2, ("prune",)), Unit("b", 2, ("prune",))]


def test_longest_chain_first():
    lengths = chain_lengths(_graph())
    assert lengths == {"dense": 1, "prune": 8, "search": 7, "found": 2, "a": 2, "b": 2}


def test_bad_graphs_are_refused():
    with pytest.raises(RankAdaptorError, match="unknown unit"):
        chain_lengths([Unit("a", 1, ("x",))])
    with pytest.raises(RankAdaptorError, match="cycle"):
        chain_lengths([Unit("a", 1, ("b",)), Unit("b", 1, ("a",))])
    with pytest.raises(RankAdaptorError, match="positive"):
        Unit("a", 0)


def test_dependencies_order_and_parallelism():
    started, lock, log = {}, threading.Lock(), []
    active = {"now": 0, "max": 0}

    def execute(key):
        with lock:
            started[key] = len(log)
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        time.sleep(0.02)
        with lock:
            log.append(key)
            active["now"] -= 1
        return {"key": key}

    units = _graph()
    with ThreadPoolExecutor(2) as pool:
        results = run_units(units, execute, pool, workers=2, tick_s=0.01)
    assert set(results) == {u.key for u in units}
    finished_at = {k: i for i, k in enumerate(log)}
    for u in units:
        for d in u.deps:
            assert finished_at[d] < finished_at[u.key] and started[u.key] > finished_at[d]
    assert active["max"] == 2  # two workers were busy at once
    assert log.index("search") < log.index("a") or log.index("search") < log.index("b")  # long chain first


def test_finished_units_are_not_run_again():
    calls = []

    def execute(key):
        calls.append(key)
        return {"key": key}

    with ThreadPoolExecutor(1) as pool:
        results = run_units(_graph(), execute, pool, 1, finished={"dense": {"old": 1}, "prune": {"old": 1}},
                            tick_s=0.01)
    assert results["dense"] == {"old": 1} and sorted(calls) == ["a", "b", "found", "search"]


def test_failure_stops_new_work_and_is_raised():
    calls = []

    def execute(key):
        calls.append(key)
        if key == "prune":
            raise RuntimeError("boom")
        return {}

    with ThreadPoolExecutor(1) as pool, pytest.raises(RuntimeError, match="boom"):
        run_units(_graph(), execute, pool, 1, tick_s=0.01)
    assert "search" not in calls and "a" not in calls


def test_progress_credits_running_units_and_rescales_by_real_time():
    units = [Unit("a", 10), Unit("b", 10)]
    p = Progress(units, finished=[])
    assert p.credited() == 0
    p.start("a")
    p.running["a"] -= 5  # a has run 5 s of an expected 10
    assert p.credited() == pytest.approx(5, abs=0.1)
    p.finish("a", wall_s=20.0)  # a took twice its estimate: b's expectation doubles
    assert p.slowness == 2.0 and p.credited() == 10
    p.start("b")
    p.running["b"] -= 10
    assert p.credited() == pytest.approx(15, abs=0.1)
    p.running["b"] -= 100  # overdue: held below full credit until it really finishes
    assert p.credited() == pytest.approx(19.5)


def test_loading_units_do_not_rescale_the_estimate():
    """A unit dominated by downloads (calibrates=False) took 3x its estimate: the bar's speed estimate
    ignores it, and the next compute unit sets it."""
    from rankadaptor.demo.scheduler import Progress, Unit

    progress = Progress([Unit("dense", 10.0, calibrates=False), Unit("train", 10.0)], finished=())
    progress.finish("dense", 30.0)
    assert progress.slowness == 1.0
    progress.finish("train", 20.0)
    assert progress.slowness == 2.0
