"""benchmarks/budget_gain.py's method list is data: every row names a method of the kit, every lever two rows."""


from tests.benchmarks import load_benchmark


def _module():
    return load_benchmark("budget_gain")


def test_rows_name_kit_methods_and_levers_name_rows():
    from rankadaptor.experiments import METHODS

    bg = _module()
    keys = [r["key"] for r in bg.METHODS]
    assert len(keys) == len(set(keys)) and keys[0] == "uniform"
    assert all(r["method"] in METHODS for r in bg.METHODS), [r["method"] for r in bg.METHODS if r["method"] not in METHODS]
    assert all(a in keys and b in keys for _, a, b in bg.LEVERS)
    allowed = {"key", "label", "method", "alloc_steps", "plan", "lr_grid", "overrides"}
    assert all(set(r) <= allowed for r in bg.METHODS)


def test_the_cut_rows_the_table_names_are_kit_methods():
    from rankadaptor.experiments import CUT_AFTER_TRAINING, METHODS

    assert set(CUT_AFTER_TRAINING) <= set(METHODS)
