"""Device choice: resolve_device's rules, --device reaching load_model, batches following the model.

No GPU is needed: CUDA's presence is monkeypatched where a rule depends on it, load_model's move
is checked with the meta device, and the batch tests tell the library the model lives on a
device it cannot reach (``FAKE``) while a spy on ``rankadaptor.device.move`` records where each
batch was sent and which tensors went through it.
"""

import functools

import pytest
import torch

from rankadaptor import device as dev
from rankadaptor.cli import main
from rankadaptor.device import default_device, resolve_device
from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.ranks import RankPlan
from rankadaptor.lora.recover import RecoveryConfig, recover
from rankadaptor.models import loading
from rankadaptor.prune.pruning import PruneConfig, prune_model
from tests.tiny_models import TINY_TEXT, save_tiny_model_and_corpus, tiny_llama, tiny_tokenizer


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def saved(tmp_path):
    return save_tiny_model_and_corpus(tmp_path)


# ---- resolve_device -------------------------------------------------------------------------------
def test_auto_is_cpu_without_cuda_and_explicit_cpu_is_honoured(no_cuda):
    assert resolve_device(None) == resolve_device("auto") == torch.device("cpu")
    assert resolve_device("CPU") == resolve_device("cpu:0") == torch.device("cpu")


def test_auto_and_explicit_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(RankAdaptorError, match=r"'cuda:2'.*2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec, words", [
    ("cuda", "no CUDA GPU is usable here"),
    ("cuda:1", "no CUDA GPU is usable here"),
    ("gpu0", "not a device name"),
    ("", "not a device name"),
    ("meta", "not supported"),
])
def test_unusable_device_names_it_and_the_alternatives(no_cuda, spec, words):
    with pytest.raises(RankAdaptorError, match=words) as err:
        resolve_device(spec)
    assert repr(spec) in str(err.value) and "available here: cpu" in str(err.value)


def test_mps_without_mps(monkeypatch):
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    with pytest.raises(RankAdaptorError, match="'mps'.*not available here"):
        resolve_device("mps")


def test_default_device_scopes_what_none_means(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with default_device("cpu"):
        assert resolve_device(None) == torch.device("cpu")
        assert resolve_device("cuda") == torch.device("cuda")  # an explicit choice still wins
    assert resolve_device(None) == torch.device("cuda")  # restored: auto again
    with pytest.raises(RankAdaptorError, match="not a device name"):
        with default_device("banana"):
            pytest.fail("an invalid default must fail on entry")


# ---- load_model ---------------------------------------------------------------------------------
def test_load_model_moves_to_the_resolved_device(saved, monkeypatch):
    model_dir, _ = saved
    assert all(p.device.type == "cpu" for p in loading.load_model(model_dir, device="cpu").model.parameters())
    # the meta device stands in for a GPU: loading must end with the weights on what resolve_device said
    monkeypatch.setattr(loading, "resolve_device", lambda spec: torch.device("meta"))
    loaded = loading.load_model(model_dir)
    assert all(p.is_meta for p in loaded.model.parameters())


def test_load_model_refuses_cuda_before_loading(saved, monkeypatch, no_cuda):
    monkeypatch.setattr(loading, "_load_hf_dir", lambda *a: pytest.fail("loaded despite the bad device"))
    with pytest.raises(RankAdaptorError, match="'cuda'"):
        loading.load_model(saved[0], device="cuda")


# ---- the CLI flag -------------------------------------------------------------------------------
class ResolveSpy:
    """Wraps load_model's resolve_device: what the process default was, what was chosen."""

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(loading, "resolve_device", self)

    def __call__(self, spec):
        chosen = resolve_device(spec)
        self.calls.append((spec, dev._default, chosen))
        return chosen


def _recover_args(saved, out):
    model_dir, corpus = saved
    return ["recover", str(model_dir), "--ranks", "uniform:2", "--data", str(corpus), "--steps", "1",
            "--batch-size", "2", "--seq-len", "16", "--out", str(out)]


def test_cli_device_cpu_reaches_load_model(tmp_path, saved, monkeypatch):
    spy = ResolveSpy(monkeypatch)
    out = tmp_path / "ad"
    assert main(["--threads", "1", "--device", "cpu", *_recover_args(saved, out)]) == 0
    assert (out / "adapter_model.safetensors").is_file()
    # the estimate's weightless copy and the load itself both follow the flag
    assert spy.calls and set(spy.calls) == {(None, "cpu", torch.device("cpu"))}
    assert dev._default is None  # the flag does not outlive the command


def test_cli_device_cuda_without_cuda_exits_2_before_any_work(tmp_path, saved, monkeypatch, capsys, no_cuda):
    spy = ResolveSpy(monkeypatch)
    out = tmp_path / "ad"
    assert main(["--device", "cuda", *_recover_args(saved, out)]) == 2
    err = capsys.readouterr().err
    assert "rankadaptor recover: error: device 'cuda'" in err and "available here: cpu" in err
    assert spy.calls == [] and not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "m"]


