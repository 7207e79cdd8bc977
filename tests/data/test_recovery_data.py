"""Recovery data: LLM-Pruner's Alpaca template, JSON/JSONL parsing with line-level errors, text blocks, fixed val slice."""

import json

import pytest

from rankadaptor.data import format_alpaca, load_recovery_data, read_alpaca_records
from rankadaptor.errors import RankAdaptorError
from tests.tiny_models import TINY_TEXT, tiny_tokenizer


def test_template_with_and_without_input():
    with_input = format_alpaca({"instruction": "Add.", "input": "2 and 3", "output": "5"})
    assert with_input.startswith("Below is an instruction that describes a task, paired with an input")
    assert with_input.endswith("### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:\n5")
    plain = format_alpaca({"instruction": "Say hi.", "input": "", "output": "hi"})
    assert "### Input" not in plain and plain.endswith("### Instruction:\nSay hi.\n\n### Response:\nhi")


def test_json_and_jsonl_records(tmp_path):
    recs = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(40)]
    (tmp_path / "d.json").write_text(json.dumps(recs))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    assert read_alpaca_records(tmp_path / "d.json") == read_alpaca_records(tmp_path / "d.jsonl") == recs
    tok = tiny_tokenizer()
    a = load_recovery_data(tmp_path / "d.jsonl", tok, seq_len=16, val_fraction=0.1)
    b = load_recovery_data(tmp_path / "d.jsonl", tok, seq_len=16, val_fraction=0.1)
    assert a.val == b.val and len(a.val) == 4 and len(a.train) == 36  # deterministic held-out slice
    assert all(len(x) <= 16 and x[-1] == tok.eos_token_id for x in a.train)  # cut at seq_len, EOS-closed
    assert a.identity["format"] == "alpaca" and len(a.identity["sha256"]) == 64


@pytest.mark.parametrize(
    "content, where",
    [
        ('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": 3}\n', "line 2"),
        ('{"instruction": "a", "output": "b"}\n\n{broken\n', ":3"),
        ('["not an object"]\n', "line 1"),
    ],
)
def test_malformed_record_names_file_and_line(tmp_path, content, where):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(RankAdaptorError, match=f"bad.jsonl.*{where}"):
        read_alpaca_records(path)


def test_text_blocks_and_held_out_tail(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(TINY_TEXT * 10))
    data = load_recovery_data(path, tiny_tokenizer(), seq_len=16, val_fraction=0.1)
    assert all(len(x) == 16 for x in data.train + data.val)
    assert data.identity["format"] == "text" and data.identity["n_val"] == len(data.val) >= 1
    stream = [t for block in data.train + data.val for t in block]
    assert data.val[-1] == stream[-16:]  # the validation slice is the corpus tail, after all training blocks


def test_bad_sources(tmp_path):
    with pytest.raises(RankAdaptorError, match="not found"):
        load_recovery_data(tmp_path / "missing.txt", tiny_tokenizer())
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(RankAdaptorError, match="shorter sequence length"):
        load_recovery_data(tmp_path / "short.txt", tiny_tokenizer(), seq_len=64)
