"""What to cut: importance scores for coupled structures (RankAdaptor Eq. 2; LLM-Pruner).

A *unit* is the smallest thing width pruning removes together:

* attention: one key/value group = its k_proj and v_proj rows, the rows of every query head that
  reads it (q_proj, plus biases where the family has them) and the matching o_proj input
  columns. Without grouped-query attention a group is one head.
* MLP: one intermediate channel = gate_proj row, up_proj row, down_proj column.

Each importance class turns one coupled weight slice, shaped (units, elements), into a score per
unit; scores of all weights coupled in a unit are summed (LLM-Pruner's "sum" aggregation). A new
importance is one small class registered in ``IMPORTANCES``.

Gradient statistics come from calibration text: ``g`` is the gradient of the mean next-token loss
over the calibration sequences and ``F`` the mean of the per-sequence squared gradients (the
empirical Fisher diagonal), so Eq. 2's second-order term is ½·w²·F.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from rankadaptor import device as dev
from rankadaptor.errors import RankAdaptorError
from rankadaptor.models.families import ModelFamily

log = logging.getLogger(__name__)


@dataclass
class Slice:
    """One coupled weight viewed as (units, elements): weight, gradient, Fisher diagonal."""

    w: torch.Tensor
    g: torch.Tensor | None = None
    f: torch.Tensor | None = None


class Importance:
    name = ""
    needs_grad = False
    needs_fisher = False

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, s: Slice) -> torch.Tensor:  # (units,)
        raise NotImplementedError

    def finalize(self, total: torch.Tensor) -> torch.Tensor:
        return total


class Element1(Importance):
    """First-order Taylor: Σ |g·w| over the unit's elements."""

    name, needs_grad = "element1", True

    def score(self, s):
        return (s.g * s.w).abs().sum(1)


class Element2(Importance):
    """Second-order Taylor (Eq. 2): Σ |g·w − ½·w²·F| with F the per-sample squared gradients."""

    name, needs_grad, needs_fisher = "element2", True, True

    def score(self, s):
        return (s.g * s.w - 0.5 * s.w * s.w * s.f).abs().sum(1)


class Vector(Importance):
    """Vector-wise Taylor: |Σ g·w| per coupled weight of the unit."""

    name, needs_grad = "vector", True

    def score(self, s):
        return (s.g * s.w).sum(1).abs()


class L1(Importance):
    name = "l1"

    def score(self, s):
        return s.w.abs().sum(1)


class L2(Importance):
    name = "l2"

    def score(self, s):
        return s.w.pow(2).sum(1)

    def finalize(self, total):
        return total.sqrt()


class Random(Importance):
    """A control: uniform random scores, reproducible from the seed (one stream over all layers)."""

    name = "random"

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        self.gen = torch.Generator().manual_seed(seed)

    def score(self, s):
        return torch.rand(s.w.shape[0], generator=self.gen)


IMPORTANCES: dict[str, type[Importance]] = {
    cls.name: cls for cls in (Element1, Element2, Vector, L1, L2, Random)
}


def get_importance(name: str, seed: int = 0) -> Importance:
    if name not in IMPORTANCES:
        raise RankAdaptorError(f"unknown importance {name!r}; choose one of: {', '.join(IMPORTANCES)}")
    return IMPORTANCES[name](seed=seed)


# ----------------------------------------------------------------------------- calibration


def calibration_batches(tokenizer, texts, n: int, seq_len: int) -> torch.Tensor:
    """``n`` sequences of ``seq_len`` tokens cut from the concatenated texts, shape (n, seq_len)."""
    if isinstance(texts, str):
        texts = [texts]
    joined = "\n\n".join(t for t in texts if t and t.strip())
    ids = tokenizer(joined, add_special_tokens=False)["input_ids"] if joined else []
    need = n * seq_len
    if len(ids) < need:
        raise RankAdaptorError(
            f"calibration text has {len(ids)} tokens but {n} sequences x {seq_len} tokens = {need} are needed; "
            "pass more text, or lower --calibration / the sequence length"
        )
    return torch.tensor(ids[:need], dtype=torch.long).view(n, seq_len)


def gradient_stats(model, batches: torch.Tensor, fisher: bool, only=None) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Per-parameter mean gradient and (optionally) mean squared per-sequence gradient.

    One backward pass per calibration sequence: the per-sample squares are what Eq. 2's
    second-order term needs. ``only`` (modules) limits the statistics, and the gradients
    computed at all, to those modules' parameters: the blocks being scored, not the embeddings.
    Parameters' ``requires_grad`` flags and ``.grad`` are restored.
    """
    all_params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in all_params.items()}
    if only is not None:
        wanted = {id(p) for m in only for p in m.parameters()}
        params = {n: p for n, p in all_params.items() if id(p) in wanted}
    else:
        params = all_params
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    squares = {n: torch.zeros_like(p) for n, p in params.items()} if fisher else None
    batches = dev.move(batches, dev.model_device(model))  # calibration text is tokenized on the CPU
    was_training = model.training
    model.eval()
    try:
        for n, p in all_params.items():
            p.requires_grad_(n in params)
            p.grad = None
        for row in batches:
            ids = row.unsqueeze(0)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            for n, p in params.items():
                if p.grad is None:
                    continue
                sums[n] += p.grad
                if fisher:
                    squares[n] += p.grad * p.grad
                p.grad = None
    finally:
        for n, p in all_params.items():
            p.requires_grad_(flags[n])
            p.grad = None
        model.train(was_training)
    k = len(batches)
    return {n: (sums[n] / k, squares[n] / k if fisher else None) for n in params}


# ----------------------------------------------------------------------------- unit scores


def _rows(t: torch.Tensor | None, units: int) -> torch.Tensor | None:
    return None if t is None else t.reshape(units, -1)


def _cols(t: torch.Tensor | None, units: int) -> torch.Tensor | None:
    return None if t is None else t.t().reshape(units, -1)


def _coupled(fam: ModelFamily, i: int, stats, kind: str):
    """(tensor name suffix, weight, row/col, units) of every weight coupled in layer i's units."""
    names = {id(p): n for n, p in fam.model.named_parameters()}
    if kind == "attn":
        units = fam.num_kv_heads(i)
        mods = fam.attn_proj(i)
        parts = [(mods[m], "rows") for m in ("q_proj", "k_proj", "v_proj")] + [(mods["o_proj"], "cols")]
    else:
        units = fam.intermediate_size(i)
        mods = fam.mlp_proj(i)
        parts = [(mods["gate_proj"], "rows"), (mods["up_proj"], "rows"), (mods["down_proj"], "cols")]
    out = []
    for mod, axis in parts:
        tensors = [mod.weight] + ([mod.bias] if axis == "rows" and mod.bias is not None else [])
        for t in tensors:
            g, f = stats.get(names[id(t)], (None, None)) if stats else (None, None)
            view = _rows if axis == "rows" else _cols
            out.append(Slice(view(t.detach(), units), view(g, units), view(f, units)))
    return units, out


def unit_scores(fam: ModelFamily, i: int, kind: str, imp: Importance, stats=None) -> torch.Tensor:
    """Importance of every KV group (``kind='attn'``) or MLP channel (``kind='mlp'``) of layer i."""
    units, slices = _coupled(fam, i, stats, kind)
    total = torch.zeros(units, dtype=torch.float64)  # on the CPU: the ranking needs only a few numbers
    for s in slices:
        if imp.needs_grad and s.g is None:
            raise RankAdaptorError(f"importance {imp.name!r} needs gradients; none were computed for layer {i}")
        total += imp.score(s).double().cpu()
    return imp.finalize(total)
