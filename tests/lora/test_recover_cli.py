"""``rankadaptor recover``: end to end on a tiny saved model, and bad input rejected before training."""

import json

import pytest

from rankadaptor.cli import main
from rankadaptor.lora.ranks import RankPlan
from rankadaptor.lora.recover import RecoveryConfig
from tests.tiny_models import save_tiny_model_and_corpus


@pytest.fixture
def saved(tmp_path):
    return save_tiny_model_and_corpus(tmp_path)


def test_cli_lora_star_and_plan_file(tmp_path, saved, capsys):
    model_dir, corpus = saved
    out = tmp_path / "ad"
    rc = main(["recover", str(model_dir), "--ranks", "lora-star", "--data", str(corpus), "--steps", "2",
               "--batch-size", "2", "--seq-len", "16", "--out", str(out)])
    assert rc == 0 and (out / "adapter_config.json").is_file()
    rec = json.loads((out / "recovery.json").read_text())
    assert rec["plan"]["ranks"] == [4, 6, 10, 12] and rec["total_steps"] == 2
    assert isinstance(rec["model"], dict) and rec["model"]  # the loaded model's identity


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--ranks", "uniform:0"], "rank must be >= 1"),
        (["--ranks", "uniform:40"], "exceeds min"),
        (["--ranks", "PLAN3"], "3 layer ranks but the model has 4"),
        (["--ranks", "PLANQKV"], "available"),
        (["--ranks", "uniform:2", "--data", "BADJSONL"], "bad.jsonl:2"),
        (["--method", "nope"], "valid:"),
        (["--ranks", "uniform:2", "--batch-size", "4", "--micro-batch-size", "3"], "micro_batch_size"),
    ],
)
def test_cli_bad_input_exit_2(tmp_path, saved, capsys, extra, words):
    model_dir, corpus = saved
    RankPlan(ranks=[1, 2, 3]).to_json(tmp_path / "p3.json")
    RankPlan(ranks=[1] * 4, target_modules=("qkv_proj",)).to_json(tmp_path / "pq.json")
    (tmp_path / "bad.jsonl").write_text('{"instruction": "a", "output": "b"}\nnot json\n')
    subst = {"PLAN3": str(tmp_path / "p3.json"), "PLANQKV": str(tmp_path / "pq.json"),
             "BADJSONL": str(tmp_path / "bad.jsonl")}
    extra = [subst.get(x, x) for x in extra]
    if "--data" not in extra:
        extra += ["--data", str(corpus)]
    rc = main(["recover", str(model_dir), *extra, "--steps", "1", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_prunedlora_flags_prune_to_the_target(tmp_path, saved):
    model_dir, corpus = saved
    out = tmp_path / "pl"
    rc = main(["recover", str(model_dir), "--method", "prunedlora", "--init-rank", "8", "--target-rank", "4",
               "--prune-every", "1", "--prune-k", "2", "--prune-warmup", "1", "--scope", "global",
               "--data", str(corpus), "--steps", "5", "--batch-size", "2", "--seq-len", "16", "--out", str(out)])
    assert rc == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    pl = json.loads((out / "recovery.json").read_text())["prunedlora"]
    assert pl["final_params"] <= pl["target_params"]  # uniform r=4's budget reached
    assert sorted(cfg["rank_pattern"].values()) == sorted(pl["final_ranks"].values())  # physically shrunk
    assert len(set(pl["final_ranks"].values())) > 1  # global scope: non-uniform ranks


def test_cli_prunedlora_unreachable_schedule_fails_before_training(tmp_path, saved, capsys):
    model_dir, corpus = saved
    out = tmp_path / "pl"
    rc = main(["recover", str(model_dir), "--method", "prunedlora", "--init-rank", "8", "--target-rank", "2",
               "--prune-every", "10", "--data", str(corpus), "--steps", "3", "--batch-size", "2", "--seq-len", "16",
               "--out", str(out)])
    assert rc == 2 and "pruning event" in capsys.readouterr().err and not out.exists()


def test_config_file_then_flags(tmp_path):
    """--config FILE sets RecoveryConfig fields (checkpoint_every too); flags given on the line win."""
    from rankadaptor.cli import build_parser
    from rankadaptor.cli.recover import recovery_config

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"lr": 0.002, "batch_size": 4, "micro_batch_size": 2, "checkpoint_every": 5,
                               "epochs": 1.5, "max_steps": None}))
    args = build_parser().parse_args(["recover", "m", "--ranks", "uniform:2", "--config", str(cfg), "--out", "o"])
    c = recovery_config(args)
    assert (c.lr, c.batch_size, c.micro_batch_size, c.checkpoint_every, c.epochs, c.seq_len) == (0.002, 4, 2, 5, 1.5, 128)
    args = build_parser().parse_args(["recover", "m", "--ranks", "uniform:2", "--config", str(cfg), "--lr", "0.01",
                                      "--steps", "7", "--checkpoint-every", "2", "--out", "o"])
    c = recovery_config(args)
    assert (c.lr, c.max_steps, c.epochs, c.checkpoint_every, c.batch_size) == (0.01, 7, None, 2, 4)
    args = build_parser().parse_args(["recover", "m", "--ranks", "uniform:2", "--out", "o"])
    assert recovery_config(args) == RecoveryConfig(threads=None)
