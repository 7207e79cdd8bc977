"""Perplexity on held-out text.

Definition: every text is tokenised on its own (no special tokens); the token streams are
concatenated (an EOS token between texts when the tokenizer has one) and cut into
non-overlapping windows of ``seq_len`` tokens (the last, shorter window is kept if it has at
least two tokens). Each window is scored independently, so the first token of a window has no
context and is not predicted. The result is exp of the token-weighted mean negative
log-likelihood over all predicted tokens: exp(sum NLL / number of predicted tokens).
"""

from __future__ import annotations

import logging
import math

import torch
from tqdm import tqdm

from rankadaptor.checks import BROKEN_OUTPUTS, finite
from rankadaptor.errors import RankAdaptorError

log = logging.getLogger(__name__)


def token_stream(tokenizer, texts: list[str]) -> list[int]:
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for text in texts:
        if ids and eos is not None:
            ids.append(eos)
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


@torch.no_grad()
def perplexity(model, tokenizer, texts, seq_len: int = 256, max_tokens: int | None = None) -> float:
    """exp(token-weighted mean NLL) over non-overlapping ``seq_len`` windows (see module doc)."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(seq_len, int) or seq_len < 2:
        raise RankAdaptorError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    ids = token_stream(tokenizer, list(texts))
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise RankAdaptorError(f"perplexity needs at least 2 tokens of text, got {len(ids)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        for start in tqdm(range(0, len(ids), seq_len), desc="perplexity", leave=False):
            window = ids[start:start + seq_len]
            if len(window) < 2:
                continue
            x = torch.tensor([window], device=device)
            logits = model(input_ids=x).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum")
            total_nll += nll.item()
            total_tokens += len(window) - 1
    finally:
        model.train(was_training)
    mean_nll = finite(total_nll / total_tokens, "the perplexity's mean negative log-likelihood", BROKEN_OUTPUTS)
    ppl = finite(math.exp(mean_nll) if mean_nll < 700 else math.inf, "the perplexity", BROKEN_OUTPUTS)
    log.info("perplexity %.3f over %d predicted tokens (seq_len %d)", ppl, total_tokens, seq_len)
    return ppl
