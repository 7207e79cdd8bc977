"""Importance of LoRA rank components and optimal-brain-surgeon compensation (PrunedLoRA maths).

Gate space (``rankadaptor.lora.pruned_lora_stats``): ``ΔW(g) = s·B·diag(g)·A``, trained model at
g = 1, removing component j moves ``g_j`` to 0. The statistics give the gate gradient γ and an
empirical Fisher F ≈ ∇²_g L in loss units (nats per token), damped relative to its trace::

    F_λ = F + λ·(tr F / r)·I        (well posed whatever the loss scale)

OBS (PrunedLoRA §3; Hassibi & Stork's optimal brain surgeon). At a local minimum the loss change
of moving the gates by δ is ``½ δᵀFδ``. Remove the set S, re-fit the others: minimise it subject
to ``δ_S = −g_S``. Lagrange: ``Fδ + E_S μ = 0`` ⇒ ``δ = −F⁻¹E_S μ``; the constraint gives
``μ = −([F⁻¹]_SS)⁻¹ g_S``, hence::

    δ  = −F⁻¹ E_S ([F⁻¹]_SS)⁻¹ g_S          (F⁻¹[:, S] is r×|S|, the inverse |S|×|S|)
    ΔL = ½ g_Sᵀ ([F⁻¹]_SS)⁻¹ g_S             single j: ΔL_j = g_j² / (2 [F⁻¹]_jj),
                                                       δ = −(g_j / [F⁻¹]_jj) F⁻¹ e_j

(the shape trap of the authors' code: the block is ``F⁻¹[:, S] @ inv(F⁻¹[S, S]) @ g_S``). Removing
one at a time, F⁻¹ of the rest by the Schur update ``F⁻¹ − F⁻¹e_j e_jᵀF⁻¹ / [F⁻¹]_jj``, gives the
same δ as removing S at once (tested). The first-order term ``γᵀδ`` is left out on purpose:
training is not at a minimum when it prunes, but γ here is an average of past mini-batch
gradients, stale and noisy against a step as large as δ_j = −1; with it, OBS chose components
whose removal cost more held-out loss on a recovering tiny model (three seeds, in development).

Compensation of the kept components is δ on their gates, folded into B (``B[:, i] *= 1 + δ_i``).
The quadratic model is a local one, so δ is shrunk as a whole until every kept gate stays within
``1 ± max_gate_change``: along ``t·δ`` the quadratic is convex with its minimum at t = 1, so any
t in [0, 1] predicts no more loss than no compensation at all.

Scorers (``SCORERS``) rank the active components of one module (lower = remove first): ``obs``
(ΔL_j above, assuming compensation), ``taylor`` (first-order Taylor ``|γ_j|``, the loss change of
g_j → 0 to first order; Molchanov et al. 2017), ``activation`` (``E[(A x)_j²]·‖B_j‖²``, the output
energy of the component), ``magnitude`` (``‖B_j‖·‖A_j‖``). ``obs`` and ``taylor`` are in loss
units. Whichever scorer chooses, the compensation applied (or not: ``compensate=False``) is the
OBS one for the chosen set.
"""

from __future__ import annotations

import torch

from rankadaptor.errors import RankAdaptorError


