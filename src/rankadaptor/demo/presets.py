"""The demo's presets: how big each run is, and the cost model behind its progress bar and schedule."""

from __future__ import annotations

from dataclasses import dataclass

from rankadaptor.errors import RankAdaptorError


@dataclass(frozen=True)
class Preset:
    name: str
    seeds: tuple[int, ...]
    steps: int  # recovery optimizer steps per run
    batch_size: int
    seq_len: int
    eval_limit: int | None  # documents per task (None = full splits)
    ppl_tokens: int  # held-out tokens for perplexity
    search_trials: int
    search_steps: int
    high_rank: int  # start rank of the PARA, PrunedLoRA and super-adapter runs
    super_trials: int  # cheap evaluations (cuts of the super-adapter) of the super-adapter search
    generate_tokens: int = 24  # greedy tokens per fixed prompt in the report's generations
    gradient_checkpointing: bool = False  # the paper preset on a user's model and GPU
    prune_ratio: float = 0.2
    calibration: int = 10
    eval_batch_size: int = 16
    lr: float = 2e-4


PRESETS: dict[str, Preset] = {
    # about two minutes: proves every stage runs; its numbers are noise
    "smoke": Preset("smoke", seeds=(0,), steps=4, batch_size=2, seq_len=64, eval_limit=4, ppl_tokens=1024,
                    search_trials=3, search_steps=1, high_rank=16, super_trials=4, generate_tokens=8),
    # the default, sized for ~15 min on 2 CPU cores (two 1-thread workers): every stage at a size where
    # it does real work (8 steps of 4×128 tokens, 6 search trials, 10 docs per task, 2 seeds for an
    # interval — a wide one). 22 min measured with one 2-thread process; with two 1-thread workers the
    # units' measured CPU seconds (about 1,200 s in all) schedule into ~10-11 min.
    "quick": Preset("quick", seeds=(0, 1), steps=8, batch_size=4, seq_len=128, eval_limit=10, ppl_tokens=4096,
                    search_trials=6, search_steps=4, high_rank=32, super_trials=40),
    # the paper's scale (LLM-Pruner recipe: 2 epochs of batch 64 in the paper; here 2000 steps) for a GPU
    "paper": Preset("paper", seeds=(0, 1, 2), steps=2000, batch_size=64, seq_len=256, eval_limit=None,
                    ppl_tokens=200_000, search_trials=60, search_steps=200, high_rank=32, super_trials=500,
                    eval_batch_size=64, generate_tokens=48, gradient_checkpointing=True),
}

# Cost model behind the progress bar and the scheduling order (seconds at one CPU thread); the
# bar rescales by how long finished units really took, so these need only be roughly right.
SECONDS_PER_TOKEN = 0.0016  # one forward token of the pruned SmolLM2-135M at one thread (quick preset's units)
EVAL_TOKENS_PER_DOC = 120  # forward tokens the scorer spends per document, across the seven tasks
FULL_SPLIT_DOCS = 3000  # mean documents per task when a preset evaluates whole splits
LOAD_SECONDS = 25.0  # fetching (first run) and loading the model in a unit
SECONDS_PER_CUT_SCORE = 1.5  # one cheap evaluation of the super-adapter search (cut + search-split loss)
VAL_EXAMPLES = 32  # RecoveryConfig.max_val: the held-out blocks every recovery scores at its end


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise RankAdaptorError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
