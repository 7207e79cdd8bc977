"""A faster scorer for the same lm-eval requests.

lm-eval's HFLM runs every (context, continuation) pair as its own sequence and computes the LM
head on every position. Here the requests, their tokenisation and the per-document metrics all
still come from lm-eval (the task object's ``build_all_requests``, HFLM's ``_encode_pair`` /
``prefix_token_id``, the task's ``process_results``); only the log-likelihood computation differs:

* the requests of one document share a token prefix (the context for multiple choice and more
  when every choice starts alike, the words before the blank for WinoGrande): it runs once, and
  every request's remainder is scored against its cached keys/values;
* documents are batched across documents in groups: the prefixes in chunks of similar length
  (right-padded, no mask), then the remainders in chunks of similar length, each chunk with its
  documents' cached prefixes re-assembled (padding the cache costs attention only); a one-token
  continuation needs no remainder pass;
* the LM head runs only on the positions that are scored.

Results agree with ``simple_evaluate`` to float rounding (tests compare acc/acc_norm on the same
documents, and each path's log-likelihoods with HFLM's).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm
from transformers.cache_utils import DynamicCache, DynamicLayer

from rankadaptor.checks import BROKEN_OUTPUTS, finite

log = logging.getLogger(__name__)


def lm_eval_requests(task_name: str, workdir: Path):
    """lm-eval's task object for the task files in ``workdir``, with its requests built."""
    from lm_eval.tasks import TaskManager, get_task_dict

    task = get_task_dict([task_name], TaskManager(include_path=str(workdir), include_defaults=False))[task_name]
    task.set_config(key="num_fewshot", value=0)
    task.build_all_requests(limit=None, rank=0, world_size=1)
    by_doc = defaultdict(list)
    for inst in task.instances:
        by_doc[inst.doc_id].append(inst)
    return task, [sorted(by_doc[d], key=lambda i: i.idx) for d in sorted(by_doc)]


