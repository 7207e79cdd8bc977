"""``rankadaptor export``: bad input is refused before any work (exit 2, one line, inputs unchanged, nothing
written); good input writes a directory rankadaptor and transformers both load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from rankadaptor.cli import main
from tests.hardening_helpers import assert_refused, base  # noqa: F401  (base is a fixture)


@pytest.fixture(scope="module")
def inputs(base):
    """``base`` (tiny model, dense adapter, pruned artefact) plus damaged and foreign inputs."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(base / "adapter", base / "adapter-layer9")  # adapts only a block the pruned model lacks
    weights = base / "adapter-layer9" / "adapter_model.safetensors"
    save_file({k.replace("layers.0.", "layers.9."): v for k, v in load_file(str(weights)).items() if "layers.0." in k},
              str(weights))
    (base / "not-an-adapter").mkdir()
    (base / "not-an-adapter" / "notes.txt").write_text("no adapter_config.json here")
    shutil.copytree(base / "pruned", base / "pruned-bad-format")
    manifest = json.loads((base / "pruned" / "pruning.json").read_text())
    (base / "pruned-bad-format" / "pruning.json").write_text(json.dumps({**manifest, "format": "something-else"}))
    (base / "a-file").write_text("not a directory")
    return base


def _export(*extra, pruned="pruned", out=None):
    return lambda b, tmp: ["export", str(b / pruned), "--out", str(out(b, tmp) if out else tmp / "out"),
                           *[x(b, tmp) if callable(x) else x for x in extra]]


def _adapter(name):
    return lambda b, tmp: str(b / name)


CASES = {
    "out-exists": (_export(out=lambda b, tmp: b / "model"), "already exists"),
    "out-inside-pruned": (_export(out=lambda b, tmp: b / "pruned" / "sub"), "lies inside the input PRUNED"),
    "out-inside-adapter": (_export("--adapter", _adapter("adapter"), out=lambda b, tmp: b / "adapter" / "x"),
                           "lies inside the input --adapter"),
    "out-parent-is-a-file": (_export(out=lambda b, tmp: b / "a-file" / "out"), "is a file, not a directory"),
    "adapter-of-dense-model": (_export("--adapter", _adapter("adapter"), "--merge"),
                               "was made for another model: its model.layers.1.* has (input|output) size .*it names no base model"),
    "adapter-of-missing-block": (_export("--adapter", _adapter("adapter-layer9")),
                                 "adapts model.layers.9.*, which .* does not have"),
    "adapter-not-an-adapter": (_export("--adapter", _adapter("not-an-adapter")), "is not a PEFT adapter directory"),
    "merge-without-adapter": (_export("--merge"), "--merge folds an adapter into the weights; name it with --adapter"),
    "hf-directory-not-pruned": (_export(pruned="model"), "not a pruned artefact .*Hugging Face model directory"),
    "plain-directory-not-pruned": (_export(pruned="not-an-adapter"), "not a pruned artefact .*no pruning.json"),
    "missing-directory": (_export(pruned="no-such-dir"), "is not a directory"),
    "damaged-manifest": (_export(pruned="pruned-bad-format"), "not a rankadaptor pruned-model manifest"),
}


@pytest.mark.parametrize("case", CASES)
def test_export_refuses_bad_input(case, inputs, tmp_path, capsys):
    argv, message = CASES[case]
    err = assert_refused(argv(inputs, tmp_path), message, capsys, inputs, tmp_path)
    assert len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_export_writes_a_loadable_directory(inputs, tmp_path, capsys):
    from rankadaptor.models.artefact import load_pruned

    assert main(["export", str(inputs / "pruned"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "trust_remote_code=True" in printed and str(tmp_path / "out") in printed
    ids = torch.arange(3, 20).view(1, -1)
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path / "out")(ids).logits, load_pruned(inputs / "pruned")(ids).logits)
    assert json.loads((tmp_path / "out" / "pruning.json").read_text())["export"]["source"] == \
        str((inputs / "pruned").resolve())
    assert {"config.json", "model.safetensors", "modeling_rankadaptor_pruned.py", "tokenizer.json"} <= \
        {p.name for p in (tmp_path / "out").iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial leftovers
