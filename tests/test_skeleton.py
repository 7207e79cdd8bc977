import json

import pytest

from rankadaptor.errors import RankAdaptorError
from rankadaptor.fileio import atomic_directory, read_json, write_json_atomic
from tests.tiny_models import tiny_llama, tiny_tokenizer


def test_tiny_model_and_tokenizer_fit_together():
    model, tok = tiny_llama(), tiny_tokenizer()
    ids = tok("The quick brown fox", return_tensors="pt").input_ids
    assert ids.max() < model.config.vocab_size
    assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)


def test_atomic_directory_appears_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "a.txt").write_text("partial")
            raise RuntimeError("crash mid-write")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("done")
    assert (out / "a.txt").read_text() == "done"
    with pytest.raises(RankAdaptorError, match="already exists"):
        with atomic_directory(out):
            pass


def test_json_roundtrip_and_clear_error(tmp_path):
    p = write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert read_json(p) == {"a": 1}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RankAdaptorError, match="not valid JSON"):
        read_json(tmp_path / "bad.json", "rank plan")
    assert json.loads(p.read_text())["a"] == 1
