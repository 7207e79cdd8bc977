"""The main job as a recipe: prune, recover with every way of spending the LoRA budget, compare.

``presets`` (sizes and the cost model), ``run`` (the unit graph, the run folder, ``run_demo``),
``units`` (what each unit computes), ``workers`` (worker processes and their logs),
``scheduler`` (dependency-ordered units on a pool, one progress estimate). Importing this package
does not import torch (``rankadaptor demo --help`` stays instant).
"""

from rankadaptor.demo.presets import PRESETS, Preset, preset
from rankadaptor.demo.run import Demo, RunDir, run_demo

__all__ = ["PRESETS", "Demo", "Preset", "RunDir", "preset", "run_demo"]
