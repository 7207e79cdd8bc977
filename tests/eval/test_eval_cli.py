"""``rankadaptor eval`` end to end on a tiny saved model with the fixture benchmark tree."""

from __future__ import annotations

import json

import pytest

from rankadaptor.cli import main
from tests.eval.fixtures import build_olmo_eval
from tests.tiny_models import TINY_TEXT, tiny_llama, tiny_tokenizer


@pytest.fixture
def setup(tmp_path, monkeypatch):
    root = build_olmo_eval(tmp_path / "data")
    monkeypatch.setattr("rankadaptor.eval.tasks.data_dir", lambda: root)
    model_dir = tmp_path / "model"
    tiny_llama().save_pretrained(str(model_dir))
    tiny_tokenizer().save_pretrained(str(model_dir))
    text = tmp_path / "heldout.txt"
    text.write_text("\n\n".join(TINY_TEXT))
    return tmp_path, model_dir, text


def test_cli_eval_writes_results(setup, capsys):
    from peft import LoraConfig, get_peft_model

    tmp, model_dir, text = setup
    get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["v_proj"])).save_pretrained(str(tmp / "ad"))
    out = tmp / "res.json"
    rc = main(["eval", str(model_dir), "--tasks", "piqa,winogrande", "--limit", "2", "--backend", "fast",
               "--adapter", str(tmp / "ad"), "--ppl", "--ppl-text", str(text), "--seed", "5", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert list(res["tasks"]) == ["piqa", "winogrande"]
    for row in res["tasks"].values():
        assert {"acc", "acc_norm", "acc_stderr", "acc_norm_stderr", "n", "docs_per_s", "tokens_per_s"} <= set(row)
        assert row["n"] == 2 and 0.0 <= row["acc"] <= 1.0
    assert res["tasks"]["winogrande"]["acc_norm"] is None
    assert res["model"]["n_params"] > 0 and res["model"]["path"] == str(model_dir.resolve())
    assert res["adapter"]["n_modules"] == 4 and len(res["adapter"]["sha256"]) == 64
    assert res["provenance"]["seed"] == 5 and "torch" in res["provenance"]["versions"]
    assert res["perplexity"]["perplexity"] > 1 and res["wall_s"] > 0 and res["average"]["n_tasks"] == 2
    printed = capsys.readouterr().out
    assert "piqa" in printed and "average" in printed and "perplexity" in printed
    # results are never overwritten
    assert main(["eval", str(model_dir), "--tasks", "piqa", "--limit", "1", "--out", str(out)]) == 2


def test_cli_bad_task_fails_before_loading(tmp_path, capsys):
    rc = main(["eval", "no-such-model", "--tasks", "piqa,arc", "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown task(s) 'arc'" in err and "arc_easy, arc_challenge, openbookqa" in err
    assert not (tmp_path / "r.json").exists()


def test_cli_adapter_mismatch(setup, capsys):
    from peft import LoraConfig, get_peft_model

    tmp, model_dir, _ = setup
    wide = tiny_llama(intermediate_size=160)
    get_peft_model(wide, LoraConfig(r=2, target_modules=["up_proj"])).save_pretrained(str(tmp / "ad"))
    rc = main(["eval", str(model_dir), "--tasks", "piqa", "--adapter", str(tmp / "ad"), "--out", str(tmp / "r.json")])
    assert rc == 2 and "model.layers.0.mlp.up_proj" in capsys.readouterr().err
