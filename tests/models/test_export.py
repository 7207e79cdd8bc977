"""Pruned models and their adapters load with plain transformers / PEFT (issue 17 item 5, issue 20 item 7).

Each check that matters runs the loading in a fresh Python process that never imports rankadaptor
(it asserts so), exactly as a user would, and compares its logits with rankadaptor's own load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rankadaptor.lora.ranks import RankPlan
from rankadaptor.lora.recover import RecoveryConfig, recover
from rankadaptor.models.artefact import load_pruned, save_pruned
from rankadaptor.models.export import MODELING_FILE, export_pruned
from rankadaptor.models.loading import load_model
from rankadaptor.prune.pruning import PruneConfig, prune_model
from tests.prune.helpers import TEXTS, tiny_family
from tests.tiny_models import TINY_TEXT, tiny_tokenizer

IDS = torch.arange(3, 40).view(1, -1)

PLAIN_LOADER = textwrap.dedent('''
    import json, sys, torch
    from transformers import AutoModelForCausalLM
    from peft import AutoPeftModelForCausalLM
    jobs, ids = json.loads(sys.argv[1]), torch.arange(3, 40).view(1, -1)
    for job in jobs:
        cls = AutoPeftModelForCausalLM if job["peft"] else AutoModelForCausalLM
        try:
            model = cls.from_pretrained(job["path"], trust_remote_code=job["trust"]).eval()
            with torch.no_grad():
                torch.save(model(ids).logits, job["logits"])
        except Exception as exc:  # reported to the test, which decides
            open(job["logits"] + ".err", "w").write(f"{type(exc).__name__}: {exc}")
    assert "rankadaptor" not in sys.modules, "the plain loader imported rankadaptor"
''')


def plain_load(tmp: Path, jobs: list[dict]) -> list:
    """Logits (or the error text) of each job, loaded by transformers/PEFT in a fresh process."""
    tmp.mkdir(parents=True, exist_ok=True)
    for i, job in enumerate(jobs):
        job.setdefault("peft", False)
        job.setdefault("trust", True)
        job["path"], job["logits"] = str(job["path"]), str(tmp / f"logits{i}.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp / "hf_modules"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", PLAIN_LOADER, json.dumps(jobs)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = []
    for job in jobs:
        err = Path(job["logits"] + ".err")
        out.append(err.read_text() if err.exists() else torch.load(job["logits"]))
    return out


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS).logits


def _pruned(root: Path, name: str, family: str = "llama", **cfg) -> Path:
    tok = tiny_tokenizer()
    model, manifest = prune_model(tiny_family(family), tok, PruneConfig(calibration=2, seq_len=16, **cfg), TEXTS)
    save_pruned(model, tok, manifest, root / name)
    return root / name


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Artefacts of each kind, and an adapter trained by ``recover`` on the width-pruned LLaMA."""
    root = tmp_path_factory.mktemp("export")
    _pruned(root, "llama", ratio=0.3, layers=(1, 4), importance="element1")  # per-layer widths, GQA, tied
    _pruned(root, "qwen2", family="qwen2", ratio=0.3, layers=(1, 4), importance="l1")  # q/k/v biases, untied
    _pruned(root, "qwen3", family="qwen3", ratio=0.3, layers=(1, 4), importance="l1")  # per-head q/k norms
    _pruned(root, "depth", method="shortgpt", ratio=0.2, layers=(1, 4))  # blocks removed, widths as the base
    _pruned(root, "uniform", ratio=0.3, layers=(0, 4), importance="l2")  # every block pruned alike
    # every block alike at 5 of 6 heads: 96 % 5 != 0, which a transformers config refuses, so code it is
    model, manifest = prune_model(tiny_family("llama", hidden_size=96, num_attention_heads=6, num_key_value_heads=6),
                                  tiny_tokenizer(), PruneConfig(ratio=0.12, layers=(0, 4), importance="l1"))
    save_pruned(model, tiny_tokenizer(), manifest, root / "uniform-indivisible")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(TINY_TEXT * 20))
    loaded = load_model(root / "llama")  # the way `rankadaptor recover PRUNED` loads it
    recover(loaded.model, loaded.tokenizer, RankPlan.uniform(4, 4), RecoveryConfig(max_steps=2, lr=5e-2, batch_size=2,
            seq_len=16), data=corpus, out=root / "adapter", identity=loaded.identity)
    return root


MERGE_VARIANTS = {
    "patterns": dict(rank_pattern={"model.layers.1.self_attn.q_proj": 2, "model.layers.2.mlp.down_proj": 6},
                     alpha_pattern={"model.layers.1.self_attn.q_proj": 3, "model.layers.2.mlp.down_proj": 20}),
    "rslora": dict(use_rslora=True),
}
ARTEFACTS = ["llama", "qwen2", "qwen3", "depth", "uniform", "uniform-indivisible"]


