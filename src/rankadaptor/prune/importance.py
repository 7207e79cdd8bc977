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
from rankadaptor.models.families import ModelFamily, get_family

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
        return (s.g * s.w).abs_().sum(1)  # in place: one float32 copy of the slice, not two


class Element2(Importance):
    """Second-order Taylor (Eq. 2): Σ |g·w − ½·w²·F| with F the per-sample squared gradients."""

    name, needs_grad, needs_fisher = "element2", True, True

    def score(self, s):
        return (s.g * s.w - 0.5 * s.w * s.w * s.f).abs_().sum(1)


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


@dataclass
class LayerGradients:
    """What ``layer_gradients`` returns: one ``reduce`` result per block, and what it held at most."""

    results: dict[int, object]
    peak_gradient_bytes: int  # one block's mean-gradient (+ Fisher) sums and one sequence's gradients
    cache_bytes: int  # every block's input for every sequence, plus the gradients flowing down


def layer_gradients(model, batches: torch.Tensor, layers: range, fisher: bool, reduce) -> LayerGradients:
    """Gradient statistics of each decoder block in ``layers``, turned into scores and freed block by block.

    For block ``i``, ``reduce(i, stats)`` gets ``stats = {parameter name: (g, F)}``: ``g`` the mean over
    calibration sequences of the gradient of each sequence's mean next-token loss, ``F`` the mean of
    the per-sequence squared gradients (empirical Fisher diagonal, LLM-Pruner's second-order term;
    ``None`` without ``fisher``). Its result is kept and the statistics are dropped before the next block.

    Why block by block (issue 17, lean Taylor): the straightforward way, one backward pass per
    sequence with every parameter's gradient, its running sum and its running square alive, needs
    the model plus up to three model-sized buffers (LLM-Pruner users report ~80 GB for LLaMA-7B).
    Here one forward pass per sequence without autograd records each block's input; the loss's
    gradient with respect to the last block's output comes from the model's own loss; then the
    blocks are replayed from the top down, one sequence at a time, each replay giving the block's
    parameter gradients and the gradient for the block below (gradient checkpointing at block
    granularity). Only one block's statistics exist at a time: memory is the model, the cached
    block inputs (blocks x sequences x tokens x hidden) and one block's gradients. The per-sequence
    gradients, their sums and squares are the same numbers, summed in the same order, as before.
    """
    fam = get_family(model)
    n = fam.n_layers
    if not 0 <= layers.start < layers.stop <= n:
        raise RankAdaptorError(f"layer range {layers.start}:{layers.stop} is outside the model's {n} layers")
    batches = dev.move(batches, dev.model_device(model))  # calibration text is tokenized on the CPU
    names = {id(p): name for name, p in model.named_parameters()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        inputs, calls, upstream = _record_block_inputs(model, fam, batches, layers.start)
        cache_bytes = sum(t.nbytes for ts in inputs.values() for t in ts) + sum(t.nbytes for t in upstream)
        results, peak = {}, 0
        for i in reversed(range(layers.start, n)):  # blocks above the range only pass the gradient down
            params = [p for p in fam.layers[i].parameters()] if i in layers else []
            for p in params:
                p.requires_grad_(True)
            sums = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params]
            squares = [torch.zeros_like(s) for s in sums] if fisher else None
            # the sums (and squares), plus one sequence's gradients while they are added in
            peak = max(peak, sum(s.nbytes for s in sums) * (2 if fisher else 1) + sum(p.nbytes for p in params))
            args, kwargs = calls[i]
            for k, hidden in enumerate(inputs.pop(i)):
                upstream[k] = _replay(fam.layers[i], hidden, args, kwargs, upstream[k], params, sums, squares)
            for p in params:
                p.requires_grad_(False)
            if i in layers:
                results[i] = reduce(i, _means(names, params, sums, squares, len(batches)))
            # Why: nothing may keep this block's statistics alive into the next block's replay: at
            # LLaMA-7B width one block's float32 sums are 0.75 GiB (measured: a lingering reference
            # added them to every block after the first, +1.1 GiB of peak with the sequence gradients)
            del sums, squares
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = None
        model.train(was_training)
    log.info("layer-wise gradients: peak %.1f MB of gradient statistics, %.1f MB of cached block inputs",
             peak / 2**20, cache_bytes / 2**20)
    return LayerGradients(results=results, peak_gradient_bytes=peak, cache_bytes=cache_bytes)


def _replay(block, hidden, args, kwargs, upstream, params, sums, squares) -> torch.Tensor:
    """One block forward and backward on one sequence: its parameters' gradients added into ``sums``
    (and their squares into ``squares``); returns the gradient for the block below. A function of its
    own so that the sequence's gradients are freed on return, before the next sequence's exist."""
    hidden = hidden.requires_grad_(True)
    out = block(hidden, *args, **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    grads = torch.autograd.grad(out, [hidden, *params], grad_outputs=upstream, allow_unused=True)
    for j, g in enumerate(grads[1:]):
        if g is None:
            continue
        _add_into(sums[j], g)
        if squares is not None:
            _add_into(squares[j], g * g)
    return grads[0]


def _add_into(total: torch.Tensor, g: torch.Tensor, rows: int = 256) -> None:
    """``total += g`` a few rows at a time: a float32 sum plus a bfloat16 gradient in one call first
    makes a float32 copy of the whole gradient (measured: +172 MiB for one 4096 x 11008 weight)."""
    for part, add in zip(total.split(rows), g.split(rows)):
        part.add_(add)


def _means(names, params, sums, squares, count: int) -> dict:
    """{parameter name: (mean gradient, mean squared gradient or None)}, divided in place: no second
    copy of the block's statistics."""
    return {names[id(p)]: (sums[j].div_(count), squares[j].div_(count) if squares is not None else None)
            for j, p in enumerate(params)}


def _record_block_inputs(model, fam: ModelFamily, batches: torch.Tensor, start: int):
    """One pass per sequence: each block's input (blocks ``start``..end), the arguments every block
    was called with (the same for every sequence: equal lengths, no padding), and the loss's
    gradient with respect to the last block's output, taken from the model's own loss."""
    inputs: dict[int, list[torch.Tensor]] = {i: [] for i in range(start, fam.n_layers)}
    calls: dict[int, tuple] = {}
    upstream: list[torch.Tensor] = []
    top: list[torch.Tensor] = []

    def record(i):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            inputs[i].append(hidden.detach())
            if i not in calls:
                calls[i] = (args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"})
        return hook

    def detach_top(module, args, kwargs):
        # the final norm's input becomes a leaf: the backward pass stops here, at the last block's output
        hidden = args[0] if args else kwargs["hidden_states"]
        leaf = hidden.detach().requires_grad_(True)
        top.append(leaf)
        return ((leaf, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": leaf})

    handles = [fam.layers[i].register_forward_pre_hook(record(i), with_kwargs=True) for i in inputs]
    handles.append(fam.backbone.norm.register_forward_pre_hook(detach_top, with_kwargs=True))
    try:
        for row in batches:
            ids = row.unsqueeze(0)
            with torch.enable_grad():
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                loss.backward()
            upstream.append(top.pop().grad)
    finally:
        for h in handles:
            h.remove()
    return inputs, calls, upstream


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
