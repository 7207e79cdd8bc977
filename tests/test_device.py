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


# ---- precision ----------------------------------------------------------------------------------
@pytest.fixture
def gpu(monkeypatch):
    """A CUDA GPU of a chosen compute capability, as far as rankadaptor.device can tell."""
    def make(capability):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Old GPU")
    return make


def test_auto_dtype_is_float32_on_the_cpu_and_bfloat16_on_a_gpu_that_has_it(no_cuda, monkeypatch, gpu):
    assert dev.resolve_dtype(None, "cpu") == dev.resolve_dtype("auto", "cpu") == torch.float32
    assert dev.resolve_dtype("bfloat16", "cpu", training=True) == torch.bfloat16
    assert dev.resolve_dtype(torch.float16, "cpu") == torch.float16  # inference may run half precision
    gpu((9, 0))
    assert dev.resolve_dtype("auto", "cuda") == torch.bfloat16
    gpu((7, 0))
    assert dev.resolve_dtype("auto", "cuda") == torch.float32  # no bfloat16, and float16 training needs scaling
    assert dev.resolve_dtype("float16", "cuda", training=True) == torch.float16


@pytest.mark.parametrize("spec, device, words", [
    ("float16", "cpu", "float16 cannot train on the CPU"),
    ("bfloat16", "cuda", r"GPU 0 \(Old GPU, compute capability 7\.5\) has no bfloat16 support"),
    ("int8", "cpu", "dtype 'int8' unknown; choose one of auto, float32, bfloat16, float16"),
])
def test_a_dtype_the_device_cannot_run_is_refused(gpu, spec, device, words):
    if device == "cuda":
        gpu((7, 5))
    with pytest.raises(RankAdaptorError, match=words):
        dev.resolve_dtype(spec, device, training=True)


def test_load_model_reads_weights_in_the_default_dtype(saved):
    with dev.default_dtype("bfloat16"):
        loaded = loading.load_model(saved[0])
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert loaded.identity["dtype"] == "torch.bfloat16"
    assert {p.dtype for p in loading.load_model(saved[0]).model.parameters()} == {torch.float32}  # scope ended


def test_cli_dtype_bfloat16_recovery_records_it(tmp_path, saved):
    out = tmp_path / "ad"
    assert main(["--dtype", "bfloat16", *_recover_args(saved, out)]) == 0
    rec = __import__("json").loads((out / "recovery.json").read_text())
    assert rec["dtype"] == "bfloat16" and rec["lora_dtype"] == "float32" and rec["model"]["dtype"] == "torch.bfloat16"


@pytest.mark.parametrize("argv, words", [
    (["--dtype", "float16"], "float16 cannot train on the CPU"),
    (["--dtype", "bfloat16", "--device", "cuda"], "no bfloat16 support"),
])
def test_cli_dtype_the_device_cannot_run_exits_2_before_any_work(tmp_path, saved, capsys, monkeypatch, gpu, argv, words):
    if "cuda" in argv:
        gpu((7, 0))
    monkeypatch.setattr(loading, "_load_hf_dir", lambda *a: pytest.fail("loaded despite the bad dtype"))
    out = tmp_path / "ad"
    assert main([*argv, *_recover_args(saved, out)]) == 2
    assert words in capsys.readouterr().err and not out.exists()


def test_cli_float16_eval_on_the_cpu_is_not_training(saved):
    from rankadaptor.cli import TRAINING_COMMANDS

    assert "eval" not in TRAINING_COMMANDS and {"recover", "prune", "search", "demo"} <= TRAINING_COMMANDS
    with dev.default_dtype("float16", "cpu", training=False):
        assert dev.resolve_dtype(None, "cpu") == torch.float16


# ---- device maps --------------------------------------------------------------------------------
@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # accelerate checks the indices exist


def test_device_map_spreads_blocks_over_two_gpus(two_gpus):
    model = tiny_llama()
    plan = dev.plan_device_map(model, free={0: 800_000, 1: 1_200_000}, headroom=1.0)
    assert set(plan.values()) == {0, 1}
    layers = [plan.get(f"model.layers.{i}") for i in range(4)]
    assert layers == sorted(layers) and None not in layers  # whole blocks, in order


def test_device_map_with_one_device_is_a_plain_move(two_gpus):
    assert dev.plan_device_map(tiny_llama(), free={0: 10**9}) == {"": 0}
    assert dev.plan_device_map(tiny_llama(), free={}) == {"": "cpu"}  # no GPU: the CPU holds it all


def test_device_map_refuses_cpu_offload_unless_asked(two_gpus, monkeypatch):
    model = tiny_llama()  # 0.64 MiB of weights against 2 x 0.2 MiB of GPU
    with pytest.raises(RankAdaptorError, match=r"cannot place the model's .* of weights on the visible GPUs "
                                               r"\(GPU 0: .* free, GPU 1: .* free.*--allow-cpu-offload"):
        dev.plan_device_map(model, free={0: 200_000, 1: 200_000})
    monkeypatch.setattr(dev, "cpu_available_memory", lambda: 10**9)
    plan = dev.plan_device_map(model, free={0: 200_000, 1: 200_000}, allow_offload=True)
    assert "cpu" in plan.values()
    monkeypatch.setattr(dev, "cpu_available_memory", lambda: 1000)
    with pytest.raises(RankAdaptorError, match="on the visible GPUs and the CPU"):
        dev.plan_device_map(model, free={0: 200_000, 1: 200_000}, allow_offload=True)


def test_load_model_plans_the_map_before_reading_weights(saved, monkeypatch, two_gpus):
    monkeypatch.setattr(dev, "gpu_free_memory", lambda: {0: 100_000, 1: 100_000})
    monkeypatch.setattr(loading, "_load_hf_dir", lambda *a: pytest.fail("read the weights of an unplaceable model"))
    with pytest.raises(RankAdaptorError, match="cannot place"):
        loading.load_model(saved[0], device_map="auto")


def test_demo_workers_load_models_in_the_clis_dtype(tmp_path, monkeypatch, no_cuda):
    """The demo's worker processes see no `with` block: run_demo resolves --dtype and hands it over."""
    from rankadaptor.demo import run as demo_run
    from rankadaptor.demo.workers import execute_in_worker

    class Probe:
        def execute(self, key):
            return dev.resolve_dtype(None, "cpu")

    assert execute_in_worker(Probe, "cpu", "bfloat16", "unit") == torch.bfloat16
    monkeypatch.setattr(demo_run.Demo, "run_all", lambda self, **kw: kw)
    with dev.default_dtype("bfloat16"):
        handed = demo_run.run_demo("smoke", tmp_path / "run", workers=1)
    assert handed["dtype"] == "bfloat16" and handed["device"] == "cpu"
