"""OBS maths of PrunedLoRA against brute force on small quadratic problems."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.obs import SCORERS, damped, gate_gradient, get_scorer, obs_set, obs_single_scores, schur_remove


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


def test_single_formula_and_sequential_equals_set():
    F = _pd(6, 7)
    Finv = torch.linalg.inv(F)
    gates = torch.ones(6, dtype=torch.float64)
    scores = obs_single_scores(Finv, gates)
    for j in range(6):
        assert float(scores[j]) == pytest.approx(_brute(F, gates, [j])[0], rel=1e-9)
    # remove 1 then 4 sequentially (Schur update of F⁻¹, gates carry the first compensation)
    _, d1 = obs_set(Finv, gates, [1])
    g1 = gates + d1
    Finv1 = schur_remove(Finv, 1)
    R = [0, 2, 3, 4, 5]
    torch.testing.assert_close(Finv1[R][:, R], torch.linalg.inv(F[R][:, R]))
    _, d2 = obs_set(Finv1, g1, [4])
    _, dset = obs_set(Finv, gates, [1, 4])
    torch.testing.assert_close(d1 + d2, dset)


def test_damping_and_gate_gradient():
    F = torch.zeros(3, 3, dtype=torch.float64)
    assert torch.linalg.matrix_rank(damped(F, 0.1)) == 3
    # ∂L/∂g_j from parameter gradients equals autograd through explicit gates
    torch.manual_seed(0)
    A = torch.randn(4, 7, requires_grad=True)
    B = torch.randn(5, 4, requires_grad=True)
    x = torch.randn(3, 7)
    g = torch.ones(4, requires_grad=True)
    loss = ((x @ (B @ torch.diag(g) @ A).T) ** 2).sum()
    loss.backward()
    torch.testing.assert_close(gate_gradient(A, B), g.grad)
    torch.testing.assert_close((A * A.grad).sum(1), g.grad)


def test_scorer_registry_lists_names():
    assert {"obs", "taylor", "activation", "magnitude"} <= set(SCORERS)
    with pytest.raises(RankAdaptorError, match="magnitude"):
        get_scorer("nope", 0.1)
