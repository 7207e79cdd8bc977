import json

import numpy as np
import pytest
from scipy import stats

from rankadaptor.errors import RankAdaptorError
from rankadaptor.search.meta import (MetaTask, adapt, load_measurements, pooled_pretrain,
                                     resample_features, reptile)


def _task(name, w, n, rng):
    X = rng.random((n, len(w)))
    return MetaTask(name, X, np.tanh(X @ w) + 0.05 * rng.normal(size=n))


def test_meta_initialisation_beats_scratch_on_a_related_few_shot_task():
    rng = np.random.default_rng(0)
    base = np.linspace(-1.5, 1.5, 10)
    sources = [_task(f"s{i}", base + 0.2 * rng.normal(size=10), 80, rng) for i in range(4)]
    target = _task("t", base + 0.2 * rng.normal(size=10), 110, rng)
    Xk, yk, Xq, yq = target.X[:8], target.y[:8], target.X[8:], target.y[8:]
    scores = {}
    for name, init in [("none", None), ("pooled", pooled_pretrain(sources, 10, steps=600)),
                       ("reptile", reptile(sources, 10, meta_iters=150))]:
        pred = adapt(init, Xk, yk, epochs=30).predict(Xq)
        scores[name] = stats.spearmanr(pred, yq).statistic
    assert scores["pooled"] > scores["none"] and scores["reptile"] > scores["none"]
    assert scores["reptile"] > 0.6


def test_load_measurements_groups_by_setting_and_objective(tmp_path):
    recs = [{"name": "m_0.2", "rank_list": [8, 8, 2, 12, 8], "pruning_rate_list": [0] * 5,
             "performance": {t: 0.5 + i / 100 for i, t in enumerate(
                 ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"])}},
            {"name": "m_0.2", "rank_list": [8, 8, 4, 4, 8], "pruning_rate_list": [0] * 5,
             "performance": {"boolq": 0.7}}]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(recs))
    avg = load_measurements(path, "average", fixed_first=2, fixed_last=1)
    assert list(avg) == ["m_0.2"] and avg["m_0.2"].X.tolist() == [[0.0, 1.0]]
    assert avg["m_0.2"].y[0] == pytest.approx(0.53)
    assert load_measurements(path, "boolq", 2, 1)["m_0.2"].y.tolist() == [0.5, 0.7]
    with pytest.raises(RankAdaptorError, match="unknown"):
        load_measurements(path, "mmlu")


def test_resample_features_by_depth():
    X = np.array([[0.0, 1.0]])
    assert np.allclose(resample_features(X, 3), [[0.0, 0.5, 1.0]])
