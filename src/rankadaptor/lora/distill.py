"""Distillation recovery: the pruned student learns the unpruned teacher's next-token distribution.

    loss = α · T² · KL(p_teacher,T ‖ p_student,T) + (1 − α) · CE(student, next token)

p_·,T is the softmax of the logits divided by the temperature T; T² keeps the soft term's gradient
scale independent of T (Hinton et al., "Distilling the Knowledge in a Neural Network"). Both terms
are means over the trained positions (the tokens that have a label), so α = 0 is plain recovery.
Logit distillation from the unpruned model is how Minitron and Recover-LoRA recover pruned LLMs.

Memory. Full-vocabulary logits of a 4×256 batch under Llama-3's 128k vocabulary take 0.5 GB per
float32 copy, and a KL needs several copies for two models. So neither model runs its LM head on
the whole padded batch: the decoders' final hidden states are gathered at the trained positions
only. Up to ``chunk_tokens`` of those rows the LM heads run at once (memory as a plain loss's);
beyond, they run ``chunk_tokens`` rows at a time and each chunk's loss is checkpointed (both heads'
logits are recomputed in the backward pass rather than kept, for memory that no longer grows with
the batch). The teacher runs
under ``torch.inference_mode``, once per micro-batch, and its weights never see a gradient.

Every recovery method trains with it unchanged (it only replaces the loss); AdaLoRA's orthogonal
regulariser, which PEFT adds to ``outputs.loss`` inside the model's forward, is added here too.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

from rankadaptor.errors import RankAdaptorError

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    alpha: float = 0.5  # weight of the distillation term; 1 - alpha weighs the next-token loss
    temperature: float = 2.0
    chunk_tokens: int = 1024  # trained positions per LM-head call (bounds the logits in memory)

    def __post_init__(self) -> None:
        for name in ("alpha", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RankAdaptorError(f"distillation {name} {value!r} must be a finite number")
        if not 0.0 <= self.alpha <= 1.0:
            raise RankAdaptorError(f"distillation alpha {self.alpha} must be in [0, 1] (0 = plain next-token loss)")
        if not self.temperature > 0:
            raise RankAdaptorError(f"distillation temperature {self.temperature} must be > 0")
        if isinstance(self.chunk_tokens, bool) or not isinstance(self.chunk_tokens, int) or self.chunk_tokens < 1:
            raise RankAdaptorError(f"distillation chunk_tokens {self.chunk_tokens!r} must be a positive integer")


class Distiller:
    """The teacher and the loss: ``loss(student, batch) -> (loss, {"kl": .., "ce": ..})``."""

    def __init__(self, teacher, config: DistillConfig | None = None, identity: dict | None = None,
                 tokenizer=None):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.config = config or DistillConfig()
        self.identity = identity
        self.tokenizer = tokenizer

    def settings(self) -> dict:
        """What a resumed run must match, and what the recovery record states."""
        return {**asdict(self.config), "teacher": self.identity}

    def check(self, student, tokenizer=None) -> None:
        """A teacher whose vocabulary differs from the student's is refused before any work."""
        check_same_vocabulary(student, self.teacher, tokenizer, self.tokenizer)

    def loss(self, student, batch: dict):
        import torch

        labels = batch["labels"][:, 1:]
        trained = labels != -100  # position t predicts token t + 1; padding has no label
        n = int(trained.sum())
        if n == 0:
            raise RankAdaptorError("a recovery batch has no trained token; the examples are empty")
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.inference_mode():  # the teacher's activations are never kept for a backward pass
            h_t = _final_hidden(self.teacher, inputs)[:, :-1][trained.to(_device_of(self.teacher))]
        h_t = h_t.clone()  # an ordinary tensor again: inference tensors cannot enter the student's graph
        h_s = _final_hidden(student, inputs)[:, :-1]
        h_s = h_s[trained.to(h_s.device)]
        targets = labels[trained].to(h_s.device)
        kl = ce = 0.0
        head_s, head_t = _lm_head(student), _lm_head(self.teacher)
        step = self.config.chunk_tokens
        for i in range(0, n, step):
            args = (h_s[i:i + step], h_t[i:i + step], targets[i:i + step], head_s, head_t, self.config.temperature)
            if n <= step:  # one chunk: its logits live as long as a plain loss's would; nothing to recompute
                k, c = _chunk_terms(*args)
            else:
                k, c = torch.utils.checkpoint.checkpoint(_chunk_terms, *args, use_reentrant=False)
            kl, ce = kl + k, ce + c
        kl, ce = kl / n, ce / n
        a, t = self.config.alpha, self.config.temperature
        loss = a * t * t * kl + (1 - a) * ce + _tuner_penalty(student)
        return loss, {"kl": float(kl.detach()), "ce": float(ce.detach())}


