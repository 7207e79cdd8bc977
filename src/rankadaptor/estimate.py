"""Know before you run: peak memory and time per step of a prune, a recovery or an evaluation.

Everything is computed from the model's shapes (a weightless copy on the meta device will do:
``rankadaptor.models.loading.skeleton``), so a model that cannot fit is refused before it loads.

Memory (bytes; b = bytes per element of the frozen weights' dtype, T = tokens per forward pass):

* weights: the exact parameter bytes (a teacher's added for distillation);
* LoRA: 16 per trainable parameter (float32 weight, gradient and AdamW's two moments);
* activations kept for the backward pass, per token and decoder layer with LoRA (dropout > 0)
  on all seven projections (counted tensor by tensor with autograd's saved-tensor hooks on LLaMA):
  two RMSNorm float32 upcasts 8·H; per LoRA module its float32 dropout mask and output,
  8·d_in, so 8·(5·H + q + I); attention q, k, v, out b·(2·q + 2·kv) plus the log-sum-exp 4·heads;
  the MLP's gate, SiLU and up outputs 3·b·I. With gradient checkpointing only each layer's input
  b·H is kept, plus one layer's activations while it is recomputed;
* the loss over the full vocabulary V: 12·V per token (logits, float32 log-probabilities and their
  gradient; measured 11.6-11.8 for float32 and bfloat16 bases); distillation gathers the trained
  positions and runs the LM heads in chunks, so only ``chunk_tokens``·V·24 (student and teacher);
* Taylor pruning (lean, block by block): weights + the cached input of every replayed block for
  every calibration sequence + one block's float32 statistics (sum; squares too for element2) +
  the largest transient: max(one sequence's gradients and one block's activations, the float32
  products scoring the widest weight, one sequence's loss). Only the cached inputs grow with depth
  beyond the weights (LLaMA-7B width, 1 to 3 layers: peak +0.385 GiB per layer; the weights and inputs 0.38).

Time: the step's FLOPs (2 per multiply-add; a frozen base's backward pass costs one forward,
a recomputation another) over the rate of a short matrix-product probe on this device and dtype,
so it is a lower bound that large models approach and tiny ones do not.

``PeakMemory`` measures what the estimate predicts: the CUDA allocator's peak, or on the CPU the
peak resident set above the level at entry (``/proc/self/clear_refs``).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

from rankadaptor import device as dev
from rankadaptor.errors import RankAdaptorError

log = logging.getLogger(__name__)

GIB = 2**30
LOSS_BYTES_PER_LOGIT = 12  # logits + float32 log-probabilities + their gradient (measured 11.6-11.8)
DISTILL_BYTES_PER_LOGIT = 24  # both models' float32 logits, log-probabilities and the student's gradient
USABLE = 0.95  # share of the available memory a run may plan to use


@dataclass
class Shapes:
    """What the estimate needs from a model: width, vocabulary, per-layer sizes, parameter bytes."""

    hidden: int
    vocab: int
    layers: list[tuple[int, int, int, int]]  # per decoder layer: (q width, kv width, heads, intermediate)
    param_bytes: int
    params: int
    element_size: int
    dtype: str

    @classmethod
    def of(cls, model) -> "Shapes":
        from rankadaptor.lora.ranks import base_model_of
        from rankadaptor.models.families import get_family

        model = base_model_of(model)
        fam = get_family(model)
        hd = fam.head_dim
        layers = [(fam.num_heads(i) * hd, fam.num_kv_heads(i) * hd, fam.num_heads(i), fam.intermediate_size(i))
                  for i in range(fam.n_layers)]
        seen, n, nbytes = set(), 0, 0
        for p in model.parameters():  # tied weights once
            if id(p) not in seen:
                seen.add(id(p))
                n, nbytes = n + p.numel(), nbytes + p.numel() * p.element_size()
        frozen = next(p for p in model.parameters() if p.is_floating_point() and not p.requires_grad) \
            if any(not p.requires_grad for p in model.parameters()) else next(model.parameters())
        vocab = model.get_output_embeddings().weight.shape[0]
        return cls(model.config.hidden_size, vocab, layers, nbytes, n, frozen.element_size(), dev.dtype_name(frozen.dtype))

    def layer_activations(self, lora_dropout: bool = True) -> list[int]:
        """Bytes per token each decoder layer keeps for the backward pass (LoRA training, frozen base)."""
        h, b = self.hidden, self.element_size
        out = []
        for q, kv, heads, inter in self.layers:
            lora = (8 if lora_dropout else 4) * (5 * h + q + inter)
            out.append(8 * h + lora + b * (2 * q + 2 * kv) + 4 * heads + 3 * b * inter)
        return out

    def forward_flops(self, tokens: int, seq_len: int) -> float:
        """Multiply-adds × 2 of one forward pass over ``tokens`` tokens in sequences of ``seq_len``."""
        h = self.hidden
        per_token = 2 * h * self.vocab
        for q, kv, _, inter in self.layers:
            per_token += 2 * (2 * h * q + 2 * h * kv + 3 * h * inter) + 2 * q * seq_len  # causal: half of 4·q·L
        return float(per_token) * tokens


@dataclass
class Estimate:
    """Peak memory by part, time per step, and whether it fits in what this device has free."""

    what: str
    device: str
    dtype: str
    parts: dict[str, int]
    flops: float
    rate: float | None = None  # measured FLOP/s of the matrix-product probe
    available: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return sum(self.parts.values())

    @property
    def seconds(self) -> float | None:
        return self.flops / self.rate if self.rate else None

    def fits(self) -> bool:
        return self.available is None or self.peak <= USABLE * self.available

    def summary(self) -> str:
        parts = ", ".join(f"{k} {size(v)}" for k, v in self.parts.items() if v)
        free = f" of {size(self.available)} available" if self.available is not None else ""
        unit = {"recover": "recovery step", "prune": "Taylor importance pass", "eval": "scoring batch"}.get(
            self.what, f"{self.what} step")
        time_s = f"; ~{self.seconds:.3g} s per {unit} at {self.rate / 1e9:.1f} GFLOP/s" if self.seconds else ""
        return f"estimate for {self.what} on {self.device} ({self.dtype}): peak {size(self.peak)}{free} ({parts}){time_s}"

    def to_dict(self) -> dict:
        return {"what": self.what, "device": self.device, "dtype": self.dtype, "parts_bytes": dict(self.parts),
                "peak_bytes": self.peak, "available_bytes": self.available, "flops_per_step": self.flops,
                "probe_flops_per_s": self.rate, "seconds_per_step": self.seconds, "fits": self.fits()}


def estimate_recover(model, batch_size: int, seq_len: int, lora_params: int, device=None, micro_batch_size=None,
                     gradient_checkpointing: bool = False, lora_dropout: bool = True, teacher=None,
                     chunk_tokens: int = 1024, probe: bool = True, available: int | None = None) -> Estimate:
    """One recovery step: ``batch_size`` sequences of ``seq_len`` in micro-batches, LoRA of ``lora_params``."""
    s = Shapes.of(model)
    micro = micro_batch_size or batch_size
    tokens = micro * seq_len
    acts = s.layer_activations(lora_dropout)
    h, b = s.hidden, s.element_size
    parts = {"weights": s.param_bytes, "lora+adamw": 16 * lora_params}
    fwd = s.forward_flops(tokens, seq_len)
    flops = (3 if gradient_checkpointing else 2) * fwd  # frozen base: backward ≈ one forward (+ recompute)
    if teacher is not None:
        t = Shapes.of(teacher)
        parts["teacher"] = t.param_bytes
        parts["loss"] = min(tokens, chunk_tokens) * s.vocab * DISTILL_BYTES_PER_LOGIT + tokens * h * (b + 4)
        flops += t.forward_flops(tokens, seq_len)
    else:
        parts["loss"] = tokens * s.vocab * LOSS_BYTES_PER_LOGIT
    final_norm = tokens * 4 * h  # its float32 upcast
    if gradient_checkpointing:
        # every layer's input is kept; a layer's own activations exist only while it is recomputed,
        # after the loss's backward pass has freed the logits: the larger of the two is the peak
        parts["activations"] = tokens * b * h * len(acts) + final_norm + max(0, tokens * max(acts) - parts["loss"])
    else:
        parts["activations"] = tokens * sum(acts) + final_norm
    flops *= batch_size // micro
    return _finish("recover", parts, flops, s, device, probe, available)


def estimate_prune(model, calibration: int, seq_len: int, fisher: bool = False, first_layer: int = 0,
                   device=None, probe: bool = True, available: int | None = None) -> Estimate:
    """Taylor importance as ``prune.importance.layer_gradients`` computes it (lean Taylor): every block
    input from ``first_layer`` up cached for every calibration sequence, then the blocks replayed from
    the top with one block's float32 statistics (sum, and squares for element2) alive at a time."""
    s = Shapes.of(model)
    h, b = s.hidden, s.element_size
    blocks = s.layers[first_layer:]
    tokens = calibration * seq_len
    block_params = max(2 * h * q + 2 * h * kv + 3 * h * inter + 2 * h for q, kv, _, inter in blocks)
    # one block replayed on one sequence with its weights' gradients: each linear keeps its input
    replay = max(8 * h + b * (2 * q + 2 * kv) + 4 * heads + 3 * b * inter + b * (2 * h + q + inter)
                 for q, kv, heads, inter in blocks)
    widest = max(max(h * inter, h * q) for q, _, _, inter in blocks)
    parts = {"weights": s.param_bytes,
             "cached inputs": tokens * h * b * (len(blocks) + 1),  # each replayed block's input + the upstream grads
             # one block's float32 statistics (sum, and squares for element2): alive while it is replayed and scored
             "gradients": block_params * 4 * (2 if fisher else 1),
             # on top of them the largest of what comes and goes (measured at LLaMA-7B width, issue 17): one
             # sequence's gradients in the weights' dtype with one block's activations during a replay; the
             # float32 products scoring the widest weight (a column slice's copy and the product); and, in the
             # recording pass before any statistics exist, one sequence's loss
             "working set": max(block_params * b + seq_len * replay, widest * (14 if fisher else 8),
                                seq_len * s.vocab * LOSS_BYTES_PER_LOGIT)}
    # per sequence: a forward pass without autograd, then each replayed block forward and backward
    flops = calibration * (s.forward_flops(seq_len, seq_len) + 3 * _block_flops(blocks, h, seq_len))
    return _finish("prune", parts, flops, s, device, probe, available)


