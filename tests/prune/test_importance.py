"""Lean Taylor importance (issue 17): block-by-block gradients give the scores of the all-gradients way.

The reference below is the previous implementation (one full backward pass per calibration
sequence, every gradient, running sum and running square alive at once), kept here as the
definition the lean one must reproduce.
"""

from __future__ import annotations

import pytest
import torch

from rankadaptor.models.families import get_family
from rankadaptor.prune import depth
from rankadaptor.prune.importance import calibration_batches, get_importance, layer_gradients, unit_scores
from rankadaptor.prune.pruning import PruneConfig, prune_model
from tests.prune.helpers import TEXTS, tiny_family
from tests.tiny_models import tiny_tokenizer


def reference_stats(model, batches, fisher, only):
    """Mean per-sequence gradient and mean squared per-sequence gradient of ``only``'s parameters."""
    wanted = {id(p) for m in only for p in m.parameters()}
    params = {n: p for n, p in model.named_parameters() if id(p) in wanted}
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    squares = {n: torch.zeros_like(p) for n, p in params.items()}
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)
    for row in batches:
        loss = model(input_ids=row[None], labels=row[None]).loss
        loss.backward()
        for n, p in params.items():
            sums[n] += p.grad
            squares[n] += p.grad * p.grad
            p.grad = None
    for p in model.parameters():
        p.requires_grad_(True)
    k = len(batches)
    return {n: (sums[n] / k, squares[n] / k if fisher else None) for n in params}


def _batches(n=3, seq_len=16):
    return calibration_batches(tiny_tokenizer(), TEXTS, n, seq_len)


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # GQA + tied embeddings; q/k/v biases + untied head
@pytest.mark.parametrize("name", ["element1", "element2", "vector"])
def test_lean_scores_equal_all_gradient_scores(family, name):
    model = tiny_family(family, num_hidden_layers=5)
    fam, imp, batches, layers = get_family(model), get_importance(name), _batches(), range(1, 4)
    ref = reference_stats(model, batches, imp.needs_fisher, [fam.layers[i] for i in layers])
    lean = layer_gradients(model, batches, layers, fisher=imp.needs_fisher,
                           reduce=lambda i, stats: {k: unit_scores(fam, i, k, imp, stats) for k in ("attn", "mlp")})
    assert sorted(lean.results) == list(layers)
    for i in layers:
        for kind in ("attn", "mlp"):
            expected = unit_scores(fam, i, kind, imp, ref)
            assert torch.allclose(lean.results[i][kind], expected, rtol=1e-5, atol=1e-9), (i, kind)
    # only one block's statistics were ever alive, and the flags are as they were
    block = sum(p.numel() for p in fam.layers[1].parameters()) * 4
    assert lean.peak_gradient_bytes == block * (3 if imp.needs_fisher else 2)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["element1", "element2", "vector"])
def test_pruning_keeps_the_units_the_reference_scores_keep(name):
    """End to end: the kept KV groups and channels are the ones the all-gradient scores choose."""
    from rankadaptor.prune import width

    base = tiny_family("llama", num_hidden_layers=5)
    cfg = PruneConfig(ratio=0.3, importance=name, layers=(1, 4), calibration=3, seq_len=16)
    _, manifest = prune_model(base, tiny_tokenizer(), cfg, TEXTS)
    fam, imp = get_family(base), get_importance(name)
    ref = reference_stats(base, _batches(), imp.needs_fisher, [fam.layers[i] for i in range(1, 4)])
    plan = width.plan_width(fam, 0.3, range(1, 4))
    scores = {i: {k: unit_scores(fam, i, k, imp, ref) for k in ("attn", "mlp")} for i in range(1, 4)}
    keep = width.choose_units(fam, plan, imp, scores)
    for i in range(1, 4):
        assert manifest["layers"][i]["kept_kv_groups"] == keep[i]["kv_groups"]
        assert manifest["layers"][i]["kept_channels"] == keep[i]["channels"]
    assert manifest["calibration"]["peak_gradient_bytes"] > 0