@pytest.fixture(scope="module")
def plain(root):
    """Every directory a user would load, loaded by plain transformers / PEFT in ONE fresh process
    (starting one costs ~10-30 s here): {job name: logits or the error text}."""
    from peft import LoraConfig, get_peft_model

    for variant, kw in MERGE_VARIANTS.items():  # adapters with per-module ranks / alphas, and rsLoRA, merged
        torch.manual_seed(0)
        peft_model = get_peft_model(load_pruned(root / "llama"), LoraConfig(
            r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM",
            target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"], **kw))
        peft_model.save_pretrained(root / f"adapter-{variant}")
        export_pruned(root / "llama", root / f"merged-{variant}", adapter=root / f"adapter-{variant}", merge=True)
    export_pruned(root / "llama", root / "with-adapter", adapter=root / "adapter")
    old = root / "old"  # an artefact saved before artefacts carried config.json
    shutil.copytree(root / "qwen2", old)
    (old / "config.json").unlink()
    (old / MODELING_FILE).unlink()
    export_pruned(old, root / "old-exported")
    jobs = {name: {"path": root / name} for name in ARTEFACTS}
    jobs.update({f"{name}-no-code": {"path": root / name, "trust": False} for name in ("depth", "uniform")})
    jobs["adapter"] = {"path": root / "adapter", "peft": True}
    jobs.update({f"merged-{v}": {"path": root / f"merged-{v}"} for v in MERGE_VARIANTS})
    jobs["with-adapter"] = {"path": root / "with-adapter"}
    jobs["with-adapter/adapter"] = {"path": root / "with-adapter" / "adapter", "peft": True}
    jobs["old-exported"] = {"path": root / "old-exported"}
    return dict(zip(jobs, plain_load(root / "plain", list(jobs.values()))))


def test_artefacts_load_with_plain_transformers(root, plain):
    for name in ARTEFACTS:
        assert isinstance(plain[name], torch.Tensor), (name, plain[name])
        assert torch.equal(plain[name], _logits(load_pruned(root / name))), name
    # per-layer widths need the modeling file; uniform widths are a plain config of the family, no code
    for name in ("llama", "qwen2", "qwen3", "uniform-indivisible"):
        config = json.loads((root / name / "config.json").read_text())
        assert (root / name / MODELING_FILE).is_file() and config["architectures"] == ["PrunedForCausalLM"]
        assert len(config["pruned_layers"]) == config["num_hidden_layers"] == 4
    assert {w["num_attention_heads"] for w in json.loads(
        (root / "uniform-indivisible" / "config.json").read_text())["pruned_layers"]} == {5}
    for name in ("depth", "uniform"):
        config = json.loads((root / name / "config.json").read_text())
        assert not (root / name / MODELING_FILE).exists() and "auto_map" not in config
        assert config["architectures"] == ["LlamaForCausalLM"]
        got = plain[f"{name}-no-code"]  # trust_remote_code=False
        assert isinstance(got, torch.Tensor) and torch.equal(got, plain[name]), (name, got)
    assert json.loads((root / "depth" / "config.json").read_text())["num_hidden_layers"] < 4


def test_recovered_adapter_names_the_artefact_and_loads_with_peft(root, plain):
    from peft import PeftModel

    config = json.loads((root / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((root / "llama").resolve())
    expected = _logits(PeftModel.from_pretrained(load_pruned(root / "llama"), root / "adapter"))
    assert not torch.equal(expected, _logits(load_pruned(root / "llama")))  # the adapter changes the output
    assert isinstance(plain["adapter"], torch.Tensor), plain["adapter"]
    assert torch.allclose(plain["adapter"], expected, atol=1e-6)


def test_compressed_adapter_keeps_its_base(root, tmp_path):
    from rankadaptor.compress.para import CompressConfig, compress

    compress(root / "adapter", tmp_path / "small", CompressConfig(keep_fraction=0.5))
    config = json.loads((tmp_path / "small" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((root / "llama").resolve())


@pytest.mark.parametrize("variant", MERGE_VARIANTS)
def test_merge_folds_the_adapter_as_peft_does(root, plain, variant):
    from peft import PeftModel

    expected = _logits(PeftModel.from_pretrained(load_pruned(root / "llama"), root / f"adapter-{variant}"))
    assert not torch.allclose(expected, _logits(load_pruned(root / "llama")), atol=1e-3)
    merged = root / f"merged-{variant}"
    assert not (merged / "adapter").exists()
    assert torch.allclose(_logits(load_pruned(merged)), expected, atol=1e-5)
    assert isinstance(plain[f"merged-{variant}"], torch.Tensor), plain[f"merged-{variant}"]
    assert torch.allclose(plain[f"merged-{variant}"], expected, atol=1e-5)
    record = json.loads((merged / "pruning.json").read_text())["export"]
    assert record["merged"] and record["adapter"]["path"] == str((root / f"adapter-{variant}").resolve())


def test_export_with_adapter_points_the_copy_at_the_export(root, plain):
    from peft import PeftModel

    adapter = root / "with-adapter" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str((root / "with-adapter").resolve())
    expected = _logits(PeftModel.from_pretrained(load_pruned(root / "llama"), root / "adapter"))
    assert torch.equal(plain["with-adapter"], _logits(load_pruned(root / "llama")))
    got = plain["with-adapter/adapter"]
    assert isinstance(got, torch.Tensor) and torch.allclose(got, expected, atol=1e-6), got


def test_export_of_an_artefact_saved_without_transformers_files(root, plain):
    """Artefacts written before config.json existed in them still export to a loadable directory."""
    assert isinstance(plain["old-exported"], torch.Tensor), plain["old-exported"]
    assert torch.equal(plain["old-exported"], _logits(load_pruned(root / "qwen2")))
