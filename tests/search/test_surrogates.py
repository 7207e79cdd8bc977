import numpy as np
import pytest
from scipy import stats

from rankadaptor.errors import RankAdaptorError
from rankadaptor.search.perf_model import MLPConfig
from rankadaptor.search.space import SearchSpace
from rankadaptor.search.surrogates import SURROGATES, make_surrogate, oof_predictions
from rankadaptor.search.synthetic import additive


def _space(n=20):
    return SearchSpace(n, fixed_first=2, fixed_last=2, budget=SearchSpace(n).uniform_budget(8), tolerance=0.02)


def test_ridge_learns_an_additive_log_rank_objective_from_few_trials():
    space = _space()
    obj = additive(space, noise=0.0, seed=4)
    X = space.sample(24, 0)
    y = obj.truth(X)
    pred = oof_predictions("ridge", space, X, y)
    assert stats.spearmanr(pred, y).statistic > 0.8
    model = make_surrogate("ridge", space).fit(X, y)
    test = space.sample(200, 1)
    mean, std = model.predict(test)
    assert stats.spearmanr(mean, obj.truth(test)).statistic > 0.8
    assert (std > 0).all()


def test_ridge_uncertainty_shrinks_with_data_and_grows_with_noise():
    space = _space()
    obj = additive(space, noise=0.0, seed=4)
    test = space.sample(100, 3)
    few = make_surrogate("ridge", space).fit(space.sample(6, 0), obj.truth(space.sample(6, 0)), noise_sd=0.001)
    X = space.sample(60, 0)
    many = make_surrogate("ridge", space).fit(X, obj.truth(X), noise_sd=0.001)
    noisy = make_surrogate("ridge", space).fit(X, obj.truth(X), noise_sd=0.05)
    assert many.predict(test)[1].mean() < few.predict(test)[1].mean()
    assert noisy.predict(test)[1].mean() > many.predict(test)[1].mean()


def test_mlp_surrogate_fits_incrementally():
    space = _space()
    obj = additive(space, noise=0.0, seed=4)
    X = space.sample(40, 0)
    model = make_surrogate("mlp", space, mlp=MLPConfig(epochs=200, partial_epochs=60), ensemble_size=2)
    model.fit(X[:20], obj.truth(X[:20]))
    first = model.ensemble
    model.fit(X, obj.truth(X))
    assert model.ensemble is first  # online incremental learning: the same networks continue
    mean, std = model.predict(space.sample(50, 5))
    assert mean.shape == std.shape == (50,)


def test_registry_names_the_valid_surrogates():
    assert set(SURROGATES) == {"ridge", "mlp"}
    with pytest.raises(RankAdaptorError, match=r"choose from \['mlp', 'ridge'\]"):
        make_surrogate("forest", _space())