def _block_flops(blocks, h: int, seq_len: int) -> float:
    return float(sum(2 * (2 * h * q + 2 * h * kv + 3 * h * inter) + 2 * q * seq_len for q, kv, _, inter in blocks)
                 * seq_len)


def estimate_eval(model, batch_size: int, seq_len: int, device=None, probe: bool = True,
                  available: int | None = None) -> Estimate:
    """One scoring forward pass of ``batch_size`` sequences (no gradients, every position's logits)."""
    s = Shapes.of(model)
    tokens = batch_size * seq_len
    widest = max(2 * s.hidden + 2 * q + 2 * kv + 3 * inter for q, kv, _, inter in s.layers)
    kv_cache = sum(2 * kv for _, kv, _, _ in s.layers) * s.element_size
    parts = {"weights": s.param_bytes, "activations": tokens * (s.element_size * widest + kv_cache),
             "loss": tokens * s.vocab * (s.element_size + 8)}
    return _finish("eval", parts, s.forward_flops(tokens, seq_len), s, device, probe, available)


def _finish(what, parts, flops, shapes: Shapes, device, probe: bool, available) -> Estimate:
    import torch

    where = device if isinstance(device, torch.device) else dev.resolve_device(device)
    est = Estimate(what, str(where), shapes.dtype, parts, flops)
    est.available = available if available is not None else available_memory(where)
    if probe:
        est.rate = matmul_rate(where, getattr(torch, shapes.dtype))
    log.info("%s", est.summary())
    return est


