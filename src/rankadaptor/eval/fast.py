"""A faster scorer for the same lm-eval requests: each document's context is run once.

lm-eval's HFLM runs every (context, continuation) pair as its own sequence, so a four-choice
question pays for its context four times. Here the requests, their tokenisation and the per-
document metrics all still come from lm-eval (the task object's ``build_all_requests``, HFLM's
``_encode_pair`` / ``prefix_token_id``, the task's ``process_results``); only the log-likelihood
computation differs: the shared context goes through the model once, its KV cache is repeated
for the choices, and all continuations of the document are scored in one batch. Results agree
with ``simple_evaluate`` to float rounding (tests compare acc/acc_norm on the same documents).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

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


@torch.no_grad()
def _full_sequence(model, ctx: list[int], cont: list[int], max_length: int, device) -> tuple[float, bool]:
    # lm-eval's own rule for over-long requests: keep the last max_length + 1 tokens, drop the final one
    inp = torch.tensor([(ctx + cont)[-(max_length + 1):][:-1]], device=device)
    # only the continuation's positions are scored: the LM head (a fifth of a small model's FLOPs
    # per token) is skipped on the context
    logits = model(input_ids=inp, logits_to_keep=len(cont)).logits
    logp = torch.log_softmax(logits[0, -len(cont):].float(), -1)
    target = torch.tensor(cont, device=device)
    return logp.gather(1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


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
                target = torch.tensor(c[1:], device=device)
                lp = logp[i, :len(c) - 1]
                lls[i] += lp.gather(1, target[:, None]).sum().item()
                greedy[i] = greedy[i] and bool((lp.argmax(-1) == target).all())
    return list(zip(lls, greedy, strict=True))


def score_document(lm, model, instances, device) -> list[tuple[float, bool]]:
    """Scores of one document's requests in lm-eval's choice order."""
    encoded = [encode(lm, *inst.args) for inst in instances]
    results: list[tuple[float, bool] | None] = [None] * len(encoded)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, (ctx, cont) in enumerate(encoded):
        if len(ctx) + len(cont) > lm.max_length + 1 or not cont:
            results[i] = _full_sequence(model, ctx, cont, lm.max_length, device)
        else:
            groups[tuple(ctx)].append(i)
    for ctx, idx in groups.items():
        if len(idx) == 1:  # nothing to share (e.g. WinoGrande's per-choice contexts): one plain pass
            results[idx[0]] = _full_sequence(model, list(ctx), encoded[idx[0]][1], lm.max_length, device)
            continue
        for i, r in zip(idx, score_shared_context(model, list(ctx), [encoded[i][1] for i in idx], device), strict=True):
            results[i] = r
    return results  # type: ignore[return-value]


def run_task_fast(lm, tokenizer, task_name: str, workdir: Path) -> tuple[list[dict], float, int]:
    """Per-document lm-eval metrics, wall seconds and scored tokens for the task files in ``workdir``."""
    start = time.perf_counter()
    task, docs = lm_eval_requests(task_name, workdir)
    model = lm.model
    device = next(model.parameters()).device
    per_doc = []
    for instances in tqdm(docs, desc=task_name, leave=False):
        scores = score_document(lm, model, instances, device)
        metrics = task.process_results(instances[0].doc, scores)
        per_doc.append({"acc": float(metrics["acc"]), "acc_norm": float(metrics.get("acc_norm", metrics["acc"]))})
    wall = time.perf_counter() - start
    n_tokens = sum(len(tokenizer(c + x, add_special_tokens=False)["input_ids"])
                   for instances in docs for c, x in (inst.args for inst in instances))
    return per_doc, wall, n_tokens