def test_taylor_block_scores_equal_all_gradient_scores():
    model = tiny_family("mistral", num_hidden_layers=5)
    fam, batches, layers = get_family(model), _batches(), range(1, 4)
    ref = reference_stats(model, batches, False, [fam.layers[i] for i in layers])
    weights = dict(model.named_parameters())
    expected = {i: sum(float((ref[n][0] * weights[n].detach()).abs().sum())
                       for n, _ in fam.layers[i].named_parameters(prefix=f"model.layers.{i}")) for i in layers}
    got = depth.TaylorPlusScore().scores(fam, layers, batches)
    assert got.keys() == expected.keys()
    for i in layers:
        assert got[i] == pytest.approx(expected[i], rel=1e-5)


def test_layer_gradients_refuses_a_range_outside_the_model():
    from rankadaptor.errors import RankAdaptorError

    model = tiny_family("llama")
    with pytest.raises(RankAdaptorError, match="outside the model's 4 layers"):
        layer_gradients(model, _batches(), range(2, 9), fisher=False, reduce=lambda i, s: None)


def _live_gradients(shapes: set, dtype) -> int:
    """Live tensors (not parameters) of ``dtype`` shaped like one of ``shapes``: a block's gradients."""
    import gc

    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and not isinstance(o, torch.nn.Parameter)
               and o.dtype == dtype and tuple(o.shape) in shapes)


@pytest.mark.parametrize("fisher", [False, True])
def test_only_one_blocks_statistics_and_one_sequences_gradients_are_alive(fisher):
    """Lean Taylor's memory: when a block is replayed no earlier sequence's gradients exist, and when it is
    scored neither any sequence's gradients nor the previous block's statistics do (at LLaMA-7B width each
    of those is 0.4-0.75 GiB; keeping them made the prune peak grow 2.8x a layer's weights per layer)."""
    import weakref

    model = tiny_family("llama", num_hidden_layers=5).to(torch.bfloat16)
    fam, layers = get_family(model), range(1, 4)
    shapes = {tuple(p.shape) for p in fam.layers[1].parameters() if p.dim() == 2}
    seen = {"replays": 0, "stale": [], "previous": []}

    def before_replay(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.requires_grad:  # the replay, not the recording pass
            seen["replays"] += 1
            seen["stale"].append(_live_gradients(shapes, torch.bfloat16))
            seen["stale"].append(sum(ref() is not None for ref in seen["previous"]))  # the block above's statistics

    def reduce(i, stats):
        seen["stale"].append(_live_gradients(shapes, torch.bfloat16))
        seen["previous"] = [weakref.ref(t) for g, f in stats.values() for t in (g, f) if t is not None]
        return i

    handles = [fam.layers[i].register_forward_pre_hook(before_replay, with_kwargs=True) for i in layers]
    try:
        lean = layer_gradients(model, _batches(), layers, fisher=fisher, reduce=reduce)
    finally:
        for h in handles:
            h.remove()
    assert sorted(lean.results) == list(layers) and seen["replays"] == 3 * len(_batches())
    assert seen["stale"] == [0] * (2 * seen["replays"] + len(layers))


@pytest.mark.skipif(not __import__("pathlib").Path("/proc/self/clear_refs").exists(),
                    reason="CPU peak memory is measured on Linux")
def test_adding_a_bfloat16_gradient_into_float32_sums_makes_no_float32_copy():
    from rankadaptor.estimate import PeakMemory
    from rankadaptor.prune.importance import _add_into

    total, g = torch.zeros(4096, 2816), torch.randn(4096, 2816).to(torch.bfloat16)  # sums of 46 MiB
    expected = total + g.float()
    with PeakMemory("cpu") as peak:
        _add_into(total, g)
    assert torch.equal(total, expected)
    assert peak.bytes < total.nbytes / 4, peak.bytes  # `total += g` measured one full float32 copy
