"""``recover --method prunedlora`` flags, kept free of torch so that ``rankadaptor --help`` stays instant.

``SCOPES`` and ``SCORER_NAMES`` repeat the library's names (``rankadaptor.lora.pruned_lora.SCOPES``,
the scorers registered in ``rankadaptor.lora.obs``) without importing torch; a test checks they agree.
Timing flags left out are derived from --steps (``PruneSchedule.resolve``): a quarter of the run of
warm-up, a quarter of final fine-tuning, an event after every step between, and the fewest
components per event that reach the budget.
"""

from __future__ import annotations

SCOPES = ("module", "global")
SCORER_NAMES = ("activation", "magnitude", "obs", "taylor")


def add_prunedlora_arguments(parser) -> None:
    """Flags of ``recover --method prunedlora`` (the recover CLI calls this)."""
    g = parser.add_argument_group("PrunedLoRA (--method prunedlora)")
    g.add_argument("--init-rank", type=int, default=None, help="initial LoRA rank R0 of every module")
    # --target-params (the budget to prune down to) is the recover command's own flag, shared with AdaLoRA
    g.add_argument("--target-rank", type=int, default=None, help="uniform rank whose budget to prune down to")
    g.add_argument("--prune-every", type=int, default=None, help="steps between pruning events (default 1)")
    g.add_argument("--prune-k", type=int, default=None,
                   help="components removed per module per event (default: the fewest that reach the budget)")
    g.add_argument("--scope", choices=SCOPES, default="module",
                   help="module: every module ends at the same rank; global: ranks follow the scores")
    g.add_argument("--prune-scorer", choices=SCORER_NAMES, default="obs")
    g.add_argument("--prune-warmup", type=int, default=None,
                   help="steps of statistics before the first event (default: a quarter of --steps)")
    g.add_argument("--prune-final", type=int, default=None,
                   help="steps of fine-tuning after the last event, >= 1 (default: a quarter of --steps)")
    g.add_argument("--prune-floor", type=int, default=1, help="minimum rank per module")
    g.add_argument("--prune-damping", type=float, default=0.01,
                   help="Fisher damping, relative to its mean diagonal (default 0.01)")
    g.add_argument("--prune-no-compensation", action="store_true",
                   help="remove components without the OBS update of the kept ones (ablation)")
