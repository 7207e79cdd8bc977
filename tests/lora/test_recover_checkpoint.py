"""Resumable recovery: an interrupted run resumed from its checkpoint ends exactly where an
uninterrupted one does (plain LoRA, PrunedLoRA, AdaLoRA; in process and after SIGKILL)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rankadaptor.cli import main
from rankadaptor.errors import RankAdaptorError
from rankadaptor.lora.checkpoint import CheckpointStore, checkpoint_dir_for, decode, encode
from rankadaptor.lora.ranks import RankPlan
from rankadaptor.lora.methods import get_method
from rankadaptor.lora.recover import RecoveryConfig, recover
from tests.tiny_models import TINY_TEXT, tiny_llama, tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]


class Interrupted(Exception):
    pass


class StopAt:
    """Raises after optimizer step ``step`` (0-based), like a crash between two checkpoints."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, step, model, optimizer):
        if step == self.step:
            raise Interrupted


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(TINY_TEXT * 20))
    return path


def _weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def _assert_same_adapter(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-7, msg=k)
    assert json.loads((a / "adapter_config.json").read_text()) == json.loads((b / "adapter_config.json").read_text())
    la = [c["loss"] for c in json.loads((a / "recovery.json").read_text())["loss_curve"]]
    lb = [c["loss"] for c in json.loads((b / "recovery.json").read_text())["loss_curve"]]
    assert la == pytest.approx(lb, rel=0, abs=1e-6)


def _tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _method(kind: str):
    if kind == "plan":
        return None, RankPlan(ranks=[2, 3, 0, 4])  # default dropout 0.05: the RNG state matters
    if kind == "prunedlora":  # pruning events after steps 3 and 5 (then the target is reached)
        return get_method("prunedlora")(init_rank=4, target_rank=2, prune_every=2, prune_k=1, warmup_steps=1,
                                        scope="global"), None
    return get_method("adalora")(uniform_r=2, tinit_frac=0.1, tfinal_frac=0.2), None


