"""Bad input through the CLI: exit code 2, a message naming the problem, and nothing on disk changed.

One case per kind of damage to each input the commands read: rank plans, recovery configs, data
files, PEFT adapters, pruned artefacts, recovery checkpoints and method options. Each case snapshots
every file under its own directory and the shared inputs (names + sha256) before and after.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.hardening_helpers import assert_refused, base, write_file  # noqa: F401  (base is a fixture)


# ---- builders: each returns the argv for one bad input written under ``tmp`` --------------------
def _recover(base: Path, tmp: Path, *extra, model=None, data=None) -> list[str]:
    return ["recover", str(model or base / "model"), "--steps", "1", "--batch-size", "2", "--seq-len", "16",
            "--data", str(data or base / "corpus.txt"), "--out", str(tmp / "out"), *extra]


def plan(content):
    return lambda base, tmp: _recover(base, tmp, "--ranks", write_file(tmp, "plan.json", content))


def config(content):
    return lambda base, tmp: _recover(base, tmp, "--ranks", "uniform:2",
                                      "--config", write_file(tmp, "cfg.json", content))


def data(name, content):
    return lambda base, tmp: _recover(base, tmp, "--ranks", "uniform:2", data=write_file(tmp, name, content))


def adapter(damage):
    def build(base, tmp):
        shutil.copytree(base / "adapter", tmp / "adapter")
        damage(tmp / "adapter")
        return ["compress", str(tmp / "adapter"), "--threshold", "0", "--out", str(tmp / "out")]
    return build


def pruned(damage, command="recover"):
    def build(base, tmp):
        shutil.copytree(base / "pruned", tmp / "pruned")
        damage(tmp / "pruned")
        if command == "prune":
            return ["prune", str(tmp / "pruned"), "--ratio", "0.1", "--importance", "l1", "--layers", "1:3",
                    "--out", str(tmp / "out")]
        return _recover(base, tmp, "--ranks", "uniform:2", model=tmp / "pruned")
    return build


def edit_json(name, change):
    def damage(d: Path):
        obj = json.loads((d / name).read_text())
        change(obj)
        (d / name).write_text(json.dumps(obj))
    return damage


def edit_tensors(name, change):
    def damage(d: Path):
        tensors = load_file(str(d / name))
        change(tensors)
        save_file(tensors, str(d / name))
    return damage


def truncate(name, keep=100):
    return lambda d: (d / name).write_bytes((d / name).read_bytes()[:keep])


def first_lora_b(tensors):
    return next(k for k in sorted(tensors) if "lora_B" in k)


def damaged_checkpoint(meta_text):
    def build(base, tmp):
        step = tmp / "out.checkpoints" / "step-000001"
        step.mkdir(parents=True)
        (step / "checkpoint.json").write_text(meta_text)
        save_file({"x": torch.zeros(1)}, str(step / "tensors.safetensors"))
        return _recover(base, tmp, "--ranks", "uniform:2", "--checkpoint-every", "1")
    return build


CASES = {
    # rank plans
    "plan-not-json": (plan("{"), "is not valid JSON"),
    "plan-binary": (plan(b"\xff\xfe\x00\x01"), "not UTF-8 text"),
    "plan-not-object": (plan("[1, 2]"), "must be a JSON object with a 'ranks' list"),
    "plan-rank-string": (plan('{"ranks": ["a", 1, 1, 1]}'), r"ranks\[0\] = 'a' must be an integer"),
    "plan-rank-fraction": (plan('{"ranks": [1.5, 1, 1, 1]}'), r"ranks\[0\] = 1.5"),
    "plan-rank-negative": (plan('{"ranks": [-1, 1, 1, 1]}'), r"ranks\[0\] = -1"),
    "plan-dropout-string": (plan('{"ranks": [1, 1, 1, 1], "dropout": "x"}'), "dropout 'x' must be a number"),
    "plan-targets-int": (plan('{"ranks": [1, 1, 1, 1], "target_modules": 5}'), "target_modules 5 must be a list"),
    "plan-overrides-list": (plan('{"ranks": [1, 1, 1, 1], "overrides": [1]}'), "overrides .* must be an object"),
    "plan-alpha-nan": (plan('{"ranks": [1, 1, 1, 1], "alpha": NaN}'), "alpha nan must be a positive number"),
    "plan-model-int": (plan('{"ranks": [1, 1, 1, 1], "model": 3}'), "model 3 must be the model's identity"),
    "plan-unknown-key": (plan('{"ranks": [1, 1, 1, 1], "rank": 2}'), r"unknown keys \['rank'\]"),
    "plan-wrong-format": (plan('{"format": "other/2", "ranks": [1, 1, 1, 1]}'), "expected 'rankadaptor-rank-plan/1'"),
    "plan-n-layers": (plan('{"n_layers": 5, "ranks": [1, 1, 1, 1]}'), "n_layers=5 but lists 4"),
    "plan-wrong-layer-count": (plan('{"ranks": [1, 1, 1]}'), "3 layer ranks but the model has 4"),
    "plan-rank-too-big": (plan('{"ranks": [100, 1, 1, 1]}'), "exceeds min"),
    # recovery configs
    "config-not-json": (config("{"), "recovery config .* is not valid JSON"),
    "config-not-object": (config("[]"), "must be a JSON object of RecoveryConfig fields"),
    "config-unknown-key": (config('{"lrr": 0.1}'), r"unknown key\(s\) \['lrr'\]"),
    "config-lr-string": (config('{"lr": "fast"}'), "lr = 'fast' must be a finite number"),
    "config-batch-fraction": (config('{"batch_size": 2.5}'), "batch_size = 2.5 must be an integer"),
    "config-seed-bool": (config('{"seed": true}'), "seed = True must be an integer"),
    "config-lr-infinite": (config('{"lr": Infinity}'), "lr = inf must be a finite number"),
    "config-checkpoint-negative": (config('{"checkpoint_every": -1}'), "checkpoint_every -1 must be >= 0"),
    # data files
    "data-empty-jsonl": (data("d.jsonl", ""), "gives 0 training and 0 validation examples"),
    "data-too-short": (data("d.txt", "hi"), "gives 0 training"),
    "data-binary": (data("d.txt", b"\x00\xff" * 64), "NUL bytes, so it is a binary file"),
    "data-json-not-utf8": (data("d.json", b'[{"instruction": "\xff", "output": "x"}]'), "not UTF-8 text"),
    "data-json-object": (data("d.json", '{"instruction": "a"}'), "expected a JSON list of records"),
    "data-record-field": (data("d.jsonl", '{"instruction": "a"}\n'), "line 1: field 'output' missing"),
    "data-bad-line": (data("d.jsonl", '{"instruction": "a", "output": "b"}\nnot json\n'), r"d.jsonl:2: not a JSON"),
    "data-missing": (lambda base, tmp: _recover(base, tmp, "--ranks", "uniform:2", data=tmp / "nope.jsonl"),
                     "nope.jsonl not found"),
    # PEFT adapters (compress)
    "adapter-config-not-json": (adapter(lambda d: (d / "adapter_config.json").write_text("{")), "is not valid JSON"),
    "adapter-no-config": (adapter(lambda d: (d / "adapter_config.json").unlink()), "no adapter_config.json"),
    "adapter-alpha-string": (adapter(edit_json("adapter_config.json", lambda c: c.update(lora_alpha="x"))),
                             "lora_alpha='x'; expected a positive number"),
    "adapter-r-zero": (adapter(edit_json("adapter_config.json", lambda c: c.update(r=0))), "r=0; expected a positive"),
    "adapter-rank-pattern-list": (adapter(edit_json("adapter_config.json", lambda c: c.update(rank_pattern=[1]))),
                                  "rank_pattern must be an object"),
    "adapter-rank-pattern-regex": (adapter(edit_json("adapter_config.json", lambda c: c.update(rank_pattern={"(": 2}))),
                                   "not a valid regular expression"),
    "adapter-rank-pattern-value": (adapter(edit_json("adapter_config.json",
                                                     lambda c: c.update(rank_pattern={"q_proj": "x"}))),
                                   "expected a positive integer"),
    "adapter-rslora-string": (adapter(edit_json("adapter_config.json", lambda c: c.update(use_rslora="yes"))),
                              "use_rslora='yes'; expected true or false"),
    "adapter-adalora": (adapter(edit_json("adapter_config.json", lambda c: c.update(peft_type="ADALORA"))),
                        "not a LoRA adapter"),
    "adapter-rank-mismatch": (adapter(edit_json("adapter_config.json", lambda c: c.update(r=3))),
                              "the config and weights do not belong together"),
    "adapter-truncated": (adapter(truncate("adapter_model.safetensors")), "corrupt or truncated"),
    "adapter-empty-weights": (adapter(truncate("adapter_model.safetensors", 0)), "corrupt or truncated"),
    "adapter-pickle-only": (adapter(lambda d: (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")),
                            "a pickle"),
    "adapter-nan": (adapter(edit_tensors("adapter_model.safetensors",
                                         lambda t: t[first_lora_b(t)].view(-1)[0].fill_(float("nan")))),
                    "lora_B has 1 NaN/Inf value.*the adapter is broken"),
    "adapter-int-weights": (adapter(edit_tensors("adapter_model.safetensors",
                                                 lambda t: t.update({k: v.long() for k, v in t.items()}))),
                            "LoRA factors are floating point"),
    "adapter-missing-b": (adapter(edit_tensors("adapter_model.safetensors", lambda t: t.pop(first_lora_b(t)))),
                          "has no lora_B tensor"),
    # pruned artefacts (loaded by recover, and by prune)
    "pruned-not-json": (pruned(lambda d: (d / "pruning.json").write_text("{")), "is not valid JSON"),
    "pruned-not-object": (pruned(lambda d: (d / "pruning.json").write_text("[]")), "not a rankadaptor pruned-model"),
    "pruned-no-layers": (pruned(edit_json("pruning.json", lambda m: m.pop("layers"))), "has no 'layers' list"),
    "pruned-no-config": (pruned(edit_json("pruning.json", lambda m: m.pop("config"))), "has no 'config' object"),
    "pruned-layer-field": (pruned(edit_json("pruning.json", lambda m: m["layers"][0].pop("num_heads"))),
                           r"layers\[0\].num_heads = None"),
    "pruned-layer-string": (pruned(edit_json("pruning.json", lambda m: m["layers"][1].update(intermediate_size="x"))),
                            r"layers\[1\].intermediate_size = 'x'"),
    "pruned-layer-count": (pruned(edit_json("pruning.json", lambda m: m["layers"].pop())), "lists 3 layers"),
    "pruned-dtype": (pruned(edit_json("pruning.json", lambda m: m.update(dtype="float99"))), "not a floating-point torch dtype"),
    "pruned-dtype-int8": (pruned(edit_json("pruning.json", lambda m: m.update(dtype="int8"))),
                          "'int8' is not a floating-point torch dtype"),
    "pruned-hidden-float": (pruned(edit_json("pruning.json", lambda m: m["config"].update(hidden_size=1e9))),
                            "config is not a valid llama config .*hidden_size.*prune the model again"),
    "pruned-heads-zero": (pruned(edit_json("pruning.json", lambda m: m["config"].update(num_attention_heads=0))),
                          "config is not a valid llama config"),
    "pruned-family": (pruned(edit_json("pruning.json", lambda m: m["config"].update(model_type="gpt2"))),
                      "unsupported architecture 'gpt2'"),
    "pruned-width": (pruned(edit_json("pruning.json", lambda m: m["layers"][1].update(
        intermediate_size=m["layers"][1]["intermediate_size"] - 1))), "does not match the shapes in pruning.json"),
    "pruned-truncated": (pruned(truncate("model.safetensors", 200)), "corrupt or truncated"),
    "pruned-no-weights": (pruned(lambda d: (d / "model.safetensors").unlink()), "artefact is incomplete"),
    "prune-input-damaged": (pruned(edit_json("pruning.json", lambda m: m.pop("layers")), command="prune"),
                            "has no 'layers' list"),
    "prune-input-truncated": (pruned(truncate("model.safetensors", 200), command="prune"), "corrupt or truncated"),
    # recovery checkpoints and method options
    "checkpoint-not-json": (damaged_checkpoint("{"), "recovery checkpoint .* is not valid JSON"),
    "checkpoint-wrong-format": (damaged_checkpoint('{"format": "x"}'), "is not a rankadaptor-recovery-checkpoint"),
    "checkpoint-no-state": (damaged_checkpoint('{"format": "rankadaptor-recovery-checkpoint/1"}'), "damaged"),
    "recover-out-under-a-file": (lambda base, tmp: _recover(base, tmp, "--ranks", "uniform:2", "--out",
                                                            write_file(tmp, "f.txt", "x") + "/sub/out"),
                                 "is a file, not a directory"),
    "compress-out-under-a-file": (lambda base, tmp: ["compress", str(base / "adapter"), "--threshold", "0", "--out",
                                                     write_file(tmp, "f.txt", "x") + "/out"], "is a file, not a directory"),
    "method-arg-unknown": (lambda base, tmp: _recover(base, tmp, "--method", "adalora", "--method-arg", "foo=1"),
                           "bad --method-arg .*foo.*valid keys"),
    "method-arg-type": (lambda base, tmp: _recover(base, tmp, "--method", "prunedlora", "--method-arg", "init_rank=x"),
                        "init_rank = 'x' must be an integer"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_a_message_and_changes_nothing(case, base, tmp_path, capsys):
    build, message = CASES[case]
    argv = build(base, tmp_path)
    assert_refused(argv, message, capsys, tmp_path, base)
    assert not (tmp_path / "out").exists()
