"""A faster scorer for the same lm-eval requests.

lm-eval's HFLM runs every (context, continuation) pair as its own sequence and computes the LM
head on every position. Here the requests, their tokenisation and the per-document metrics all
still come from lm-eval (the task object's ``build_all_requests``, HFLM's ``_encode_pair`` /
``prefix_token_id``, the task's ``process_results``); only the log-likelihood computation differs:

* a document whose choices share a context runs that context once, repeats its KV cache for the
  choices and scores all continuations in one batch;
* a request whose context is its own (WinoGrande) is scored whole, batched across documents
  (left-padded, longest first);
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


@torch.no_grad()
def score_shared_context(model, ctx: list[int], conts: list[list[int]], device) -> list[tuple[float, bool]]:
    """(log-likelihood, is_greedy) of every continuation after one shared context."""
    out = model(input_ids=torch.tensor([ctx], device=device), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), -1)
    lls = [first[c[0]].item() for c in conts]
    greedy = [int(first.argmax()) == c[0] for c in conts]
    rest = max(len(c) for c in conts) - 1
    if rest > 0:
        n = len(conts)
        cache = out.past_key_values
        cache.batch_repeat_interleave(n)
        # inputs are the continuation tokens but the last, right-padded; targets are tokens 1..L-1
        inp = torch.zeros((n, rest), dtype=torch.long, device=device)
        mask = torch.zeros((n, len(ctx) + rest), dtype=torch.long, device=device)
        mask[:, :len(ctx)] = 1
        for i, c in enumerate(conts):
            inp[i, :len(c) - 1] = torch.tensor(c[:-1])
            mask[i, len(ctx):len(ctx) + len(c) - 1] = 1
        logits = model(input_ids=inp, attention_mask=mask, past_key_values=cache, use_cache=True).logits
        logp = torch.log_softmax(logits.float(), -1)
        for i, c in enumerate(conts):
            if len(c) > 1:
                ll, is_greedy = _score(logp[i, :len(c) - 1], c[1:])
                lls[i] += ll
                greedy[i] = greedy[i] and is_greedy
    return list(zip(lls, greedy, strict=True))


# Choices that share a context run it once (measured at 1 thread on SmolLM2, 30 docs: PIQA 9.2 s
# vs 12.8 s, HellaSwag 10.2 s vs 14.8 s, ARC-e 6.7 s vs 11.0 s against batching whole sequences);
# requests whose context is their own (WinoGrande) are batched across documents instead
# (7.3 s -> 4.8 s). Tests set this to 0 / a huge value to check both paths against HFLM.
SHARE_MIN_CONTEXT = 1
BATCH_TOKENS = 4096  # padded tokens per batched forward pass


@torch.no_grad()
def score_batch(model, pairs: list[tuple[list[int], list[int]]], device) -> list[tuple[float, bool]]:
    """(log-likelihood, is_greedy) of whole (context, continuation) sequences in one padded pass.

    Left padding with explicit positions puts every continuation at the end of its row, so the LM
    head runs only on the last max(len(cont)) positions.
    """
    seqs = [(ctx + cont)[:-1] for ctx, cont in pairs]
    width, keep = max(map(len, seqs)), max(len(cont) for _, cont in pairs)
    inp = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros_like(inp)
    pos = torch.zeros_like(inp)
    for i, s in enumerate(seqs):
        inp[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
        pos[i, width - len(s):] = torch.arange(len(s))
    logits = model(input_ids=inp.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                   logits_to_keep=keep).logits
    out = []
    for i, (_, cont) in enumerate(pairs):
        out.append(_score(torch.log_softmax(logits[i, keep - len(cont):].float(), -1), cont))
    return out


def score_documents(lm, model, documents, device, progress=None) -> list[list[tuple[float, bool]]]:
    """Scores of every document's requests (lm-eval's choice order), sharing or batching per document."""
    results: list[list] = []
    batched: list[tuple[int, int, list[int], list[int]]] = []  # (doc, request, ctx, cont)

    def finished(d: int) -> None:  # one progress step per document, once all its requests are scored
        if progress is not None and not any(r is None for r in results[d]):
            progress.update(1)

    for d, instances in enumerate(documents):
        encoded = [encode(lm, *inst.args) for inst in instances]
        results.append([None] * len(encoded))
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (ctx, cont) in enumerate(encoded):
            if len(ctx) + len(cont) > lm.max_length + 1 or not cont:
                results[d][i] = _full_sequence(model, ctx, cont, lm.max_length, device)
            else:
                groups[tuple(ctx)].append(i)
        for ctx, idx in groups.items():
            if len(idx) > 1 and len(ctx) >= SHARE_MIN_CONTEXT:
                scores = score_shared_context(model, list(ctx), [encoded[i][1] for i in idx], device)
                for i, r in zip(idx, scores, strict=True):
                    results[d][i] = r
            else:
                batched += [(d, i, list(ctx), encoded[i][1]) for i in idx]
        finished(d)
    # longest first, so that each batch pads little and memory peaks early
    batched.sort(key=lambda b: -(len(b[2]) + len(b[3])))
    start = 0
    while start < len(batched):
        width = len(batched[start][2]) + len(batched[start][3])
        chunk = batched[start:start + max(1, BATCH_TOKENS // width)]
        for (d, i, _, _), r in zip(chunk, score_batch(model, [(c, x) for _, _, c, x in chunk], device), strict=True):
            results[d][i] = r
            finished(d)
        start += len(chunk)
    return results


def score_document(lm, model, instances, device) -> list[tuple[float, bool]]:
    """Scores of one document's requests in lm-eval's choice order."""
    return score_documents(lm, model, [instances], device)[0]


def run_task_fast(lm, tokenizer, task_name: str, workdir: Path) -> tuple[list[dict], float, int]:
    """Per-document lm-eval metrics, wall seconds and scored tokens for the task files in ``workdir``."""
    start = time.perf_counter()
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
    wall = time.perf_counter() - start
    n_tokens = sum(len(tokenizer(c + x, add_special_tokens=False)["input_ids"])
                   for instances in docs for c, x in (inst.args for inst in instances))
    return per_doc, wall, n_tokens
