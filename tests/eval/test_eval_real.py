"""The real default model on a few real documents (slow: loads SmolLM2-135M)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_real_model_few_docs():
    from rankadaptor.eval import evaluate
    from rankadaptor.models.loading import load_model

    loaded = load_model("smollm2-135m")
    res = evaluate(loaded.model, loaded.tokenizer, tasks=["piqa", "arc_easy"], limit=5, batch_size=8)
    for task in ("piqa", "arc_easy"):
        row = res["tasks"][task]
        assert row["n"] == 5 and 0.0 <= row["acc"] <= 1.0 and 0.0 <= row["acc_norm"] <= 1.0
    # a trained 135M model beats chance (2-4 choices) on these easy documents taken together
    assert res["average"]["acc"] > 0.4