@pytest.mark.parametrize("kind", ["plan", "prunedlora", "adalora"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, corpus, kind):
    tok = tiny_tokenizer()
    cfg = dict(max_steps=9, lr=5e-3, batch_size=4, micro_batch_size=2, seq_len=16, eval_every=4)
    method, plan = _method(kind)
    recover(tiny_llama(), tok, plan, RecoveryConfig(**cfg), data=corpus, method=method, out=tmp_path / "ref")

    out = tmp_path / "run"
    ckpts = checkpoint_dir_for(out)
    method, plan = _method(kind)
    with pytest.raises(Interrupted):
        recover(tiny_llama(), tok, plan, RecoveryConfig(**cfg, checkpoint_every=3), data=corpus, method=method,
                out=out, callbacks=[StopAt(4)])
    assert not out.exists() and CheckpointStore(ckpts).steps() == [3]

    method, plan = _method(kind)
    res = recover(tiny_llama(), tok, plan, RecoveryConfig(**cfg, checkpoint_every=3), data=corpus, method=method,
                  out=out)
    assert res.record["resumed_after_steps"] == [3] and len(res.record["loss_curve"]) == 9
    assert not ckpts.exists()  # the adapter is complete: its checkpoints are gone
    _assert_same_adapter(tmp_path / "ref", out)
    if kind == "prunedlora":
        ref = json.loads((tmp_path / "ref" / "recovery.json").read_text())["prunedlora"]
        assert res.record["prunedlora"]["events"] == ref["events"]
        steps = [e["step"] for e in ref["events"]]
        assert steps[0] == 3 and len(steps) >= 2  # one event before the checkpoint, the others after
        assert len(set(ref["final_ranks"].values())) > 1


def test_different_settings_are_refused_and_nothing_changes(tmp_path, corpus):
    tok = tiny_tokenizer()
    cfg = dict(max_steps=6, lr=5e-3, batch_size=2, seq_len=16, checkpoint_every=2)
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        recover(tiny_llama(), tok, RankPlan.uniform(4, 2), RecoveryConfig(**cfg), data=corpus, out=out,
                callbacks=[StopAt(2)])
    partial = checkpoint_dir_for(out) / ".step-000004.abc.partial"  # what a kill during a save leaves
    partial.mkdir()
    (partial / "tensors.safetensors").write_bytes(b"half")
    before = _tree(tmp_path)
    with pytest.raises(RankAdaptorError, match=r"config\.lr = 0\.005.*config\.lr = 0\.001.*remove"):
        recover(tiny_llama(), tok, RankPlan.uniform(4, 2), RecoveryConfig(**{**cfg, "lr": 1e-3}), data=corpus, out=out)
    with pytest.raises(RankAdaptorError, match=r"info\.plan\.ranks\[0\] = 2.*= 3"):
        recover(tiny_llama(), tok, RankPlan.uniform(4, 3), RecoveryConfig(**cfg), data=corpus, out=out)
    assert _tree(tmp_path) == before
    # the thread count and checkpoint interval do not change the result, so they may differ
    res = recover(tiny_llama(), tok, RankPlan.uniform(4, 2), RecoveryConfig(**{**cfg, "checkpoint_every": 5},
                  threads=1), data=corpus, out=out)
    assert res.record["resumed_after_steps"] == [2] and not checkpoint_dir_for(out).exists()


def test_checkpoint_needs_somewhere_to_go(corpus):
    with pytest.raises(RankAdaptorError, match="checkpoint_every needs"):
        recover(tiny_llama(), tiny_tokenizer(), RankPlan.uniform(4, 2),
                RecoveryConfig(max_steps=2, checkpoint_every=1), data=corpus)


def test_state_encoding_round_trips_exactly():
    state = {"opt": {0: {"step": torch.tensor(3.0), "m": torch.randn(2, 3)}}, "t": (1, [2.5, None], "x"),
             "s": {3, 1}, "b": True}
    tensors: dict = {}
    meta = json.loads(json.dumps(encode(state, tensors)))
    back = decode(meta, tensors)
    assert back["opt"][0]["m"] is not state["opt"][0]["m"] and torch.equal(back["opt"][0]["m"], state["opt"][0]["m"])
    assert back["t"] == (1, [2.5, None], "x") and back["s"] == {1, 3} and back["b"] is True


# ---- a real process killed with SIGKILL between two checkpoints ---------------------------------
DRIVER = """
import sys, time
from pathlib import Path
import rankadaptor.lora.recover as R

marker, pause_at = Path(sys.argv[1]), int(sys.argv[2])
real = R.recover


class Pause:  # after optimizer step `pause_at` (between checkpoints) say so, then wait to be killed
    def on_step_end(self, step, model, optimizer):
        if step == pause_at:
            marker.write_text(str(step))
            while True:
                time.sleep(0.05)


def with_pause(*args, callbacks=(), **kwargs):
    return real(*args, callbacks=[*callbacks, Pause()], **kwargs)


R.recover = with_pause
from rankadaptor.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture
def saved_model(tmp_path):
    model_dir = tmp_path / "m"
    tiny_llama().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    return model_dir


def _args(model_dir, corpus, out, *extra):
    return ["--threads", "1", "recover", str(model_dir), "--method", "prunedlora", "--init-rank", "4",
            "--target-rank", "2", "--prune-every", "2", "--prune-k", "2", "--prune-warmup", "1",
            "--scope", "global",
            "--data", str(corpus), "--steps", "8", "--batch-size", "2", "--seq-len", "16", "--lr", "5e-3",
            "--out", str(out), *extra]


def test_sigkilled_cli_run_resumes_to_the_same_adapter(tmp_path, corpus, saved_model):
    assert main(_args(saved_model, corpus, tmp_path / "ref")) == 0

    out, marker = tmp_path / "run", tmp_path / "paused"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(driver), str(marker), "4", *_args(saved_model, corpus, out, "--checkpoint-every", "3")]
    log = tmp_path / "run.log"  # a file, not a pipe: a full pipe buffer could stall the child
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():  # the marker, not a sleep, says the run is between checkpoints 3 and 6
            if proc.poll() is not None:
                pytest.fail(f"the run ended before pausing (rc {proc.returncode}): {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the run did not reach step 5 in 300 s")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and CheckpointStore(checkpoint_dir_for(out)).steps() == [3]

    assert main(_args(saved_model, corpus, out, "--checkpoint-every", "3")) == 0
    assert not checkpoint_dir_for(out).exists()
    assert json.loads((out / "recovery.json").read_text())["resumed_after_steps"] == [3]
    _assert_same_adapter(tmp_path / "ref", out)


def test_leftover_checkpoints_resume_without_the_flag(tmp_path, corpus):
    """A re-run that forgets --checkpoint-every still resumes (the interval does not change the result)."""
    tok = tiny_tokenizer()
    cfg = dict(max_steps=5, lr=5e-3, batch_size=2, seq_len=16)
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        recover(tiny_llama(), tok, RankPlan.uniform(4, 2), RecoveryConfig(**cfg, checkpoint_every=2), data=corpus,
                out=out, callbacks=[StopAt(3)])
    res = recover(tiny_llama(), tok, RankPlan.uniform(4, 2), RecoveryConfig(**cfg), data=corpus, out=out)
    assert res.record["resumed_after_steps"] == [2] and not checkpoint_dir_for(out).exists()
    recover(tiny_llama(), tok, RankPlan.uniform(4, 2), RecoveryConfig(**cfg), data=corpus, out=tmp_path / "ref")
    _assert_same_adapter(tmp_path / "ref", out)
