"""PrunedLoRA's gate statistics: per-token gate gradients from hooks, an empirical Fisher in loss units.

Gates. A LoRA module computes ``y = W0 x + s·B·diag(g)·A x`` with gates g = 1; rank component j
(column j of B, row j of A) is removed by moving ``g_j`` to 0. With ``h_t = A x_t`` the output of
``lora_A`` at position t (dropout included) and ``∂L/∂h_t = s·Bᵀ ∂L/∂y_t`` the gradient arriving
there in the ordinary backward pass, position t contributes::

    γ_tj = s·(Bᵀ ∂L/∂y_t)_j · (A x_t)_j = h_tj · (∂L/∂h_t)_j,        Σ_t γ_t = ∂L/∂g

so one forward hook on ``lora_A`` (keeps h) and one tensor hook on its output (receives ∂L/∂h)
give every position's contribution: no extra pass, r numbers per position.

Estimator: the empirical Fisher of the mean-token loss, in loss units. The recovery loss of a step
is ``L = (1/m) Σ_micro (1/N) Σ_t ℓ_t`` (m micro-batches of N loss tokens each), so a position's
contribution is ``γ_t = ∇ℓ_t / (m·N)``, where ∇ℓ_t is the gradient of the one loss term
attributed to position t. Its Hessian is ``H = (1/(mN)) Σ_t ∇²ℓ_t``; with the Fisher identity
(∇²ℓ ≈ ∇ℓ ∇ℓᵀ for a negative log-likelihood near a good fit)::

    F = (1/(mN)) Σ_t ∇ℓ_t ∇ℓ_tᵀ = m·N · Σ_t γ_t γ_tᵀ               (r×r per module)

``fisher="token"`` treats positions as the samples: a position's γ_t also carries the gradient that
later tokens send back through attention, and the cross-covariances between positions of one
sequence are dropped (the "expand" approximation of K-FAC for sequences); 512 samples per step of 4×128
tokens give a full-rank r×r matrix after one step. ``fisher="example"`` sums γ_t over each sequence
first (exact per-example gradients: ``F = m·N·Σ_b g_b g_bᵀ``, cross terms included), 4 samples per step.
``fisher_tokens`` keeps that many evenly spaced positions per micro-batch, scaled up to the whole.
N is the number of label tokens of the micro-batch (``labels != -100`` after the causal shift)
when the model is called with ``labels``, else the number of positions the module saw.

Per step the Fisher estimate, the gate gradient γ = Σ_t γ_t (first-order term of the Taylor and
OBS costs) and E[h_j²] (the activation scorer) enter exponential moving averages. All statistics
live on the adapter's device in at least float32 (r×r per module is small; no host copy per step).
"""

from __future__ import annotations

import torch


def stat_dtype(weight: torch.Tensor) -> torch.dtype:
    """float32 for half-precision adapters (sums of squares overflow or round away in fp16/bf16)."""
    return torch.promote_types(weight.dtype, torch.float32)


