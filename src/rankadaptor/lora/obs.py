"""Importance of LoRA rank components and optimal-brain-surgeon compensation (PrunedLoRA maths).

Gate space. A LoRA module computes ``ΔW = s·B·A`` (B: d_out×r, A: r×d_in). Put gates on the rank
components, ``ΔW(g) = s·B·diag(g)·A``; the trained model is ``g = 1``. Component j is column j
of B with row j of A, and removing it means moving ``g_j`` to 0.

Gate gradient. With ``B' = B·diag(g)``, ``∂L/∂g_j = Σ_i B_ij ∂L/∂B'_ij``, so at ``g = 1``::

    ∂L/∂g_j = <B[:, j], ∇_B L[:, j]>  (= <A[j, :], ∇_A L[j, :]>, the same number)
            = Σ_tokens s·(Bᵀ ∂L/∂y)_j · (A x)_j

so it costs one dot product per component from gradients the optimiser already has; no hooks.

Quadratic model. ``L(g + δ) ≈ L(g) + γᵀδ + ½ δᵀ F δ`` with γ the gate gradient and F the
Gauss-Newton / empirical-Fisher matrix ``F = E[∇_g L ∇_g Lᵀ]`` (r×r), accumulated here as an
exponential moving average of outer products of per-step gate gradients, damped as
``F + λ·mean(diag F)·I`` (F from a few steps is rank-deficient).

OBS (remove set S, re-fit the others). Near a minimum γ ≈ 0; minimise ``½ δᵀFδ`` subject to
``δ_S = −g_S``. Lagrange: ``Fδ + E_S μ = 0`` ⇒ ``δ = −F⁻¹E_S μ``; the constraint gives
``μ = −([F⁻¹]_SS)⁻¹ g_S``, hence::

    δ  = −F⁻¹ E_S ([F⁻¹]_SS)⁻¹ g_S          (an r-vector: F⁻¹[:, S] is r×|S|, the inverse |S|×|S|)
    ΔL = ½ g_Sᵀ ([F⁻¹]_SS)⁻¹ g_S             single j: ΔL_j = g_j² / (2 [F⁻¹]_jj),
                                                       δ = −(g_j / [F⁻¹]_jj) F⁻¹ e_j

(the shape trap: the block is ``F⁻¹[:, S] @ inv(F⁻¹[S, S]) @ g_S``, never ``F⁻¹[S, :]``-based).
After fixing ``g_S``, the quadratic over the remaining coordinates has Hessian ``F_RR`` whose
inverse is the Schur update ``F⁻¹_RR − F⁻¹_RS ([F⁻¹]_SS)⁻¹ F⁻¹_SR``; removing one at a time with
that update gives the same δ as removing S at once (tested). δ on the remaining gates is folded
into B (``B[:, i] *= g_i + δ_i``), so no gate parameters remain and the gates are 1 again; the
statistics move to the new coordinates as ``F ← D F D``, ``γ ← D γ`` with ``D = diag(g + δ)``.

Scorers (``SCORERS``): ``obs`` (above), ``taylor`` (first + diagonal second order, no
compensation: ``−γ_j + ½F_jj``), ``activation`` (``E‖(A x)_j‖² · ‖B_j‖²``, the output energy of
the component), ``magnitude`` (``‖B_j‖·‖A_j‖``). Only ``obs`` and ``taylor`` are in loss units.
"""

from __future__ import annotations

import torch

from rankadaptor.errors import RankAdaptorError


def damped(F: torch.Tensor, damping: float) -> torch.Tensor:
    """``F + λ·mean(diag F)·I``; a tiny absolute floor keeps an all-zero F invertible."""
    F = 0.5 * (F + F.T)
    scale = float(torch.diagonal(F).mean()) if F.numel() else 0.0
    scale = max(scale, 1e-12)
    return F + damping * scale * torch.eye(F.shape[0], dtype=F.dtype)


def obs_set(Finv: torch.Tensor, gates: torch.Tensor, S: list[int]) -> tuple[float, torch.Tensor]:
    """(ΔL, δ) for removing the gates in ``S`` with optimal compensation of the others.

    ``Finv`` is the inverse of the (damped) r×r matrix, ``gates`` the current gate values.
    δ is an r-vector with ``δ[S] = −gates[S]``.
    """
    S = list(S)
    if not S:
        return 0.0, torch.zeros_like(gates)
    gS = gates[S]
    block = Finv[S][:, S]
    mu = torch.linalg.solve(block, gS)
    delta = -Finv[:, S] @ mu
    return float(0.5 * gS @ mu), delta


