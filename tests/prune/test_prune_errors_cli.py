import hashlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from rankadaptor.cli import main
from rankadaptor.errors import RankAdaptorError
from rankadaptor.models import artefact
from rankadaptor.models.artefact import load_pruned
from rankadaptor.prune.pruning import PruneConfig, prune_model
from tests.prune.helpers import TEXTS, ids, tiny_family
from tests.tiny_models import tiny_tokenizer


@pytest.mark.parametrize("kw,match", [
    (dict(ratio=1.0), "outside"), (dict(ratio=-0.1), "outside"), (dict(method="magic"), "llm-pruner"),
    (dict(importance="taylor"), "element1"), (dict(calibration=0), "calibration"), (dict(layers=(3, 2)), "START"),
])
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(RankAdaptorError, match=match):
        PruneConfig(**kw)


def test_layer_range_outside_model():
    with pytest.raises(RankAdaptorError, match="outside the model's 4 decoder layers"):
        prune_model(tiny_family("llama"), tiny_tokenizer(), PruneConfig(layers=(1, 9)), TEXTS)
    with pytest.raises(RankAdaptorError, match="outside"):  # default 4:n-2 is empty on a 4-layer model
        prune_model(tiny_family("llama"), tiny_tokenizer(), PruneConfig(), TEXTS)


def test_ratio_that_empties_layers():
    with pytest.raises(RankAdaptorError, match="every head and channel"):
        prune_model(tiny_family("llama"), tiny_tokenizer(), PruneConfig(ratio=0.5, layers=(1, 2)), TEXTS)
    with pytest.raises(RankAdaptorError, match="key/value groups"):  # 2 KV groups, per-layer ratio ~0.8 rounds to 2
        prune_model(tiny_family("llama"), tiny_tokenizer(), PruneConfig(ratio=0.55, layers=(1, 4)), TEXTS)
    with pytest.raises(RankAdaptorError, match="blocks"):
        prune_model(tiny_family("llama"), tiny_tokenizer(), PruneConfig(method="shortgpt", ratio=0.6, layers=(1, 3)), TEXTS)


def test_calibration_too_short():
    with pytest.raises(RankAdaptorError, match="calibration text has"):
        prune_model(tiny_family("llama"), tiny_tokenizer(), PruneConfig(layers=(1, 4), calibration=10, seq_len=128), ["too short"])


def test_unsupported_architecture():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(RankAdaptorError, match="supported families: llama, mistral, qwen2, qwen3"):
        prune_model(gpt2, tiny_tokenizer(), PruneConfig(layers=(0, 1)), TEXTS)


def test_output_appears_only_when_complete(tmp_path, monkeypatch):
    pruned, man = prune_model(tiny_family("llama"), tiny_tokenizer(), PruneConfig(layers=(1, 4), calibration=2, seq_len=16), TEXTS)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("rankadaptor.models.artefact.write_json_atomic", boom)
    with pytest.raises(OSError):
        artefact.save_pruned(pruned, tiny_tokenizer(), man, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    artefact.save_pruned(pruned, tiny_tokenizer(), man, tmp_path / "out")
    with pytest.raises(RankAdaptorError, match="already exists"):
        artefact.save_pruned(pruned, tiny_tokenizer(), man, tmp_path / "out")


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_cli_prunes_local_dir_without_touching_it(tmp_path, capsys):
    src = tmp_path / "base"
    model = tiny_family("llama")
    model.save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(TEXTS))
    before = _tree_hash(src)
    out = tmp_path / "pruned"
    rc = main(["prune", str(src), "--method", "llm-pruner", "--ratio", "0.25", "--out", str(out), "--layers", "1:4",
               "--calibration", "2", "--seq-len", "16", "--calibration-text", str(text), "--importance", "element2"])
    assert rc == 0
    assert _tree_hash(src) == before
    assert {"model.safetensors", "pruning.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    loaded = load_pruned(out)
    reference = AutoModelForCausalLM.from_pretrained(src).eval()
    assert loaded.model.layers[1].self_attn.k_proj.out_features < reference.model.layers[1].self_attn.k_proj.out_features
    with torch.no_grad():
        assert torch.isfinite(loaded(ids()).logits).all()
    # bad input: ratio outside (0, 1) at the CLI, existing --out, short calibration text
    assert main(["prune", str(src), "--ratio", "0", "--out", str(tmp_path / "x"), "--calibration-text", str(text)]) == 2
    assert main(["prune", str(src), "--ratio", "0.2", "--out", str(out), "--calibration-text", str(text)]) == 2
    (tmp_path / "short.txt").write_text("hi")
    assert main(["prune", str(src), "--ratio", "0.2", "--layers", "1:4", "--out", str(tmp_path / "y"),
                 "--calibration-text", str(tmp_path / "short.txt")]) == 2
    err = capsys.readouterr().err
    assert "outside (0, 1)" in err and "already exists" in err and "calibration text has" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_choices_match_library():
    from rankadaptor.cli import prune as cli_prune
    from rankadaptor.prune.importance import IMPORTANCES
    from rankadaptor.prune.pruning import METHODS

    assert tuple(cli_prune.METHODS) == METHODS
    assert tuple(cli_prune.IMPORTANCES) == tuple(IMPORTANCES)