class GateStats:
    """Running gate statistics of one module; ``hook_*`` feed it, ``end_step`` closes a step."""

    def __init__(self, r: int, beta: float, device, dtype, fisher: str = "token", fisher_tokens: int | None = None):
        self.beta, self.fisher_kind, self.fisher_tokens = beta, fisher, fisher_tokens
        kw = {"device": device, "dtype": dtype}
        self.grad = torch.zeros(r, **kw)  # EMA of γ = ∂L/∂g
        self.fisher = torch.zeros(r, r, **kw)  # EMA of the per-step Fisher estimate (loss units)
        self.act = torch.zeros(r, **kw)  # EMA of E[h_j²]
        self.steps = 0
        # the step being accumulated: sums over micro-batches
        self._g, self._F, self._act = torch.zeros(r, **kw), torch.zeros(r, r, **kw), torch.zeros(r, **kw)
        self._forwards = self._backwards = 0  # micro-batches seen (a recomputed forward counts twice)

    # ---- hooks (within one step) -----------------------------------------------------------
    def add_forward(self, h: torch.Tensor) -> None:
        self._act += h.detach().reshape(-1, h.shape[-1]).to(self._act.dtype).pow(2).mean(0)
        self._forwards += 1

    def add_backward(self, h: torch.Tensor, grad_h: torch.Tensor, n_tokens) -> None:
        """One micro-batch: ``h`` and ``∂L/∂h`` of shape (..., r); ``n_tokens`` its N (int or 0-dim tensor)."""
        gamma = (h.detach() * grad_h.detach()).to(self._F.dtype)  # γ_t per position
        r = gamma.shape[-1]
        self._g += gamma.reshape(-1, r).sum(0)
        if self.fisher_kind == "example" and gamma.dim() > 2:
            rows = gamma.reshape(gamma.shape[0], -1, r).sum(1)  # per-sequence gate gradients
        else:
            rows = gamma.reshape(-1, r)
        scale = n_tokens
        if self.fisher_tokens is not None and rows.shape[0] > self.fisher_tokens:
            idx = torch.linspace(0, rows.shape[0] - 1, self.fisher_tokens, device=rows.device).round().long()
            scale = n_tokens * (rows.shape[0] / self.fisher_tokens)
            rows = rows[idx]
        self._F += scale * (rows.T @ rows)
        self._backwards += 1

    def end_step(self) -> None:
        """Close a step of m micro-batches (backward passes): F_step = m · Σ_micro N·Σ_t γγᵀ; update the EMAs."""
        m = max(self._backwards, 1)
        b = self.beta if self.steps else 0.0  # first step: no bias towards the zero init
        self.grad.mul_(b).add_(self._g, alpha=1 - b)
        self.fisher.mul_(b).add_(self._F * m, alpha=1 - b)
        self.act.mul_(b).add_(self._act / max(self._forwards, 1), alpha=1 - b)
        self.steps += 1
        self._g.zero_(), self._F.zero_(), self._act.zero_()
        self._forwards = self._backwards = 0

    # ---- after a pruning event ---------------------------------------------------------------
    def rescale(self, d: torch.Tensor) -> None:
        """Gate coordinates after folding ``diag(d)`` into B: γ ← D γ, F ← D F D (E[h²] is unchanged)."""
        d = d.to(self.grad)
        self.grad.mul_(d)
        self.fisher.mul_(torch.outer(d, d))

    def drop(self, dead: torch.Tensor) -> None:
        """Removed components carry no statistics."""
        self.grad[dead] = 0.0
        self.act[dead] = 0.0
        self.fisher[dead] = 0.0
        self.fisher[:, dead] = 0.0

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"grad": self.grad.clone(), "fisher": self.fisher.clone(), "act": self.act.clone(), "steps": self.steps}

    def load_state_dict(self, s: dict) -> None:
        for key in ("grad", "fisher", "act"):
            mine = getattr(self, key)
            if s[key].shape != mine.shape:
                raise ValueError(f"{key} has shape {tuple(s[key].shape)}, expected {tuple(mine.shape)}")
            setattr(self, key, s[key].to(device=mine.device, dtype=mine.dtype).clone())
        self.steps = int(s["steps"])


def loss_tokens(kwargs: dict):
    """N of a causal-LM call: labels that are not -100 after the one-position shift; None without labels."""
    labels = kwargs.get("labels")
    if not torch.is_tensor(labels) or labels.dtype not in (torch.long, torch.int, torch.int32):
        return None
    return (labels[..., 1:] != -100).sum()  # a 0-dim tensor on the labels' device: no host sync


class GateHooks:
    """Forward/backward hooks that feed ``GateStats`` of every module during ordinary training steps."""

    def __init__(self, model, layers: dict, stats: dict, adapter: str):
        self._tokens = None
        self._handles = [model.register_forward_pre_hook(self._count, with_kwargs=True)]
        for name, layer in layers.items():
            self._handles.append(layer.lora_A[adapter].register_forward_hook(self._forward(stats[name])))

    def _count(self, module, args, kwargs):
        self._tokens = loss_tokens(kwargs)

    def _forward(self, st: GateStats):
        def hook(module, inputs, h):
            if not (module.training and torch.is_grad_enabled() and h.requires_grad):
                return  # evaluation passes do not count
            st.add_forward(h)
            n = self._tokens if self._tokens is not None else h.reshape(-1, h.shape[-1]).shape[0]
            h_saved = h.detach()  # the same storage autograd keeps for lora_B's backward
            h.register_hook(lambda grad: st.add_backward(h_saved, grad, n))
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
