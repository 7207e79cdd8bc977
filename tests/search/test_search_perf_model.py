import numpy as np
from scipy import stats

from rankadaptor.search.perf_model import Ensemble, MLPConfig, PerformanceModel, cv_spearman


def _data(n, seed=0, noise=0.05):
    rng = np.random.default_rng(seed)
    X = rng.random((n, 8))
    w = np.linspace(-1, 1, 8)
    return X, X @ w + noise * rng.normal(size=n)


def test_fit_predicts_held_out_order_and_standardises_targets():
    X, y = _data(60)
    m = PerformanceModel(8, MLPConfig(epochs=300)).fit(X[:45], y[:45] * 100 + 1000)
    pred = m.predict(X[45:])
    assert stats.spearmanr(pred, y[45:]).statistic > 0.7
    assert abs(pred.mean() - 1000) < 100


def test_partial_fit_keeps_predictions_continuous_then_improves():
    X, y = _data(80, seed=1)
    m = PerformanceModel(8).fit(X[:10], y[:10])
    before = m.predict(X[60:])
    m2 = PerformanceModel(8).fit(X[:10], y[:10])
    m2.partial_fit(X[:60], y[:60], epochs=0 or 1)
    # one step after rescaling: predictions move only a little
    assert np.abs(m2.predict(X[60:]) - before).max() < 0.5 * np.std(y)
    m2.partial_fit(X[:60], y[:60], epochs=200)
    err_before = np.mean((before - y[60:]) ** 2)
    assert np.mean((m2.predict(X[60:]) - y[60:]) ** 2) < err_before


def test_ensemble_gives_spread_and_cv_spearman_separates_signal_from_noise():
    X, y = _data(40, seed=2)
    mean, std = Ensemble(8, n_members=3).fit(X, y).predict(X[:5])
    assert mean.shape == std.shape == (5,) and (std > 0).all()
    quick = MLPConfig(epochs=120)
    assert cv_spearman(X, y, config=quick) > 0.6
    noise = np.random.default_rng(3).normal(size=40)
    assert cv_spearman(X, noise, config=quick) < 0.5
    assert np.isnan(cv_spearman(X[:4], y[:4]))


def test_own_adamw_matches_torch_adamw():
    import torch

    from rankadaptor.search.perf_model import AdamW

    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5))
    b = torch.nn.Parameter(a.detach().clone())
    ours, ref = AdamW([a], lr=0.1, weight_decay=0.01), torch.optim.AdamW([b], lr=0.1, weight_decay=0.01)
    for _ in range(5):
        for p, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            (p ** 3).sum().backward()
            opt.step()
    assert torch.allclose(a, b, atol=1e-6)
