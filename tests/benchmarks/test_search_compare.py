"""The strategy comparison gives every strategy the same number of trials."""

from dataclasses import replace

import optuna

from tests.benchmarks import load_benchmark


def test_every_strategy_spends_the_whole_trial_budget(monkeypatch):
    compare = load_benchmark("search_compare")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # additive landscape 3 with a 500-plan pool: a search whose convergence test fires (16 of 25 trials)
    run = compare.one_run("additive", 0.002, "rankadaptor-hierarchical", 3, trials=25, pool=500)
    assert run["trials_run"] == 25 and run["objective_calls"]["trials"] == 25

    import rankadaptor.search.study as study

    run_study = study.run_study  # the same search with the CLI's default patience stops early: the check above bites
    monkeypatch.setattr(study, "run_study",
                        lambda settings, *a, **kw: run_study(replace(settings, patience=8), *a, **kw))
    assert compare.one_run("additive", 0.002, "rankadaptor-hierarchical", 3, trials=25, pool=500)["trials_run"] < 25


def _run(strategy, seed, fraction, trials_run=25):
    return {"objective": "additive", "noise": 0.002, "strategy": strategy, "seed": seed, "fraction": fraction,
            "trials_to_best": 10, "oracle_gain": 0.01, "trials_run": trials_run, "propose_seconds": None}


def test_the_converging_row_is_paired_with_the_same_searches_run_to_the_budget():
    compare = load_benchmark("search_compare")
    runs = [_run(compare.DEFAULT_LABEL, s, 0.6 + 0.01 * s) for s in range(4)]
    runs += [_run(compare.CONVERGING_LABEL, s, 0.5 + 0.01 * s + 0.001 * (s % 2), trials_run=20 if s < 3 else 25)
             for s in range(4)]
    table = compare.summarise(runs)
    stop = table[f"additive|0.002|{compare.CONVERGING_LABEL}"]
    assert stop["vs_full_budget"]["n"] == 4 and stop["vs_full_budget"]["significant"]
    assert abs(stop["vs_full_budget"]["mean"] + 0.0995) < 1e-9
    assert "vs_full_budget" not in table[f"additive|0.002|{compare.DEFAULT_LABEL}"]
    text = compare.markdown({"setting": {"space": "s", "trials": 25, "seeds": 4}, "table": table, "command": "x"})
    assert "3 of 4 searches stopped early (21.2 trials on average); -0.099 [" in text
    assert "| 21.2 (20-25) |" in text and "| 25.0 (25-25) |" in text


def test_the_exploration_row_is_paired_with_the_default_and_a_goal_needs_both_baselines():
    compare = load_benchmark("search_compare")
    runs = [_run(compare.DEFAULT_LABEL, s, 0.6 + 0.02 * s) for s in range(4)]
    runs += [_run(compare.VARIANCE_LABEL, s, 0.7 + 0.02 * s + 0.002 * (s % 2)) for s in range(4)]
    table = compare.summarise(runs)
    explore = table[f"additive|0.002|{compare.VARIANCE_LABEL}"]["vs_default"]
    assert explore["n"] == 4 and abs(explore["mean"] - 0.101) < 1e-9
    text = compare.markdown({"setting": {"space": "s", "trials": 25, "seeds": 4, "seed_list": [100, 101, 102, 103]},
                             "table": table, "goal": compare.goal_line(table), "command": "x"})
    assert "* additive, sd 0.002: +0.101 [" in text
    assert "a development run" in text  # seeds >= 100 are never the reported table's
    # without random and TPE in the run the goal is not judged (it was "NOT met ... ahead: no" before)
    assert "additive: not judged (fraction 0.63; random and TPE not run)" in text
