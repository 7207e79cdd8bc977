"""The scale flags end to end on tiny saved models: --gradient-checkpointing, --distill, --device-map,
the estimate printed before a long run, and each one's bad input refused with exit 2 before any work."""

import json

import pytest
import torch

from rankadaptor import device as dev
from rankadaptor import estimate
from rankadaptor.cli import main
from rankadaptor.models import loading
from tests.eval.fixtures import build_olmo_eval
from tests.tiny_models import save_tiny_model_and_corpus, tiny_llama, tiny_tokenizer


@pytest.fixture
def saved(tmp_path):
    return save_tiny_model_and_corpus(tmp_path)


@pytest.fixture
def pruned(tmp_path, saved):
    model_dir, corpus = saved
    out = tmp_path / "pruned"
    assert main(["prune", str(model_dir), "--ratio", "0.2", "--importance", "l2", "--layers", "1:3",
                 "--calibration-text", str(corpus), "--calibration", "2", "--seq-len", "16", "--out", str(out)]) == 0
    return out, corpus


def _recover(model, corpus, out, *extra):
    return main(["recover", str(model), "--ranks", "uniform:2", "--data", str(corpus), "--steps", "2",
                 "--batch-size", "2", "--seq-len", "16", "--out", str(out), *extra])


def _record(out):
    return json.loads((out / "recovery.json").read_text())


def test_gradient_checkpointing_and_the_estimate(tmp_path, saved, capsys):
    model_dir, corpus = saved
    assert _recover(model_dir, corpus, tmp_path / "a", "--gradient-checkpointing") == 0
    assert _record(tmp_path / "a")["config"]["gradient_checkpointing"] is True
    printed = capsys.readouterr().out
    assert "estimate for recover on cpu (float32): peak" in printed and "available" in printed


def test_distill_from_the_pruned_artefacts_base(tmp_path, pruned, saved):
    artefact, corpus = pruned
    assert _recover(artefact, corpus, tmp_path / "d", "--distill", "--distill-alpha", "0.7") == 0
    rec = _record(tmp_path / "d")
    assert rec["distill"]["alpha"] == 0.7 and rec["distill"]["temperature"] == 2.0
    assert rec["distill"]["teacher"]["path"] == str(saved[0].resolve())  # the unpruned model it came from
    assert all("kl" in c and "ce" in c for c in rec["loss_curve"])


def test_device_map_auto_without_a_gpu_is_the_single_device_path(tmp_path, saved, no_cuda):
    model_dir, corpus = saved
    assert _recover(model_dir, corpus, tmp_path / "plain") == 0
    assert _recover(model_dir, corpus, tmp_path / "mapped", "--device-map", "auto") == 0
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("plain", "mapped"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _record(tmp_path / "mapped")["device"] == "cpu"


def test_eval_device_map_auto_without_a_gpu(tmp_path, saved, monkeypatch, no_cuda):
    root = build_olmo_eval(tmp_path / "data")
    monkeypatch.setattr("rankadaptor.eval.tasks.data_dir", lambda: root)
    out = tmp_path / "res.json"
    assert main(["eval", str(saved[0]), "--tasks", "piqa", "--limit", "2", "--backend", "fast",
                 "--device-map", "auto", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["tasks"]["piqa"]["n"] == 2


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def wrong_teacher(tmp_path):
    path = tmp_path / "teacher"
    tiny_llama(vocab_size=330).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("case, words", [
    ("distill-not-pruned", "is not a pruned artefact; pass --teacher MODEL"),
    ("teacher-without-distill", "--teacher names the model to distil from; add --distill"),
    ("wrong-vocabulary", "the teacher predicts 330 token ids but the student 320"),
    ("bad-alpha", "distillation alpha 2.0 must be in [0, 1]"),
    ("offload-without-map", "--allow-cpu-offload only applies with --device-map auto"),
    ("map-and-device", "--device cpu and --device-map auto both say where the model goes"),
    ("map-cannot-place", "--device-map auto cannot place the model's"),
    ("does-not-fit", "this run needs about"),
])
def test_bad_input_exits_2_before_any_work(tmp_path, saved, wrong_teacher, capsys, monkeypatch, case, words):
    model_dir, corpus = saved
    out = tmp_path / "o"
    argv, extra = [], []
    if case == "distill-not-pruned":
        extra = ["--distill"]
    elif case == "teacher-without-distill":
        extra = ["--teacher", str(model_dir)]
    elif case == "wrong-vocabulary":
        extra = ["--distill", "--teacher", str(wrong_teacher)]
    elif case == "bad-alpha":
        extra = ["--distill", "--teacher", str(model_dir), "--distill-alpha", "2"]
    elif case == "offload-without-map":
        extra = ["--allow-cpu-offload"]
    elif case == "map-and-device":
        argv, extra = ["--device", "cpu"], ["--device-map", "auto"]
    elif case == "map-cannot-place":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (100_000, 10**9))
        extra = ["--device-map", "auto"]
    elif case == "does-not-fit":
        monkeypatch.setattr(estimate, "available_memory", lambda device: 1000)
    monkeypatch.setattr(loading, "_load_hf_dir", lambda *a: pytest.fail("weights loaded despite the bad input"))
    assert main([*argv, "recover", str(model_dir), "--ranks", "uniform:2", "--data", str(corpus), "--steps", "1",
                 "--out", str(out), *extra]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_no_memory_check_runs_what_the_estimate_refuses(tmp_path, saved, monkeypatch):
    monkeypatch.setattr(estimate, "available_memory", lambda device: 1000)
    model_dir, corpus = saved
    assert _recover(model_dir, corpus, tmp_path / "a") == 2
    assert main(["--no-memory-check", "recover", str(model_dir), "--ranks", "uniform:2", "--data", str(corpus),
                 "--steps", "1", "--batch-size", "2", "--seq-len", "16", "--out", str(tmp_path / "b")]) == 0


def test_prune_and_search_print_their_estimates(tmp_path, saved, capsys, monkeypatch):
    model_dir, corpus = saved
    assert main(["prune", str(model_dir), "--ratio", "0.2", "--layers", "1:3", "--calibration-text", str(corpus),
                 "--calibration", "2", "--seq-len", "16", "--out", str(tmp_path / "p")]) == 0
    assert "estimate for prune on cpu (float32)" in capsys.readouterr().out
    monkeypatch.setattr(estimate, "available_memory", lambda device: 1000)
    assert main(["search", str(model_dir), "--study", "s", "--storage", f"sqlite:///{tmp_path / 's.db'}",
                 "--trials", "1", "--out", str(tmp_path / "plan.json"), "--candidates", "2,4",
                 "--fixed-first", "1", "--fixed-last", "1"]) == 2
    assert "this run needs about" in capsys.readouterr().err and not (tmp_path / "s.db").exists()
    assert dev._default_dtype is None
