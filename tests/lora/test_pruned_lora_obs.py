"""OBS maths of PrunedLoRA against brute force on small quadratic problems."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.obs import (SCORERS, ObsScorer, compensation, damped, get_scorer, obs_set, obs_single_scores,
                                  quadratic_change, schur_remove)


def _pd(r, seed):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(r, r, generator=g, dtype=torch.float64)
    return M @ M.T + 0.1 * torch.eye(r, dtype=torch.float64)


def _brute(F, gates, S):
    """min over δ with δ_S = −g_S of ½ δᵀFδ, by solving the reduced linear system."""
    r = len(gates)
    R = [i for i in range(r) if i not in S]
    fixed = -gates[S]
    dR = torch.linalg.solve(F[R][:, R], -F[R][:, S] @ fixed)
    d = torch.zeros(r, dtype=torch.float64)
    d[S], d[R] = fixed, dR
    return float(0.5 * d @ F @ d), d


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("S", [[2], [0, 3], [1, 4, 5]])
def test_obs_set_equals_brute_force(seed, S):
    F = _pd(6, seed)
    gates = torch.rand(6, generator=torch.Generator().manual_seed(seed + 9), dtype=torch.float64) + 0.5
    dl, delta = obs_set(torch.linalg.inv(F), gates, S)
    bl, bd = _brute(F, gates, S)
    assert dl == pytest.approx(bl, rel=1e-9)
    torch.testing.assert_close(delta, bd)


def test_obs_matches_numerical_optimisation():
    F = _pd(5, 3)
    gates = torch.ones(5, dtype=torch.float64)
    dl, delta = obs_set(torch.linalg.inv(F), gates, [1])
    Fn = F.numpy()
    R = [0, 2, 3, 4]

    def f(x):
        d = np.zeros(5)
        d[1] = -1.0
        d[R] = x
        return 0.5 * d @ Fn @ d

    res = minimize(f, np.zeros(4), method="BFGS", options={"gtol": 1e-10})
    assert dl == pytest.approx(res.fun, rel=1e-6)
    np.testing.assert_allclose(delta.numpy()[R], res.x, atol=1e-5)


def test_single_formula_and_sequential_removal_equals_the_set():
    F = _pd(6, 7)
    Finv = torch.linalg.inv(F)
    gates = torch.ones(6, dtype=torch.float64)
    scores = obs_single_scores(Finv, gates)
    for j in range(6):
        assert float(scores[j]) == pytest.approx(_brute(F, gates, [j])[0], rel=1e-9)
    R = [0, 2, 3, 4, 5]
    torch.testing.assert_close(schur_remove(Finv, 1)[R][:, R], torch.linalg.inv(F[R][:, R]))
    # the scorer removes 1 then 4 (Schur update, gates carry the first compensation): same δ and ΔL as {1, 4}
    scorer = ObsScorer()
    state = scorer.prepare(type("View", (), {"Finv": Finv})())
    total = 0.0
    for i in (1, 4):
        total += float(scorer.scores(state)[i])
        scorer.remove(state, i)
    dl, dset = obs_set(Finv, gates, [1, 4])
    torch.testing.assert_close(state["gates"] - 1.0, dset)
    assert total == pytest.approx(dl, rel=1e-9) and dl == pytest.approx(quadratic_change(F, dset), rel=1e-9)
    assert torch.isinf(scorer.scores(state)[[1, 4]]).all()


def test_compensation_trust_region_never_predicts_worse_than_none():
    F = _pd(6, 11) + 5 * torch.ones(6, 6, dtype=torch.float64)  # strongly coupled: a large compensation
    Finv = torch.linalg.inv(F)
    kept = [0, 1, 3, 4, 5]
    none = torch.zeros(6, dtype=torch.float64)
    none[2] = -1.0
    _, exact = obs_set(Finv, torch.ones(6, dtype=torch.float64), [2])
    assert float(exact[kept].abs().max()) > 0.05
    for tau in (0.05, 0.2, 1.0):
        delta, t = compensation(Finv, [2], tau)
        assert float(delta[2]) == -1.0 and float(delta[kept].abs().max()) <= tau + 1e-12
        torch.testing.assert_close(delta[kept], t * exact[kept])  # shrunk as a whole, direction kept
        assert quadratic_change(F, delta) <= quadratic_change(F, none) + 1e-12
        assert quadratic_change(F, exact) <= quadratic_change(F, delta) + 1e-12
    assert compensation(Finv, [2], 0.05)[1] < 1.0


def test_damping_is_relative_to_the_trace():
    F = _pd(4, 1)
    torch.testing.assert_close(damped(1e-6 * F, 0.01), 1e-6 * damped(F, 0.01))  # scale-free
    assert float(torch.diagonal(damped(F, 0.5) - F).mean()) == pytest.approx(0.5 * float(torch.diagonal(F).mean()))
    assert torch.linalg.matrix_rank(damped(torch.zeros(3, 3, dtype=torch.float64), 0.1)) == 3


def test_scorer_registry_lists_names():
    assert {"obs", "taylor", "activation", "magnitude"} <= set(SCORERS)
    with pytest.raises(RankAdaptorError, match="magnitude"):
        get_scorer("nope")
