"""Zero-shot evaluation (lm-eval's seven multiple-choice tasks, offline), held-out perplexity and
paired comparisons of two evaluations."""

from rankadaptor.eval.harness import evaluate
from rankadaptor.eval.perplexity import Perplexity, heldout_perplexity, perplexity
from rankadaptor.eval.tasks import TASKS

__all__ = ["TASKS", "Perplexity", "evaluate", "heldout_perplexity", "perplexity"]
