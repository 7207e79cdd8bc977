"""The memory estimate against measured peaks, the refusal with its numbers, and the probe."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rankadaptor.errors import RankAdaptorError
from rankadaptor.estimate import Estimate, Shapes, check, estimate_eval, estimate_prune, estimate_recover, matmul_rate
from tests.tiny_models import tiny_llama

ROOT = Path(__file__).resolve().parents[1]
# Stated tolerance: the predicted step memory (activations, loss, LoRA gradients and AdamW moments)
# is within 15 % of the measured peak resident-set growth of the step (measured: within 4 %).
TOLERANCE = 0.15


CASES = [("float32", "no", 4, 8192, 4, 128), ("bfloat16", "no", 4, 8192, 4, 128), ("bfloat16", "gc", 8, 8192, 4, 128)]


@pytest.fixture(scope="module")
def measured():
    """Each case's measured and predicted step memory, from one fresh process."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    args = [",".join(map(str, case)) for case in CASES]
    out = subprocess.run([sys.executable, "-m", "tests.peak_probe", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return dict(zip(CASES, json.loads(out.stdout.strip().splitlines()[-1]), strict=True))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="CPU peak memory is measured on Linux")
@pytest.mark.parametrize("case", CASES)
def test_estimate_matches_the_measured_peak_of_a_recovery_step(measured, case):
    res = measured[case]
    assert res["measured"] > 20 * 2**20  # the step itself, not noise
    assert abs(res["predicted"] / res["measured"] - 1) <= TOLERANCE, res


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="CPU peak memory is measured on Linux")
def test_estimate_matches_the_measured_peak_of_a_taylor_prune():
    """Lean Taylor + width pruning of a 3-layer, 1024-wide bfloat16 LLaMA: the predicted peak above the
    model within the tolerance (measured 2 % over; before the lingering gradients and statistics were
    freed the prune peaked 80 % above it, and a block's worth more for every further block)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    out = subprocess.run([sys.executable, "-m", "tests.peak_probe", "prune,bfloat16,3,1024,2816"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])[0]
    assert res["measured"] > 50 * 2**20  # the statistics of a block are 45 MiB: not noise
    assert abs(res["predicted"] / res["measured"] - 1) <= TOLERANCE, res


def test_parts_follow_the_settings():
    model = tiny_llama()
    base = estimate_recover(model, 4, 64, 1000, device="cpu", probe=False, available=1 << 40)
    assert base.parts["weights"] == sum(p.numel() * 4 for p in model.parameters())  # tied: counted once
    assert base.parts["lora+adamw"] == 16 * 1000
    half = estimate_recover(model.to(torch.bfloat16), 4, 64, 1000, device="cpu", probe=False, available=1 << 40)
    assert half.parts["weights"] * 2 == base.parts["weights"] and half.dtype == "bfloat16"
    ckpt = estimate_recover(tiny_llama(), 4, 64, 1000, device="cpu", gradient_checkpointing=True, probe=False,
                            available=1 << 40)
    assert ckpt.parts["activations"] < base.parts["activations"] and ckpt.flops == pytest.approx(1.5 * base.flops)
    micro = estimate_recover(tiny_llama(), 4, 64, 1000, device="cpu", micro_batch_size=1, probe=False,
                             available=1 << 40)
    assert micro.parts["activations"] * 4 == pytest.approx(base.parts["activations"], rel=1e-9)
    assert micro.flops == pytest.approx(base.flops)
    teacher = estimate_recover(tiny_llama(), 4, 64, 1000, device="cpu", teacher=tiny_llama(), probe=False,
                               available=1 << 40)
    assert teacher.parts["teacher"] == base.parts["weights"] and teacher.flops == pytest.approx(1.5 * base.flops)
    prune = estimate_prune(tiny_llama(), 10, 64, fisher=True, first_layer=2, device="cpu", probe=False,
                           available=1 << 40)
    block = sum(p.numel() for p in tiny_llama().model.layers[0].parameters())
    # float32 sum and squares + one sequence's gradients, and the scoring products of the widest weight
    assert prune.parts["gradients"] == block * 2 * 4  # float32 sum and squares of one block
    assert prune.parts["working set"] == max(block * 4 + 64 * (64 * 8 + 4 * 192 + 4 * 4 + 4 * 3 * 128 + 4 * 320),
                                             64 * 128 * 14, 64 * 320 * 12)  # one sequence's gradients win here
    assert prune.parts["cached inputs"] == 10 * 64 * 64 * 4 * 3  # blocks 2, 3 and the upstream gradient
    assert estimate_eval(tiny_llama(), 2, 64, device="cpu", probe=False, available=1 << 40).peak > base.parts["weights"]


def test_pruned_layers_are_counted_at_their_own_width():
    from rankadaptor.prune.pruning import PruneConfig, prune_model
    from tests.tiny_models import TINY_TEXT, tiny_tokenizer

    model = tiny_llama(num_hidden_layers=6)
    full = Shapes.of(model)
    pruned, _ = prune_model(model, tiny_tokenizer(), PruneConfig(ratio=0.3, layers=(1, 5), importance="l2"),
                            TINY_TEXT * 30)
    shapes = Shapes.of(pruned)
    assert shapes.layers[0] == full.layers[0] and shapes.layers[2] != full.layers[2]
    assert shapes.params == sum(p.numel() for p in pruned.parameters())  # the tied head once


def test_a_run_that_cannot_fit_is_refused_with_its_numbers():
    est = estimate_recover(tiny_llama(), 4, 64, 1000, device="cpu", probe=False, available=10_000)
    assert not est.fits()
    with pytest.raises(RankAdaptorError, match=r"needs about [\d.]+ MiB but cpu has 0\.0 MiB available.*--gradient-checkpointing"
                                               r".*--no-memory-check"):
        check(est)
    check(est, force=True)  # warns, goes on
    check(estimate_recover(tiny_llama(), 4, 64, 1000, device="cpu", probe=False, available=1 << 40))


def test_time_is_flops_over_the_probed_rate():
    rate = matmul_rate(torch.device("cpu"), torch.float32, seconds=0.02)
    assert rate > 1e6
    est = Estimate("recover", "cpu", "float32", {"weights": 1}, flops=4e9, rate=2e9)
    assert est.seconds == 2.0 and "~2 s per recovery step" in est.summary()
