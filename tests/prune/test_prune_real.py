import pytest
import torch


@pytest.mark.slow
def test_real_model_width_prune_round_trip(tmp_path):
    """SmolLM2-135M, 20 % by l2 importance (no gradients: keeps the test short); reload through load_model."""
    from rankadaptor.models.loading import load_model
    from rankadaptor.models.artefact import save_pruned
    from rankadaptor.prune.pruning import PruneConfig, prune_model

    loaded = load_model("smollm2-135m")
    model, tok = loaded.model, loaded.tokenizer
    pruned, man = prune_model(model, tok, PruneConfig(ratio=0.2, importance="l2"), identity=loaded.identity, inplace=True)
    assert abs(man["achieved_ratio"] - 0.2) < 0.005
    assert man["layer_range"] == [4, 28]
    assert [layer["num_key_value_heads"] for layer in man["layers"]] == [3] * 4 + [2] * 24 + [3] * 2
    save_pruned(pruned, tok, man, tmp_path / "p")
    again = load_model(str(tmp_path / "p"))
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(again.model(ids).logits, pruned(ids).logits)