def encode(lm, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Exactly HFLM's tokenisation of one request (including the empty-context rule)."""
    if context == "":
        cont = lm.tok_encode(continuation, add_special_tokens=False)
        return ([lm.prefix_token_id], cont) if lm.prefix_token_id != cont[0] else (cont[:1], cont[1:])
    return lm._encode_pair(context, continuation)


def _score(logp: torch.Tensor, cont: list[int]) -> tuple[float, bool]:
    """(sum of log-probabilities of ``cont``, whether each token is the argmax) from its log-softmax rows."""
    target = torch.tensor(cont, device=logp.device)
    return logp.gather(1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


@torch.no_grad()
def _full_sequence(model, ctx: list[int], cont: list[int], max_length: int, device) -> tuple[float, bool]:
    # lm-eval's own rule for over-long requests: keep the last max_length + 1 tokens, drop the final one
    inp = torch.tensor([(ctx + cont)[-(max_length + 1):][:-1]], device=device)
    # only the continuation's positions are scored: the LM head (a fifth of a small model's FLOPs
    # per token) is skipped on the context
    logits = model(input_ids=inp, logits_to_keep=len(cont)).logits
    return _score(torch.log_softmax(logits[0, -len(cont):].float(), -1), cont)


# Tests set PREFIX_SHARING = False to score whole sequences (one padded forward of context +
# continuation per request, chunked by length) and small BATCH_TOKENS to force many chunks, and
# compare every path with HFLM.
PREFIX_SHARING = True
BATCH_TOKENS = 1024  # padded tokens per forward pass (1 thread: larger batches were slower)
# what one more forward pass costs, in tokens: SmolLM2-135M on one CPU thread takes ~95 ms per pass plus
# ~1.6 ms per token (the weights' memory traffic, then compute), so a pass is worth ~60 tokens of padding
FORWARD_OVERHEAD_TOKENS = 64
GROUP_DOCS = 64  # documents whose prefixes and remainders are sorted and chunked together


class _Forward:
    """Log-softmax rows at chosen positions only: the decoder, then the LM head on those positions
    (a fifth of a small model's FLOPs per token is the LM head). Falls back to the whole model's
    logits when the head is not a plain projection of the decoder's output (logit soft-capping)."""

    def __init__(self, model, device):
        self.model, self.device = model, device
        self.body, self.head = model.get_decoder(), model.get_output_embeddings()
        probe = torch.tensor([[1, 2, 3]], device=device)
        out = model(input_ids=probe, use_cache=True)
        if self.body is None or self.head is None or not torch.allclose(
                self.head(self.body(input_ids=probe).last_hidden_state), out.logits, atol=1e-4):
            self.body = None
        # cached prefixes are re-assembled as plain per-layer key/value tensors: only for caches that
        # are exactly that (no sliding-window or recurrent layers); otherwise whole sequences are scored
        self.plain_cache = isinstance(out.past_key_values, DynamicCache) and all(
            type(layer) is DynamicLayer for layer in out.past_key_values.layers)

    def __call__(self, inp, positions: list[tuple[int, int]], use_cache: bool, **kwargs):
        rows, cols = [r for r, _ in positions], [c for _, c in positions]
        if self.body is not None:
            out = self.body(input_ids=inp, use_cache=use_cache, **kwargs)
            logits = self.head(out.last_hidden_state[rows, cols])
        else:
            out = self.model(input_ids=inp, use_cache=use_cache, **kwargs)
            logits = out.logits[rows, cols]
        return torch.log_softmax(logits.float(), -1), out.past_key_values


def _shared_prefix(seqs: list[list[int]]) -> int:
    n, cap = 0, min(map(len, seqs))
    while n < cap and all(s[n] == seqs[0][n] for s in seqs):
        n += 1
    return n


class _Tally:
    """(log-likelihood, all greedy) per request, summed over the scored tokens of every pass."""

    def __init__(self):
        self.scores: dict[tuple[int, int], list] = {}
        self.wanted: dict[tuple[int, int], list[tuple[tuple[int, int], int]]] = {}  # position -> [(request, target)]

    def want(self, position: tuple[int, int], request: tuple[int, int], target: int) -> None:
        self.wanted.setdefault(position, []).append((request, target))

    def positions(self) -> list[tuple[int, int]]:
        return list(self.wanted)

    def add(self, logp: torch.Tensor) -> None:
        """``logp``: one log-softmax row per position of ``positions()``, in that order."""
        best = logp.argmax(-1).tolist()
        for i, (position, asks) in enumerate(self.wanted.items()):
            for request, target in asks:
                entry = self.scores.setdefault(request, [0.0, True])
                entry[0] += logp[i, target].item()
                entry[1] = entry[1] and best[i] == target
        self.wanted = {}


def _chunks(items: list, length, budget: int, overhead: int | None = None) -> list[list]:
    """Consecutive runs of ``items`` (sorted longest first), each of padded size rows x longest <= budget,
    that minimise padded tokens + ``overhead`` per run (one forward pass each).

    Filling every run up to the budget pads short items to the longest in their run: on the short
    tasks that was 40-57 % of the tokens a pass computed. Cutting where lengths drop costs a forward
    pass instead, which on CPU costs about as much as ``overhead`` tokens (the weights are streamed
    from memory once per pass). A dynamic programme over the cut points finds the cheapest runs.
    """
    overhead = FORWARD_OVERHEAD_TOKENS if overhead is None else overhead
    n = len(items)
    lengths = [max(1, length(x)) for x in items]
    best, cut = [0] + [float("inf")] * n, [0] * (n + 1)  # best[j]: cheapest cost of items[:j]
    for i in range(n):  # a run starting at i is as wide as items[i]
        rows = max(1, budget // lengths[i])
        for j in range(i + 1, min(n, i + rows) + 1):
            cost = best[i] + (j - i) * lengths[i] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out, j = [], n
    while j > 0:
        out.append(items[cut[j]:j])
        j = cut[j]
    return out[::-1]


@torch.no_grad()
def _score_group(forward: _Forward, docs: list[tuple[int, list[tuple[list[int], list[int]]]]], sharing: bool,
                 device) -> dict[tuple[int, int], tuple[float, bool]]:
    """Scores of the requests of ``docs`` = [(doc index, [(ctx, cont) per request])].

    Input position q of a request predicts its token q + 1; the scored positions are
    len(ctx) - 1 .. len(ctx) + len(cont) - 2. Positions inside the document's shared prefix (length P,
    the same tokens for every request) are read from the prefix pass, the others from the remainder
    pass. Each pass is cut into chunks of similar length (prefixes sorted by P, remainders by their
    own length), so padding stays small; a remainder chunk gets its documents' cached prefixes
    right-padded to the chunk's longest, masked (padding the cache costs attention only).
    """
    inputs = [[(c + x)[:-1] for c, x in reqs] for _, reqs in docs]
    prefixes = [_shared_prefix(seqs) if sharing and len(seqs) > 1 else 0 for seqs in inputs]
    rem = sorted(((r, j, seq[p:]) for r, (seqs, p) in enumerate(zip(inputs, prefixes)) for j, seq in enumerate(seqs)
                  if len(seq) > p), key=lambda x: -len(x[2]))
    # kv: document row -> its prefix's keys/values, one (2, heads, P, dim) tensor per layer; a list,
    # not one stacked tensor, because width pruning leaves layers with different head counts
    tally, kv = _Tally(), {}
    needs_cache = {r for r, _, _ in rem}
    rows = sorted((r for r, p in enumerate(prefixes) if p), key=lambda r: -prefixes[r])
    for chunk in _chunks(rows, lambda r: prefixes[r], BATCH_TOKENS):
        width = prefixes[chunk[0]]
        inp = torch.zeros((len(chunk), width), dtype=torch.long)  # right-padded: no mask needed
        for i, r in enumerate(chunk):
            p, (d, reqs) = prefixes[r], docs[r]
            inp[i, :p] = torch.tensor(inputs[r][0][:p])
            for j, (ctx, cont) in enumerate(reqs):
                for q in range(len(ctx) - 1, min(p, len(ctx) + len(cont) - 1)):
                    tally.want((i, q), (d, j), cont[q - len(ctx) + 1])
        keep = bool(needs_cache & set(chunk))
        logp, cache = forward(inp.to(device), tally.positions(), use_cache=keep)
        tally.add(logp)
        if keep:
            layers = [torch.stack([layer.keys, layer.values]) for layer in cache.layers]
            for i, r in enumerate(chunk):
                kv[r] = [layer[:, i, :, :prefixes[r]] for layer in layers]
    for chunk in _chunks(rem, lambda x: len(x[2]), BATCH_TOKENS):
        rest, width = len(chunk[0][2]), max(prefixes[r] for r, _, _ in chunk)
        inp = torch.zeros((len(chunk), rest), dtype=torch.long)
        mask = torch.zeros((len(chunk), width + rest), dtype=torch.long)
        pos = torch.zeros((len(chunk), rest), dtype=torch.long)
        past = None
        if width:
            past = [layer.new_zeros((2, len(chunk), layer.shape[1], width, layer.shape[3]))
                    for layer in next(iter(kv.values()))]
        for i, (r, j, tokens) in enumerate(chunk):
            p, (d, reqs) = prefixes[r], docs[r]
            ctx, cont = reqs[j]
            inp[i, :len(tokens)] = torch.tensor(tokens)
            mask[i, :p] = 1
            mask[i, width:width + len(tokens)] = 1
            pos[i] = p + torch.arange(rest)
            if p:
                for layer, prefix in zip(past, kv[r]):
                    layer[:, i, :, :p] = prefix
            for q in range(max(len(ctx) - 1, p), len(ctx) + len(cont) - 1):
                tally.want((i, q - p), (d, j), cont[q - len(ctx) + 1])
        kwargs = {"attention_mask": mask.to(device), "position_ids": pos.to(device)}
        if past is not None:
            kwargs["past_key_values"] = DynamicCache(ddp_cache_data=[(layer[0], layer[1]) for layer in past])
        logp, _ = forward(inp.to(device), tally.positions(), use_cache=False, **kwargs)
        tally.add(logp)
    return {key: (v[0], bool(v[1])) for key, v in tally.scores.items()}


def score_documents(lm, model, documents, device, progress=None) -> list[list[tuple[float, bool]]]:
    """Scores of every document's requests (lm-eval's choice order), batched across documents."""
    forward = _Forward(model, device)
    sharing = PREFIX_SHARING and forward.plain_cache
    results: list[list] = []
    todo: list[tuple[int, list[tuple[list[int], list[int]]]]] = []
    for d, instances in enumerate(documents):
        encoded = [encode(lm, *inst.args) for inst in instances]
        results.append([None] * len(encoded))
        if any(len(c) + len(x) > lm.max_length + 1 or not x for c, x in encoded):
            # lm-eval's truncation of over-long requests: scored one by one, as HFLM does
            results[d] = [_full_sequence(model, c, x, lm.max_length, device) for c, x in encoded]
            if progress is not None:
                progress.update(1)
        else:
            todo.append((d, encoded))
    # groups of documents of similar length (longest first, so memory peaks early), each scored in
    # chunks sorted inside the group
    todo.sort(key=lambda t: -max(len(c) + len(x) for c, x in t[1]))
    for group in (todo[i:i + GROUP_DOCS] for i in range(0, len(todo), GROUP_DOCS)):
        for (d, j), score in _score_group(forward, group, sharing, device).items():
            results[d][j] = score
        if progress is not None:
            progress.update(len(group))
    return results


def run_task_fast(lm, tokenizer, task_name: str, workdir: Path) -> tuple[list[dict], float, float, int]:
    """Per-document lm-eval metrics, wall and CPU seconds and scored tokens for the task files in ``workdir``."""
    start, cpu = time.perf_counter(), time.process_time()
    task, docs = lm_eval_requests(task_name, workdir)
    model = lm.model
    device = next(model.parameters()).device
    with tqdm(total=len(docs), desc=task_name, leave=False) as progress:
        scores = score_documents(lm, model, docs, device, progress)
    per_doc = []
    for d, (instances, doc_scores) in enumerate(zip(docs, scores, strict=True)):
        for ll, _ in doc_scores:  # a NaN log-likelihood still "picks" a choice: it must not become an accuracy
            finite(ll, f"{task_name} document {d}: a log-likelihood", BROKEN_OUTPUTS)
        metrics = task.process_results(instances[0].doc, doc_scores)
        per_doc.append({"acc": float(metrics["acc"]), "acc_norm": float(metrics.get("acc_norm", metrics["acc"]))})
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    n_tokens = sum(len(tokenizer(c + x, add_special_tokens=False)["input_ids"])
                   for instances in docs for c, x in (inst.args for inst in instances))
    return per_doc, wall, cpu, n_tokens
