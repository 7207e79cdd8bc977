"""Zero-shot evaluation (lm-eval's seven multiple-choice tasks, offline) and held-out perplexity."""

from rankadaptor.eval.harness import evaluate
from rankadaptor.eval.perplexity import perplexity
from rankadaptor.eval.tasks import TASKS

__all__ = ["TASKS", "evaluate", "perplexity"]
