"""LoRA recovery: fine-tune a (pruned) model with per-layer ranks, nanoGPT-style.

``recover(model, tokenizer, plan, config, data=None, callbacks=(), method=None, out=None)``
wraps the model (``apply_plan`` or a registered method such as AdaLoRA / PrunedLoRA), trains
it and returns a ``RecoveryResult`` (``.model`` is the PeftModel, ``.record`` the results dict).
With ``out`` it also writes a standard PEFT adapter directory plus ``recovery.json``, atomically.

Callbacks are plain objects; any of these methods is called if present:

* ``on_train_begin(model, optimizer, total_steps)``
* ``on_after_backward(step, model)``          gradients of the whole step are accumulated
* ``on_step_end(step, model, optimizer)``     after ``optimizer.step()``, gradients still present
* ``on_train_end(model)``
* ``state_dict()`` / ``load_state_dict(state)``: a callback with state (PrunedLoRA's masks and
  statistics, AdaLoRA's allocator) is saved in checkpoints and restored after ``on_train_begin``

Checkpoints (``RecoveryConfig.checkpoint_every = N``, ``recover --checkpoint-every N``): every N
steps the trainable weights, optimizer state, RNG states, loss curves and callback states are saved
(safetensors + JSON, ``rankadaptor.lora.checkpoint``) in ``OUT.checkpoints/``; the data position
is the step itself, since the batch order is a pure function of the seed. Running the same
recovery again resumes from the latest checkpoint and ends with the same adapter as an
uninterrupted run; the folder is removed once ``OUT`` is complete.

A method (``rankadaptor.lora.methods``: the table of them) has ``prepare(model, config, total_steps)
-> (peft_model, callbacks, info)`` and ``expected_ranks(peft_model) -> {module: r} | None``.
"""

from __future__ import annotations

import logging
import math
import numbers
import random
import resource
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from rankadaptor import device as dev
from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.ranks import PlanMethod, RankPlan

log = logging.getLogger(__name__)