def check(est: Estimate, force: bool = False) -> None:
    """Refuse, with the numbers, a run that will not fit (``force``: warn and go on)."""
    if est.fits():
        return
    msg = (f"this run needs about {size(est.peak)} but {est.device} has {size(est.available)} available "
           f"({est.summary()}); lower --batch-size (or --micro-batch-size) or --seq-len, add "
           "--gradient-checkpointing, use --dtype bfloat16, spread the model with --device-map auto, or pass "
           "--no-memory-check to run anyway")
    if force:
        log.warning("%s", msg)
        return
    raise RankAdaptorError(msg)


def size(n: float) -> str:
    """Bytes as people read them: MiB below a GiB, GiB above."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def available_memory(device) -> int | None:
    """Free bytes where the run happens: the GPU's free memory, or the CPU's available RAM."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return int(torch.cuda.mem_get_info(index)[0])
    if device.type == "cpu":
        return dev.cpu_available_memory()
    return None


def matmul_rate(device, dtype, seconds: float = 0.15) -> float:
    """Measured FLOP/s of square matrix products in ``dtype`` on ``device`` (a short probe)."""
    import torch

    n = 4096 if device.type == "cuda" else 512
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    reps = 8 if device.type == "cuda" else 1  # GPU products are queued: time them in groups
    a @ b  # warm-up: kernels chosen, caches filled
    sync()
    t0, done = time.perf_counter(), 0
    while done < 2 * reps or time.perf_counter() - t0 < seconds:
        for _ in range(reps):
            a @ b
        sync()
        done += reps
    return 2.0 * n**3 * done / (time.perf_counter() - t0)


class PeakMemory:
    """``with PeakMemory(device) as peak: ...``; then ``peak.bytes`` is the peak above the level at entry
    and ``peak.total`` the peak itself (allocated tensors on a GPU, the resident set on the CPU)."""

    def __init__(self, device=None):
        import torch

        self.device = device if isinstance(device, torch.device) else dev.resolve_device(device)
        self.bytes: int | None = None
        self.total: int | None = None

    def __enter__(self) -> "PeakMemory":
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = _rss()
            _reset_rss_peak()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.total = torch.cuda.max_memory_allocated(self.device)
        else:
            self.total = _proc_status("VmHWM")
        self.bytes = self.total - self._start


def _proc_status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        found = re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.M)
    if found is None:
        raise RankAdaptorError(f"/proc/self/status has no {key}; CPU peak memory is measured on Linux only")
    return int(found.group(1)) * 1024


def _rss() -> int:
    return _proc_status("VmRSS")


def _reset_rss_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
    except OSError as exc:
        raise RankAdaptorError(f"cannot reset the peak resident set ({exc}); CPU peak memory needs Linux") from exc
