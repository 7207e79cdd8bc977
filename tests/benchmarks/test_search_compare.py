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
