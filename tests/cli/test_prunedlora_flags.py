"""``recover --method prunedlora``: a derived schedule reaches the budget; bad schedules exit 2 in one line."""

import json

import pytest

from rankadaptor.cli import main
from tests.hardening_helpers import assert_refused
from tests.tiny_models import save_tiny_model_and_corpus

BUDGET_R2 = 2 * 4096  # uniform rank 2 on the tiny model: 4 layers × 1024 parameters per rank


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_tiny_model_and_corpus(tmp_path_factory.mktemp("pl"))


def _recover(saved, out, *flags):
    model_dir, corpus = saved
    return ["recover", str(model_dir), "--method", "prunedlora", "--data", str(corpus), "--batch-size", "2",
            "--seq-len", "16", "--out", str(out), *flags]


def test_derived_schedule_reaches_the_budget_and_says_so(saved, tmp_path, capsys):
    out = tmp_path / "pl"
    assert main(["--threads", "1", *_recover(saved, out, "--init-rank", "6", "--target-params", str(BUDGET_R2),
                                             "--scope", "global", "--steps", "8")]) == 0
    printed = capsys.readouterr().out
    assert f"for a budget of {BUDGET_R2:,}: at budget" in printed
    pl = json.loads((out / "recovery.json").read_text())["prunedlora"]
    assert pl["budget"]["at_budget"] and 0 <= BUDGET_R2 - pl["final_params"] < 192
    assert (pl["schedule"]["warmup_steps"], pl["schedule"]["final_steps"], pl["schedule"]["prune_every"]) == (2, 2, 1)
    assert max(e["step"] for e in pl["events"]) <= 6  # two steps of fine-tuning after the last event


@pytest.mark.parametrize("flags, message", [
    (["--init-rank", "4", "--target-params", "100000", "--steps", "8"], r"not below the initial .*--init-rank"),
    (["--init-rank", "8", "--target-params", str(BUDGET_R2), "--prune-floor", "3", "--scope", "global",
      "--steps", "8"], r"below what the floor keeps.*--prune-floor"),
    (["--init-rank", "8", "--target-rank", "2", "--prune-floor", "3", "--steps", "8"], r"--prune-floor"),
    (["--init-rank", "8", "--target-rank", "4", "--prune-final", "0", "--steps", "8"],
     r"no fine-tuning after the last pruning event.*--prune-final"),
    (["--init-rank", "8", "--target-rank", "4", "--steps", "2"], r"no pruning event fits in 2 steps.*--steps"),
    (["--init-rank", "8", "--target-rank", "1", "--prune-k", "1", "--prune-every", "2", "--steps", "12"],
     r"needs 7 at 1 component.*--prune-k"),
    (["--init-rank", "8", "--target-rank", "4", "--prune-damping", "0", "--steps", "8"], r"--prune-damping"),
])
def test_bad_schedules_exit_2_with_one_line_naming_the_flag(saved, tmp_path, capsys, flags, message):
    err = assert_refused(_recover(saved, tmp_path / "out", *flags), message, capsys, tmp_path)
    assert len([line for line in err.splitlines() if "error:" in line]) == 1
    assert not (tmp_path / "out").exists()
