"""The trial-budget curve says at which budget the default's fraction of the oracle gain reaches 70 %."""

from tests.benchmarks import load_benchmark


def _run(strategy, seed, trials, fraction):
    return {"objective": "additive", "noise": 0.002, "strategy": strategy, "seed": seed, "trials": trials,
            "fraction": fraction, "trials_to_best": 5, "oracle_gain": 0.01, "trials_run": trials,
            "propose_seconds": None, "objective_calls": {"trials": trials, "noise_repeats": 2, "final": 6}}


def test_the_first_budget_reaching_the_goal_is_named_for_the_mean_and_for_the_interval():
    trials = load_benchmark("search_trials")
    default = trials.sc.DEFAULT_LABEL
    spread = [-0.03, 0.01, 0.02, 0.0]  # the mean reaches 0.70 at 25 trials, the interval's lower end only at 35
    runs = [_run(default, s, b, f + spread[s] * k) for b, f, k in ((15, 0.55, 1), (25, 0.70, 3), (35, 0.80, 1))
            for s in range(4)]
    runs += [_run(other, s, b, 0.2 + 0.01 * s * (s % 2)) for other in ("random", "tpe") for b in (15, 25, 35)
             for s in range(4)]
    budgets = [15, 25, 35]
    table = trials.cells(runs, budgets)
    key = f"additive|0.002|{default}"
    assert trials.first_reaching(table, key, budgets, "mean") == 25
    assert trials.first_reaching(table, key, budgets, "ci_low") == 35
    result = {"setting": {"space": "s", "budgets": budgets, "seeds": 4, "seed_list": [0, 1, 2, 3]}, "table": table,
              "calls": {str(b): trials.calls(runs, default, b) for b in budgets}, "command": "x"}
    text = trials.markdown(result)
    assert "mean fraction reaches 70% at 25 trials, the lower end of its interval at 35 trials" in text
    assert "15 trials: 23, 25 trials: 33, 35 trials: 43" in text  # trials + repeats + final re-evaluations
    assert "| additive | 0.002 | random | 0.21 [" in text
    assert "at 15 trials +0.34 [" in text and " vs TPE" in text
