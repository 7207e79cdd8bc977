"""How to cut, in depth: remove whole decoder blocks (Shortened LLaMA, ShortGPT).

Block scores (lower = less needed, removed first), each a small class in ``BLOCK_SCORERS``:

* ``shortened-ppl``: calibration perplexity of the model with that one block skipped
  (Kim et al., "Shortened LLaMA", PPL criterion; one-shot);
* ``shortened-taylor``: Taylor+ block score, Σ |g·w| over every weight of the block;
  the "+" is the protected first/last blocks, which the layer range provides;
* ``shortgpt``: block influence 1 − cos(h_in, h_out), averaged over calibration tokens
  (Men et al., "ShortGPT").

R decides how many blocks go: round(R · total parameters / parameters per block).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from rankadaptor import device as dev
from rankadaptor.errors import RankAdaptorError
from rankadaptor.models.families import ModelFamily
from rankadaptor.prune.importance import layer_gradients
from rankadaptor.prune.width import count_params

log = logging.getLogger(__name__)


def block_params(fam: ModelFamily, i: int) -> int:
    return sum(p.numel() for p in fam.layers[i].parameters())


def blocks_to_remove(fam: ModelFamily, ratio: float, layers: range) -> int:
    per_block = sum(block_params(fam, i) for i in layers) / max(len(layers), 1)
    n = int(round(ratio * count_params(fam.model) / per_block)) if per_block else 0
    if n >= len(layers):
        raise RankAdaptorError(
            f"--ratio {ratio} would remove {n} blocks, but layers {layers.start}:{layers.stop} hold only "
            f"{len(layers)}; lower --ratio or widen --layers"
        )
    return n


def _skip_hook(module, args, kwargs, output):
    # a forward hook that returns the block's input as its output: the block is skipped
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


@torch.no_grad()
def _mean_loss(model, batches: torch.Tensor) -> float:
    return sum(float(model(input_ids=row[None], labels=row[None]).loss) for row in batches) / len(batches)


class BlockScorer:
    name = ""
    needs_grad = False

    def scores(self, fam: ModelFamily, layers: range, batches: torch.Tensor) -> dict[int, float]:
        raise NotImplementedError


class PerplexityScore(BlockScorer):
    name = "shortened-ppl"

    def scores(self, fam, layers, batches):
        out = {}
        for i in layers:
            handle = fam.layers[i].register_forward_hook(_skip_hook, with_kwargs=True)
            try:
                out[i] = math.exp(_mean_loss(fam.model, batches))
            finally:
                handle.remove()
        return out


class TaylorPlusScore(BlockScorer):
    name = "shortened-taylor"
    needs_grad = True

    def scores(self, fam, layers, batches):
        weights = dict(fam.model.named_parameters())

        def block_sum(i, stats):  # while block i's gradients exist (lean Taylor, issue 17)
            return sum(float((g * weights[name].detach()).abs().sum()) for name, (g, _) in stats.items())

        grads = layer_gradients(fam.model, batches, layers, fisher=False, reduce=block_sum)
        self.peak_gradient_bytes = grads.peak_gradient_bytes
        return grads.results


class BlockInfluenceScore(BlockScorer):
    name = "shortgpt"

    @torch.no_grad()
    def scores(self, fam, layers, batches):
        sums = {i: 0.0 for i in layers}
        count = 0
        captured: dict[int, tuple] = {}

        def hook(i):
            def fn(module, args, kwargs, output):
                h_in = args[0] if args else kwargs["hidden_states"]
                h_out = output[0] if isinstance(output, tuple) else output
                captured[i] = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)

            return fn

        handles = [fam.layers[i].register_forward_hook(hook(i), with_kwargs=True) for i in layers]
        try:
            for row in batches:
                fam.model(input_ids=row[None])
                for i in layers:
                    sums[i] += float((1 - captured[i]).sum())
                count += row.numel()
        finally:
            for h in handles:
                h.remove()
        return {i: s / count for i, s in sums.items()}


BLOCK_SCORERS: dict[str, type[BlockScorer]] = {
    cls.name: cls for cls in (PerplexityScore, TaylorPlusScore, BlockInfluenceScore)
}


def remove_blocks(fam: ModelFamily, removed: list[int]) -> None:
    """Drop blocks in place; fix the config and every block's ``layer_idx`` (the KV cache uses it)."""
    removed_set = set(removed)
    keep = [i for i in range(fam.n_layers) if i not in removed_set]
    fam.backbone.layers = nn.ModuleList([fam.layers[i] for i in keep])
    cfg = fam.config
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    fam.renumber_layers()


def prune_depth(fam: ModelFamily, method: str, ratio: float, layers: range, batches) -> dict:
    n = blocks_to_remove(fam, ratio, layers)
    scorer = BLOCK_SCORERS[method]()
    if batches is not None:  # calibration text is tokenized on the CPU
        batches = dev.move(batches, dev.model_device(fam.model))
    scores = scorer.scores(fam, layers, batches) if n else {}
    removed = sorted(sorted(scores, key=lambda i: (scores[i], i))[:n])
    remove_blocks(fam, removed)
    log.info("depth pruning (%s): removed blocks %s", method, removed)
    return {"block_scores": {str(i): s for i, s in scores.items()}, "removed_layers": removed,
            "peak_gradient_bytes": getattr(scorer, "peak_gradient_bytes", None)}