def obs_single_scores(Finv: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """ΔL_j = g_j² / (2 [F⁻¹]_jj) for every j."""
    return gates**2 / (2.0 * torch.diagonal(Finv))


def schur_remove(Finv: torch.Tensor, j: int) -> torch.Tensor:
    """Inverse of F with row/column j deleted, from F⁻¹ (kept r×r: row/col j set to 0)."""
    col = Finv[:, j].clone()
    out = Finv - torch.outer(col, col) / col[j]
    out[j, :] = 0.0
    out[:, j] = 0.0
    return out


class ModuleStats:
    """Running per-module statistics in gate space: EMA of γ and of γγᵀ, and of E(Ax)².

    They live on the CPU in float64 whatever the model's device: r×r is tiny, and the pruning
    decisions are then identical on every device.
    """

    def __init__(self, r: int, beta: float):
        self.beta = beta
        self.grad = torch.zeros(r, dtype=torch.float64)
        self.fisher = torch.zeros(r, r, dtype=torch.float64)
        self.act = torch.zeros(r, dtype=torch.float64)
        self.steps = 0
        self.act_steps = 0

    def update(self, gate_grad: torch.Tensor) -> None:
        v = gate_grad.detach().double().cpu()
        b = self.beta if self.steps else 0.0  # first step: no bias towards the zero init
        self.grad.mul_(b).add_((1 - b) * v)
        self.fisher.mul_(b).add_((1 - b) * torch.outer(v, v))
        self.steps += 1

    def update_act(self, sq_mean: torch.Tensor) -> None:
        b = self.beta if self.act_steps else 0.0
        self.act.mul_(b).add_((1 - b) * sq_mean.detach().double().cpu())
        self.act_steps += 1

    def rescale(self, d: torch.Tensor) -> None:
        """Move the statistics to new gate coordinates after folding ``d`` into B."""
        d = d.double()
        self.grad.mul_(d)
        self.fisher.mul_(torch.outer(d, d))


def gate_gradient(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor | None:
    """∂L/∂g at g = 1 from the parameter gradients (see the module docstring)."""
    if B.grad is None:
        return None
    return (B.detach() * B.grad.detach()).sum(dim=0)


# ---- scorers: rank the active components of one module (lower = prune first) ---------------
class ObsScorer:
    name = "obs"
    loss_units = True
    compensates = True

    def __init__(self, damping: float):
        self.damping = damping

    def prepare(self, stats: ModuleStats, A, B, active: list[int]):
        F = damped(stats.fisher[active][:, active], self.damping)
        return {"Finv": torch.linalg.inv(F), "gates": torch.ones(len(active), dtype=torch.float64), "removed": set()}

    def scores(self, state) -> torch.Tensor:
        s = obs_single_scores(state["Finv"], state["gates"])
        for i in state["removed"]:
            s[i] = float("inf")
        return s

    def remove(self, state, i: int) -> torch.Tensor:
        """Remove local index i; returns δ (local, length of active) to fold into the gates."""
        _, delta = obs_set(state["Finv"], state["gates"], [i])
        state["gates"] = state["gates"] + delta
        state["Finv"] = schur_remove(state["Finv"], i)
        state["removed"].add(i)
        return delta


class _NoCompScorer:
    loss_units = False
    compensates = False

    def __init__(self, damping: float):
        self.damping = damping

    def prepare(self, stats: ModuleStats, A, B, active: list[int]):
        return {"s": self._scores(stats, A, B, active).double(), "removed": set()}

    def scores(self, state) -> torch.Tensor:
        s = state["s"].clone()
        for i in state["removed"]:
            s[i] = float("inf")
        return s

    def remove(self, state, i: int) -> torch.Tensor:
        state["removed"].add(i)
        delta = torch.zeros(len(state["s"]), dtype=torch.float64)
        delta[i] = -1.0
        return delta


class TaylorScorer(_NoCompScorer):
    name = "taylor"
    loss_units = True

    def _scores(self, stats, A, B, active):
        return -stats.grad[active] + 0.5 * torch.diagonal(stats.fisher)[active]


class ActivationScorer(_NoCompScorer):
    name = "activation"

    def _scores(self, stats, A, B, active):
        return stats.act[active] * (B.detach()[:, active].double() ** 2).sum(0).cpu()


class MagnitudeScorer(_NoCompScorer):
    name = "magnitude"

    def _scores(self, stats, A, B, active):
        return (B.detach()[:, active].double().norm(dim=0) * A.detach()[active].double().norm(dim=1)).cpu()


SCORERS: dict[str, type] = {c.name: c for c in (ObsScorer, TaylorScorer, ActivationScorer, MagnitudeScorer)}


def get_scorer(name: str, damping: float):
    if name not in SCORERS:
        raise RankAdaptorError(f"importance scorer {name!r} unknown; valid: {sorted(SCORERS)}")
    return SCORERS[name](damping)
