"""Held-out perplexity: the one definition every caller uses.

Definition (``heldout_perplexity``): the text is the Brown corpus held-out split
(``rankadaptor.assets.text_corpus_path("heldout")``, every tenth Brown text), split into paragraphs
on blank lines (stripped, empty ones dropped). Each paragraph is tokenised on its own without
special tokens and the token lists are joined with one EOS token between paragraphs. The first
``n_tokens`` tokens of that stream are cut into non-overlapping windows of ``seq_len`` tokens (a
last, shorter window is kept when it has at least two tokens). Every window is scored on its own,
so its first token has no context and is not predicted. Perplexity is
exp(sum of the negative log-likelihoods / number of predicted tokens).

The result keeps each window's NLL sum and predicted-token count, so two models scored on the same
windows can be compared paired, window by window (``rankadaptor.eval.compare``), even from one seed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from rankadaptor.errors import RankAdaptorError

log = logging.getLogger(__name__)

DEFAULT_TOKENS = 16384
DEFAULT_SEQ_LEN = 256
WINDOWS_PER_PASS = 8  # full windows scored in one forward pass (same length: no padding)


@dataclass(frozen=True)
class Perplexity:
    """exp(nll_sum / tokens) over ``len(window_nll)`` windows; ``tokens`` counts predicted tokens."""

    ppl: float
    nll_sum: float
    tokens: int
    seq_len: int
    n_tokens: int  # tokens of text scored (predicted tokens + one per window)
    window_nll: tuple[float, ...]
    window_tokens: tuple[int, ...]
    source: str | None = None

    def to_dict(self) -> dict:
        return {"perplexity": self.ppl, "nll_sum": self.nll_sum, "tokens": self.tokens, "seq_len": self.seq_len,
                "n_tokens": self.n_tokens, "source": self.source,
                "windows": {"nll": list(self.window_nll), "tokens": list(self.window_tokens)}}


def paragraphs(path: str | Path) -> list[str]:
    """The blank-line separated paragraphs of a text file, stripped, empty ones dropped."""
    p = Path(path)
    if not p.is_file():
        raise RankAdaptorError(f"perplexity text file {p} not found; pass an existing plain-text file")
    texts = [t.strip() for t in p.read_text(encoding="utf-8", errors="replace").split("\n\n")]
    texts = [t for t in texts if t]
    if not texts:
        raise RankAdaptorError(f"perplexity text file {p} has no text")
    return texts


def token_stream(tokenizer, texts: list[str], max_tokens: int | None = None) -> list[int]:
    """Each text tokenised alone, one EOS between texts; stops tokenising once ``max_tokens`` are there."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for text in texts:
        if max_tokens is not None and len(ids) >= max_tokens:
            break
        if ids and eos is not None:
            ids.append(eos)
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids if max_tokens is None else ids[:max_tokens]


@torch.no_grad()
def score_text(model, tokenizer, texts, seq_len: int = DEFAULT_SEQ_LEN, max_tokens: int | None = None,
               source: str | None = None) -> Perplexity:
    """The module's definition applied to ``texts`` (one string or a list of paragraphs)."""
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise RankAdaptorError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2):
        raise RankAdaptorError(f"the number of tokens must be an integer >= 2, got {max_tokens!r}")
    ids = token_stream(tokenizer, list(texts), max_tokens)
    if len(ids) < 2:
        raise RankAdaptorError(f"perplexity needs at least 2 tokens of text, got {len(ids)}")
    windows = [ids[s:s + seq_len] for s in range(0, len(ids), seq_len)]
    windows = [w for w in windows if len(w) >= 2]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll: list[float] = []
    try:
        # windows of equal length go through in groups (no padding, so each row is scored exactly
        # as it would be alone); a shorter last window goes alone
        groups, i = [], 0
        while i < len(windows):
            j = i
            while j < len(windows) and j - i < WINDOWS_PER_PASS and len(windows[j]) == len(windows[i]):
                j += 1
            groups.append(windows[i:j])
            i = j
        for group in tqdm(groups, desc="perplexity", leave=False):
            x = torch.tensor(group, device=device)
            logits = model(input_ids=x).logits.float()
            per_token = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")
            nll += per_token.sum(1).tolist()
    finally:
        model.train(was_training)
    counts = tuple(len(w) - 1 for w in windows)
    total_nll, total = float(sum(nll)), sum(counts)
    result = Perplexity(ppl=math.exp(total_nll / total), nll_sum=total_nll, tokens=total, seq_len=seq_len,
                        n_tokens=len(ids), window_nll=tuple(nll), window_tokens=counts, source=source)
    log.info("perplexity %.3f over %d predicted tokens (%d windows of %d)", result.ppl, total, len(windows), seq_len)
    return result


def heldout_perplexity(model, tokenizer, n_tokens: int = DEFAULT_TOKENS, seq_len: int = DEFAULT_SEQ_LEN,
                       text_path: str | Path | None = None) -> Perplexity:
    """THE held-out perplexity (module docstring) over the first ``n_tokens`` tokens.

    ``text_path`` replaces the Brown held-out split by another plain-text file (same definition).
    """
    if text_path is None:
        from rankadaptor.assets import text_corpus_path

        text_path = text_corpus_path("heldout")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 2:
        raise RankAdaptorError(f"n_tokens must be an integer >= 2, got {n_tokens!r}")
    return score_text(model, tokenizer, paragraphs(text_path), seq_len=seq_len, max_tokens=n_tokens,
                      source=str(Path(text_path).resolve()))


def perplexity(model, tokenizer, texts, seq_len: int = DEFAULT_SEQ_LEN, max_tokens: int | None = None) -> float:
    """Only the perplexity of ``score_text`` (for callers that bring their own texts)."""
    return score_text(model, tokenizer, texts, seq_len=seq_len, max_tokens=max_tokens).ppl
