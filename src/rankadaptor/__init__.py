"""rankadaptor: per-layer LoRA rank allocation for recovering structurally pruned LLMs.

Pipeline: prune -> allocate ranks (RankAdaptor search, PrunedLoRA, PARA) -> recover -> evaluate.
Each stage is a subpackage usable on its own; the CLI in ``rankadaptor.cli`` is a thin shell.
"""

__version__ = "0.1.0"
