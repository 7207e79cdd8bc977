"""``recover --method prunedlora`` flags, kept free of torch so that ``rankadaptor --help`` stays instant.

``SCOPES`` and ``SCORER_NAMES`` repeat the library's names (``rankadaptor.lora.pruned_lora.SCOPES``,
the scorers registered in ``rankadaptor.lora.obs``) without importing torch; a test checks they agree.
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
    g.add_argument("--prune-every", type=int, default=10, help="steps between pruning events")
    g.add_argument("--prune-k", type=int, default=1, help="components removed per module per event")
    g.add_argument("--scope", choices=SCOPES, default="module")
    g.add_argument("--prune-scorer", choices=SCORER_NAMES, default="obs")
    g.add_argument("--prune-warmup", type=int, default=10, help="steps before the first pruning event's statistics")
    g.add_argument("--prune-final", type=int, default=0, help="steps of fine-tuning after the last event")
    g.add_argument("--prune-floor", type=int, default=1, help="minimum rank per module")