# ---- batches follow the model -------------------------------------------------------------------
FAKE = torch.device("cuda", 7)  # where the library is told the model lives; never allocated on


class BatchSpy:
    """Stands in for ``dev.model_device`` (answers FAKE) and ``dev.move`` (records, keeps the tensor).

    The model's forward then checks that every tensor it is called with went through ``move``
    (same storage: views of a moved batch count) and sits beside the weights. Code that builds an
    input without moving it, or moves it to a device other than the model's, fails here.
    """

    def __init__(self, monkeypatch, model):
        self.asked, self.kept, self.forwards = [], [], 0
        monkeypatch.setattr(dev, "model_device", lambda m: FAKE)
        monkeypatch.setattr(dev, "move", self.move)
        inner = model.forward  # wrapped on the instance: PEFT calls ``base.forward`` directly, past any hook

        @functools.wraps(inner)
        def checked(*args, **kwargs):
            self.check(model, args, kwargs)
            return inner(*args, **kwargs)

        model.forward = checked

    def move(self, obj, device):
        self.asked.append(torch.device(device))
        tensors = obj.values() if isinstance(obj, dict) else [obj]
        self.kept.extend(t for t in tensors if torch.is_tensor(t))  # alive, so no storage address is reused
        return obj

    def check(self, module, args, kwargs):
        moved = {t.untyped_storage().data_ptr() for t in self.kept}
        weights = next(module.parameters()).device
        for name, value in [*enumerate(args), *kwargs.items()]:
            if torch.is_tensor(value):
                assert value.untyped_storage().data_ptr() in moved, f"input {name} never went through move()"
                assert value.device == weights
        self.forwards += 1

    def assert_all_to_model_device(self):
        assert self.forwards and self.asked and set(self.asked) == {FAKE}


def test_recover_and_validation_batches_go_to_the_model_device(tmp_path, saved, monkeypatch):
    model = tiny_llama()
    spy = BatchSpy(monkeypatch, model)
    cfg = RecoveryConfig(max_steps=2, batch_size=2, micro_batch_size=1, seq_len=16, eval_every=1, max_val=2)
    recover(model, tiny_tokenizer(), RankPlan(ranks=[2] * 4), cfg, data=saved[1])
    spy.assert_all_to_model_device()
    assert spy.forwards == 2 * 2 + 2 * 2  # 2 steps x 2 micro-batches, 2 validations x 2 examples


@pytest.mark.parametrize("method, importance", [("llm-pruner", "element2"), ("shortened-ppl", "l1"),
                                                ("shortened-taylor", "l1"), ("shortgpt", "l1")])
def test_pruning_calibration_batches_go_to_the_model_device(monkeypatch, method, importance):
    model = tiny_llama(num_hidden_layers=6)
    spy = BatchSpy(monkeypatch, model)
    cfg = PruneConfig(method=method, importance=importance, ratio=0.1, layers=(1, 5), calibration=2, seq_len=16)
    prune_model(model, tiny_tokenizer(), cfg, TINY_TEXT * 30, inplace=True)  # a copy would lose the check
    spy.assert_all_to_model_device()


def test_checkpoint_restore_puts_callback_state_beside_the_weights(monkeypatch):
    from rankadaptor.lora import checkpoint as ckpt

    class Stateful:
        def state_dict(self):
            return {"ema": torch.ones(3), "steps": 4}

        def load_state_dict(self, state):
            self.loaded = state

    model, cb = torch.nn.Linear(2, 2), Stateful()
    optimizer = torch.optim.AdamW(model.parameters())
    state = ckpt.snapshot(model, optimizer, [cb], [], [], 0.0, [])
    sent = []
    monkeypatch.setattr(dev, "model_device", lambda m: FAKE)
    monkeypatch.setattr(dev, "move", lambda obj, device: sent.append((obj, device)) or obj)
    ckpt.restore(state, model, optimizer, [cb])
    assert [(list(obj), device) for obj, device in sent] == [(["ema", "steps"], FAKE)]
    assert cb.loaded["steps"] == 4 and torch.equal(cb.loaded["ema"], torch.ones(3))