def solve_dtype(device: torch.device) -> torch.dtype:
    """float64 for the r×r solves, where the device has it (Apple MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def damped(F: torch.Tensor, damping: float) -> torch.Tensor:
    """``F + λ·(tr F / r)·I``; a tiny absolute floor keeps an all-zero F invertible."""
    F = 0.5 * (F + F.T)
    scale = torch.diagonal(F).mean().clamp_min(1e-12) if F.numel() else 1e-12
    return F + damping * scale * torch.eye(F.shape[0], dtype=F.dtype, device=F.device)


def obs_set(Finv: torch.Tensor, gates: torch.Tensor, S: list[int]) -> tuple[float, torch.Tensor]:
    """(½ δᵀFδ, δ) for removing the gates in ``S`` with optimal compensation of the others.

    ``Finv`` is the inverse of the (damped) r×r matrix, ``gates`` the current gate values.
    δ is an r-vector with ``δ[S] = −gates[S]``.
    """
    S = list(S)
    if not S:
        return 0.0, torch.zeros_like(gates)
    gS = gates[S]
    mu = torch.linalg.solve(Finv[S][:, S], gS)
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


def quadratic_change(F: torch.Tensor, delta: torch.Tensor) -> float:
    """½ δᵀFδ: the predicted loss change of moving the gates by δ (at a minimum)."""
    return float(0.5 * delta @ F @ delta)


def compensation(Finv: torch.Tensor, S: list[int], max_gate_change: float) -> tuple[torch.Tensor, float]:
    """(δ, t): δ = −1 on ``S`` and t·(OBS compensation) on the others, t <= 1 keeping |δ_i| <= max_gate_change."""
    _, delta = obs_set(Finv, torch.ones(Finv.shape[0], dtype=Finv.dtype, device=Finv.device), S)
    kept = torch.ones_like(delta, dtype=torch.bool)
    kept[S] = False
    largest = float(delta[kept].abs().max()) if kept.any() else 0.0
    t = min(1.0, max_gate_change / largest) if largest > 0 else 1.0
    delta = torch.where(kept, t * delta, torch.full_like(delta, -1.0))
    return delta, t


# ---- scorers: rank the active components of one module (lower = remove first) ---------------
class Scorer:
    """``prepare(view)`` builds the state of one module for one event, ``scores(state)`` ranks its active
    components (removed ones are +inf), ``remove(state, i)`` takes local index i out.

    ``view`` has the active components' ``F`` (damped), ``Finv``, ``grad`` (γ), ``act`` (solve dtype,
    adapter device) and ``A`` (r×d_in), ``B`` (d_out×r) rows/columns."""

    name = ""
    loss_units = False

    def prepare(self, view) -> dict:
        return {"s": self.static_scores(view), "removed": []}

    def static_scores(self, view) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, state) -> torch.Tensor:
        s = state["s"].clone()
        s[state["removed"]] = float("inf")
        return s

    def remove(self, state, i: int) -> None:
        state["removed"].append(i)


class ObsScorer(Scorer):
    name = "obs"
    loss_units = True

    def prepare(self, view) -> dict:
        return {"Finv": view.Finv.clone(), "gates": torch.ones_like(torch.diagonal(view.Finv)), "removed": []}

    def scores(self, state) -> torch.Tensor:
        s = obs_single_scores(state["Finv"], state["gates"])
        s[state["removed"]] = float("inf")
        return s

    def remove(self, state, i: int) -> None:
        _, delta = obs_set(state["Finv"], state["gates"], [i])
        state["gates"] = state["gates"] + delta  # the next removal starts from the compensated gates
        state["Finv"] = schur_remove(state["Finv"], i)
        state["removed"].append(i)


class TaylorScorer(Scorer):
    name = "taylor"
    loss_units = True

    def static_scores(self, view) -> torch.Tensor:
        return view.grad.abs()


class ActivationScorer(Scorer):
    name = "activation"

    def static_scores(self, view) -> torch.Tensor:
        return view.act * view.B.to(view.act.dtype).pow(2).sum(0)


class MagnitudeScorer(Scorer):
    name = "magnitude"

    def static_scores(self, view) -> torch.Tensor:
        dt = view.grad.dtype
        return view.B.to(dt).norm(dim=0) * view.A.to(dt).norm(dim=1)


SCORERS: dict[str, type] = {c.name: c for c in (ObsScorer, TaylorScorer, ActivationScorer, MagnitudeScorer)}


def get_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise RankAdaptorError(f"importance scorer {name!r} unknown; valid: {sorted(SCORERS)}")
    return SCORERS[name]()