@dataclass
class RecoveryConfig:
    """Hyper-parameters of one recovery run (LLM-Pruner's recipe scaled down: lr 1e-4, AdamW)."""

    max_steps: int | None = 20  # optimizer steps; ignored when ``epochs`` is set
    epochs: float | None = None
    lr: float = 1e-4
    batch_size: int = 8  # examples per optimizer step
    micro_batch_size: int | None = None  # examples per forward pass (grad accumulation); None = batch_size
    seq_len: int = 128
    seed: int = 0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    eval_every: int = 0  # steps between validation losses; 0 = only at the end
    max_grad_norm: float | None = 1.0
    threads: int | None = None
    max_val: int = 32  # held-out examples used for the validation loss
    checkpoint_every: int = 0  # steps between resumable checkpoints (beside ``out``); 0 = none
    # common random numbers for rank search: each module's LoRA A from its own generator seeded by
    # (seed, module name), so two plans giving a module the same rank start it identically
    paired_init: bool = False

    def __post_init__(self) -> None:
        _check_types(self)
        if self.epochs is None and (self.max_steps is None or self.max_steps < 1):
            raise RankAdaptorError(f"max_steps {self.max_steps!r} must be >= 1 (or set epochs)")
        if self.epochs is not None and not self.epochs > 0:
            raise RankAdaptorError(f"epochs {self.epochs!r} must be > 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RankAdaptorError(f"lr {self.lr!r} must be a positive number")
        if self.batch_size < 1:
            raise RankAdaptorError(f"batch_size {self.batch_size} must be >= 1")
        if self.micro_batch_size is None:
            self.micro_batch_size = self.batch_size
        if not 1 <= self.micro_batch_size <= self.batch_size or self.batch_size % self.micro_batch_size:
            raise RankAdaptorError(
                f"micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size}"
            )
        if self.seq_len < 8:
            raise RankAdaptorError(f"seq_len {self.seq_len} must be >= 8")
        for name in ("warmup_steps", "weight_decay", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise RankAdaptorError(f"{name} {getattr(self, name)} must be >= 0")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise RankAdaptorError(f"max_grad_norm {self.max_grad_norm} must be > 0 or None")
        if self.threads is not None and self.threads < 1:
            raise RankAdaptorError(f"threads {self.threads} must be >= 1")
        if self.max_val < 1:
            raise RankAdaptorError(f"max_val {self.max_val} must be >= 1")

    def total_steps(self, n_train: int) -> int:
        if self.epochs is None:
            return int(self.max_steps)
        return max(1, math.ceil(self.epochs * n_train / self.batch_size))

    @classmethod
    def from_dict(cls, d, source: str = "recovery config") -> "RecoveryConfig":
        if not isinstance(d, dict):
            raise RankAdaptorError(f"{source} must be a JSON object of RecoveryConfig fields, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RankAdaptorError(f"{source} has unknown key(s) {unknown}; allowed: {sorted(known)}")
        try:
            return cls(**d)
        except RankAdaptorError as exc:
            raise RankAdaptorError(f"{source}: {exc}") from None

    @classmethod
    def from_json(cls, path) -> "RecoveryConfig":
        from rankadaptor.fileio import read_json

        return cls.from_dict(read_json(path, what="recovery config"), source=f"recovery config {path}")


def _check_types(config) -> None:
    """Wrong types (a string lr from a hand-written config) fail with a message, not a TypeError later."""
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in _BOOL_FIELDS:
            if not isinstance(value, bool):
                raise RankAdaptorError(f"{f.name} = {value!r} must be true or false")
            continue
        kind = _FIELD_TYPES.get(f.name)
        if value is None and (f.name in _OPTIONAL or kind is None):
            continue
        # numbers.* so that NumPy scalars (e.g. a seed from a sampler) pass too
        ok = isinstance(value, numbers.Integral if kind is int else numbers.Real) and not isinstance(value, bool)
        if not ok or not math.isfinite(value):
            what = "an integer" if kind is int else "a finite number"
            raise RankAdaptorError(f"{f.name} = {value!r} must be {what}")


_FIELD_TYPES = {"max_steps": int, "epochs": float, "lr": float, "batch_size": int, "micro_batch_size": int,
                "seq_len": int, "seed": int, "warmup_steps": int, "weight_decay": float, "eval_every": int,
                "max_grad_norm": float, "threads": int, "max_val": int, "checkpoint_every": int}
_OPTIONAL = {"max_steps", "epochs", "micro_batch_size", "max_grad_norm", "threads"}
_BOOL_FIELDS = {"paired_init"}


@dataclass
class RecoveryResult:
    model: Any  # the trained PeftModel
    record: dict = field(default_factory=dict)


# ---- the loop ------------------------------------------------------------------------------------
def recover(model, tokenizer, plan: RankPlan | None = None, config: RecoveryConfig | None = None, data=None,
            callbacks=(), method=None, out=None, overwrite: bool = False,
            identity: dict | None = None, checkpoint_dir=None) -> RecoveryResult:
    """Train LoRA on ``model`` (modified in place) and return the PeftModel with its record.

    With ``config.checkpoint_every = N`` a resumable checkpoint is written every N steps to
    ``checkpoint_dir`` (default ``OUT.checkpoints`` beside ``out``); calling ``recover`` again with
    the same settings continues from the latest one, and the folder is removed once ``out`` is
    complete. Different settings are refused, naming the first one that differs.
    """
    import torch

    from rankadaptor.data import RecoveryData, load_recovery_data
    from rankadaptor.lora import checkpoint as ckpt

    config = config or RecoveryConfig()
    if method is None:
        if plan is None:
            raise RankAdaptorError("recover needs a rank plan or a method")
        method = PlanMethod(plan)
    if hasattr(method, "validate"):
        method.validate(model)  # bad ranks / modules fail before any data is read or trained
    if out is not None:
        if Path(out).exists() and not overwrite:
            raise RankAdaptorError(f"output directory {out} already exists; choose another --out or remove it")
    store = None
    if config.checkpoint_every and checkpoint_dir is None and out is None:
        raise RankAdaptorError("checkpoint_every needs an output directory (out) or a checkpoint_dir")
    if checkpoint_dir is None and out is not None:
        checkpoint_dir = ckpt.checkpoint_dir_for(out)
    if checkpoint_dir is not None and (config.checkpoint_every or Path(checkpoint_dir).is_dir()):
        store = ckpt.CheckpointStore(checkpoint_dir)  # an unfinished run's checkpoints resume even without N
    if config.threads:
        torch.set_num_threads(config.threads)
    if not isinstance(data, RecoveryData):
        data = load_recovery_data(data, tokenizer, seq_len=config.seq_len, max_val=config.max_val)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    total_steps = config.total_steps(len(data.train))

    random.seed(config.seed)
    torch.manual_seed(config.seed)  # LoRA's A init and dropout masks follow the seed
    peft_model, method_callbacks, info = method.prepare(model, config, total_steps)
    if config.paired_init:
        from rankadaptor.lora.ranks import paired_lora_init

        paired_lora_init(peft_model, config.seed)
        torch.manual_seed(config.seed)  # dropout masks then do not depend on how much PEFT's own init drew
    callbacks = list(method_callbacks) + list(callbacks)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    method_name = getattr(method, "name", type(method).__name__)
    settings = ckpt.run_settings(
        method=method_name, method_settings=method.settings() if hasattr(method, "settings") else None,
        info=info, model=identity, data=data.identity, config=asdict(config), total_steps=total_steps,
        trainable={n: list(p.shape) for n, p in peft_model.named_parameters() if p.requires_grad},
    )
    _call(callbacks, "on_train_begin", peft_model, optimizer, total_steps)

    curve, val_curve, start, seconds_before, resumed = [], [], 0, 0.0, []
    if store is not None:
        latest = store.latest()
        if latest is not None:
            state, saved_settings = store.load(latest)
            store.check_settings(saved_settings, settings)
            curve, val_curve, seconds_before, resumed = ckpt.restore(state, peft_model, optimizer, callbacks)
            start = latest
            resumed.append(start)
            log.info("resuming %s from the checkpoint after step %d of %d", method_name, start, total_steps)
        store.clear_partials()  # only now: a refused resume leaves the disk as it was

    order = _batches(len(data.train), config.batch_size, total_steps, config.seed)
    accum = config.batch_size // config.micro_batch_size
    device = dev.model_device(peft_model)  # batches are built on the CPU, then go where the weights are
    t0 = time.perf_counter()
    peft_model.train()
    from tqdm.auto import tqdm

    for step in tqdm(range(start, total_steps), desc="recover", unit="step", initial=start, total=total_steps):
        t_step = time.perf_counter()
        lr = _lr_at(step, total_steps, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = order[step]  # the data position is the step: a resumed run reads the same batches
        step_loss = 0.0
        for m in range(accum):
            batch = dev.move(_collate([data.train[i] for i in idx[m::accum]], pad_id), device)
            loss = peft_model(**batch).loss / accum
            loss.backward()
            step_loss += float(loss.detach())
        _call(callbacks, "on_after_backward", step, peft_model)
        grad_norm = None
        if config.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        optimizer.step()
        _call(callbacks, "on_step_end", step, peft_model, optimizer)
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(step_loss):
            raise RankAdaptorError(f"training loss became {step_loss} at step {step}; lower --lr")
        curve.append({"step": step + 1, "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                      "seconds": time.perf_counter() - t_step})
        if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < total_steps:
            val_curve.append({"step": step + 1, "val_loss": validation_loss(peft_model, data.val, pad_id, config)})
            peft_model.train()
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < total_steps:
            state = ckpt.snapshot(peft_model, optimizer, callbacks, curve, val_curve,
                              seconds_before + time.perf_counter() - t0, resumed)
            store.save(step + 1, state, settings)
    train_seconds = seconds_before + time.perf_counter() - t0
    val_loss = validation_loss(peft_model, data.val, pad_id, config)
    val_curve.append({"step": total_steps, "val_loss": val_loss})
    _call(callbacks, "on_train_end", peft_model)
    peft_model.eval()

    record = {
        "method": method_name,
        "model": identity,
        **info,
        "trainable_params": trainable,
        "data": data.identity,
        "config": asdict(config),
        "total_steps": total_steps,
        "loss_curve": curve,
        "val_curve": val_curve,
        "val_loss": val_loss,
        "seed": config.seed,
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / total_steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    if resumed:
        record["resumed_after_steps"] = resumed
    for cb in callbacks:  # callbacks may add their own results (e.g. final AdaLoRA ranks)
        if hasattr(cb, "record"):
            record.update(cb.record())
    result = RecoveryResult(model=peft_model, record=record)
    if out is not None:
        save_recovery(result, out, overwrite=overwrite)
    if store is not None:
        store.clear()  # the adapter is complete: its checkpoints are no longer needed
    return result


def _call(callbacks, hook: str, *args) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(*args)


def _lr_at(step: int, total: int, config: RecoveryConfig) -> float:
    """Linear warm-up, then linear decay to 0 (the schedule of LLM-Pruner's HF Trainer)."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    remaining = max(1, total - config.warmup_steps)
    return config.lr * max(0.0, 1.0 - (step - config.warmup_steps) / remaining)


def _batches(n: int, batch_size: int, total_steps: int, seed: int) -> list[list[int]]:
    """Index lists per step: seeded epoch-wise shuffles, concatenated (drops no example)."""
    rng = random.Random(seed)
    stream: list[int] = []
    while len(stream) < total_steps * batch_size:
        perm = list(range(n))
        rng.shuffle(perm)
        stream.extend(perm)
    return [stream[i * batch_size:(i + 1) * batch_size] for i in range(total_steps)]


def _collate(examples: list[list[int]], pad_id: int) -> dict:
    """Right-padded batch; padding is masked from attention and loss (labels -100)."""
    import torch

    width = max(map(len, examples))
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, ex in enumerate(examples):
        ids[i, : len(ex)] = torch.tensor(ex, dtype=torch.long)
        mask[i, : len(ex)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def validation_loss(model, examples: list[list[int]], pad_id: int, config: RecoveryConfig) -> float:
    """Token-weighted mean next-token loss over the held-out examples.

    Computed from the logits, not ``outputs.loss``: PEFT's AdaLoRA adds its orthogonality
    regulariser to ``outputs.loss`` (in eval mode too), which is not a language-model loss.
    """
    import torch

    model.eval()
    device = dev.model_device(model)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), config.micro_batch_size):
            batch = _collate(examples[i:i + config.micro_batch_size], pad_id)
            labels = batch.pop("labels")[:, 1:]
            tokens += int((labels != -100).sum())  # counted on the CPU: no device sync
            logits = model(**dev.move(batch, device)).logits[:, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             dev.move(labels, device).reshape(-1),
                                                             ignore_index=-100, reduction="sum"))
    return total / max(tokens, 1)


def save_recovery(result: RecoveryResult, out, overwrite: bool = False):
    """Adapter (``save_pretrained``) + ``recovery.json`` in one atomic directory."""
    from rankadaptor.fileio import atomic_directory, write_json_atomic
    from rankadaptor.provenance import provenance

    with atomic_directory(out, overwrite=overwrite) as tmp:
        result.model.save_pretrained(str(tmp))
        write_json_atomic(tmp / "recovery.json", {**result.record, "provenance": provenance(result.record.get("seed"))})
    return out