def _chunk_terms(h_s, h_t, targets, head_s, head_t, temperature: float):
    """Summed KL(teacher ‖ student) at ``temperature`` and summed next-token loss of a chunk of rows."""
    import torch
    import torch.nn.functional as F

    s = head_s(h_s).float()
    with torch.no_grad():
        t = head_t(h_t.to(_device_of(head_t))).float().to(s.device)
    ce = F.cross_entropy(s, targets, reduction="sum")
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                  log_target=True, reduction="sum")
    return kl, ce


def _final_hidden(model, inputs: dict):
    """The decoder's last hidden states (after the final norm), LoRA layers included, without the LM head."""
    from rankadaptor.lora.ranks import base_model_of

    base = base_model_of(model)
    device = _device_of(base)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    return base.get_decoder()(**inputs, use_cache=False).last_hidden_state


def _lm_head(model):
    from rankadaptor.lora.ranks import base_model_of

    return base_model_of(model).get_output_embeddings()


def _device_of(module):
    return next(module.parameters()).device


def _tuner_penalty(student):
    """AdaLoRA's orthogonal regulariser (PEFT adds it to ``outputs.loss``, which this loss bypasses)."""
    from rankadaptor.lora.adalora import orthogonal_penalty

    return orthogonal_penalty(student)


def vocabulary_size(model) -> int:
    """Rows of the LM head: the ids the model can predict (what KL compares position by position)."""
    from rankadaptor.lora.ranks import base_model_of

    return int(base_model_of(model).get_output_embeddings().weight.shape[0])


def check_same_vocabulary(student, teacher, student_tokenizer=None, teacher_tokenizer=None) -> None:
    """Logit distillation compares distributions id by id: both models must share one vocabulary."""
    vs, vt = vocabulary_size(student), vocabulary_size(teacher)
    if vs != vt:
        raise RankAdaptorError(f"the teacher predicts {vt} token ids but the student {vs}: distillation compares "
                               "next-token distributions id by id, so the teacher must use the student's vocabulary "
                               "(the unpruned model it was pruned from); pass another --teacher")
    if student_tokenizer is not None and teacher_tokenizer is not None:
        a, b = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        if a != b:
            differ = sorted(set(a.items()) ^ set(b.items()))[:3]
            raise RankAdaptorError(f"the teacher's tokenizer differs from the student's ({len(b)} vs {len(a)} tokens, "
                                   f"e.g. {differ}): the same id would mean different tokens; pass the teacher the "
                                   "student was pruned from as --teacher")


def teacher_spec(student_spec: str) -> str:
    """The unpruned model a pruned artefact names in its manifest (``base_model``), as a loadable spec."""
    from pathlib import Path

    from rankadaptor.fileio import read_json
    from rankadaptor.models.artefact import MANIFEST

    manifest_path = Path(student_spec) / MANIFEST
    if not manifest_path.is_file():
        raise RankAdaptorError(f"--distill without --teacher takes the teacher from a pruned artefact's {MANIFEST}, "
                               f"but {student_spec} is not a pruned artefact; pass --teacher MODEL")
    base = read_json(manifest_path, what="pruning manifest").get("base_model") or {}
    if base.get("source") in ("alias", "hub") and base.get("spec"):
        return str(base["spec"])  # found again through the cache, wherever it lives on this machine
    if base.get("path") and Path(base["path"]).exists():
        return str(base["path"])
    raise RankAdaptorError(f"{manifest_path} names the base model {base.get('spec')!r} (at {base.get('path')!r}), "
                           "which is not found here; pass the unpruned model as --teacher MODEL")
