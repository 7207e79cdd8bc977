"""Bad input to ``eval``, ``prune``, ``search``, ``assets`` and ``demo``: exit 2, a message, nothing on disk.

The companion of tests/test_hardening.py (recover / compress / artefact / data inputs), with its
helpers. Every case runs in its own ``tmp_path`` as the working directory (``search`` would put its
default SQLite study there) and watches that directory and the shared inputs (names + sha256).
Only tiny models saved to temporary directories are used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.hardening_helpers import assert_refused, base, write_file  # noqa: F401  (base is a fixture)
from tests.tiny_models import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def inputs(base):
    """``base`` plus a smaller model, an unsupported (GPT-2) model, and damaged adapters."""
    from safetensors.torch import load_file, save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    small = base / "small-model"  # another width: the base adapter does not fit it
    tiny_llama(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1).save_pretrained(small)
    tiny_tokenizer().save_pretrained(small)
    gpt2 = base / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=320, bos_token_id=1,
                               eos_token_id=2)).save_pretrained(gpt2)
    tiny_tokenizer().save_pretrained(gpt2)
    (base / "not-a-model").mkdir()
    write_file(base / "not-a-model", "notes.txt", "no config.json here")

    def keep_one_tensor(d: Path) -> None:
        weights = str(d / "adapter_model.safetensors")
        save_file({"x": next(iter(load_file(weights).values()))}, weights)

    for name, damage in {
        "adapter-truncated": lambda d: (d / "adapter_model.safetensors").write_bytes(
            (d / "adapter_model.safetensors").read_bytes()[:100]),
        "adapter-config-not-json": lambda d: (d / "adapter_config.json").write_text("{"),
        "adapter-config-list": lambda d: (d / "adapter_config.json").write_text("[]"),
        "adapter-no-lora": keep_one_tensor,
    }.items():
        shutil.copytree(base / "adapter", base / name)
        damage(base / name)
    return base


# ---- argv builders: (inputs, tmp) -> argv; an ``extra`` item may be a (inputs, tmp) -> path callable ----
def _args(extra, b, tmp) -> list[str]:
    return [str(x(b, tmp)) if callable(x) else x for x in extra]


def _eval(*extra, model="model", spec=None, out=None):
    """``eval`` of ``inputs/MODEL`` (or the literal ``spec``) on one piqa document."""
    return lambda b, tmp: ["eval", spec or str(b / model), "--tasks", "piqa", "--limit", "1",
                           "--out", str(out(b, tmp) if out else tmp / "out.json"), *_args(extra, b, tmp)]


def _prune(*extra, model="model", out=None):
    return lambda b, tmp: ["prune", str(b / model), "--ratio", "0.1", "--layers", "1:3", "--calibration", "2",
                           "--seq-len", "16", "--calibration-text", str(b / "corpus.txt"),
                           "--out", str(out(b, tmp) if out else tmp / "out"), *_args(extra, b, tmp)]


SYNTHETIC = ["--objective", "synthetic", "--study", "s", "--n-initial", "2", "--pool", "50", "--ensemble", "1",
             "--epochs", "5", "--patience", "2"]


def _search(*extra, trials="2", out=None):
    return lambda b, tmp: ["search", "synthetic", *SYNTHETIC, "--trials", trials,
                           "--out", str(out(b, tmp) if out else tmp / "out.json"), *_args(extra, b, tmp)]


def _meta(content):
    return _search("--meta", lambda b, tmp: write_file(tmp, "meta.json", content))


def _path(*parts):
    return lambda b, tmp: b.joinpath(*parts)


def _file_parent(b, tmp):
    return Path(write_file(tmp, "a-file.txt", "x")) / "sub" / "out"


ALL_TASKS = {t: 0.5 for t in ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")}


def _demo_run_of_another_preset(b, tmp):
    """A run directory whose finished unit was made with the smoke preset."""
    from rankadaptor.demo import PRESETS

    run = tmp / "run"
    (run / "units").mkdir(parents=True)
    settings = {"preset": asdict(PRESETS["smoke"]), "model": str(b / "model")}
    write_file(run / "units", "dense.json", json.dumps({"settings": settings, "result": {}}))
    return ["demo", "--preset", "quick", "--out", str(run), "--model", str(b / "model"), "--no-progress"]


CASES = {
    # eval
    "eval-model-missing": (_eval(spec="./no/such/model"), "not an existing path"),
    "eval-model-alias": (_eval(spec="smollm2-999m"), r"not an alias \(smollm2-135m"),
    "eval-model-no-config": (_eval(model="not-a-model"), "without config.json .*; pass the directory"),
    "eval-task-unknown": (_eval("--tasks", "piqa,arc"), r"unknown task\(s\) 'arc'; valid tasks: boolq"),
    "eval-task-empty": (_eval("--tasks", ","), "no task given; valid tasks"),
    "eval-limit-zero": (_eval("--limit", "0"), "--limit 0 must be a positive .*leave --limit out"),
    "eval-limit-negative": (_eval("--limit", "-3"), "--limit -3 must be a positive"),
    "eval-limit-text": (_eval("--limit", "all"), "argument --limit: invalid int value: 'all'"),
    "eval-adapter-a-file": (_eval("--adapter", _path("corpus.txt")), "is not a directory; pass a PEFT adapter"),
    "eval-adapter-a-model": (_eval("--adapter", _path("model")), "is not a PEFT adapter directory"),
    "eval-adapter-truncated": (_eval("--adapter", _path("adapter-truncated")), "corrupt or truncated: save it again"),
    "eval-adapter-config-not-json": (_eval("--adapter", _path("adapter-config-not-json")),
                                     "adapter config .* is not valid JSON"),
    "eval-adapter-config-list": (_eval("--adapter", _path("adapter-config-list")), "must hold a JSON object"),
    "eval-adapter-no-lora": (_eval("--adapter", _path("adapter-no-lora")), "contains no LoRA tensors"),
    "eval-adapter-other-model": (_eval("--adapter", _path("adapter"), model="small-model"),
                                 "does not fit the model at module .*use the adapter with the model"),
    "eval-out-exists": (_eval(out=_path("corpus.txt")), "already exists; choose a new --out"),
    "eval-out-under-a-file": (_eval(out=_file_parent), "is a file, not a directory; choose another --out"),
    "eval-out-dir-missing": (_eval(out=lambda b, tmp: tmp / "missing" / "r.json"), "does not exist; create it"),
    "eval-batch-size-zero": (_eval("--batch-size", "0"), "--batch-size must be >= 1"),
    "eval-ppl-text-missing": (_eval("--ppl", "--ppl-text", lambda b, tmp: tmp / "none.txt"), "--ppl-text FILE"),
    # prune
    "prune-ratio-zero": (_prune("--ratio", "0"), r"--ratio 0.0 is outside \(0, 1\).* e.g. 0.2"),
    "prune-ratio-one": (_prune("--ratio", "1"), r"--ratio 1.0 is outside \(0, 1\)"),
    "prune-ratio-negative": (_prune("--ratio=-0.2"), r"--ratio -0.2 is outside \(0, 1\)"),
    "prune-ratio-nan": (_prune("--ratio", "nan"), r"--ratio nan is outside \(0, 1\)"),
    "prune-layers-outside": (_prune("--layers", "1:9"), "1:9 is outside the model's 4 decoder layers.*--layers"),
    "prune-layers-default": (lambda b, tmp: [a for a in _prune()(b, tmp) if a not in ("--layers", "1:3")],
                             "4:2 is outside the model's 4 decoder layers.*pass --layers"),
    "prune-layers-malformed": (_prune("--layers", "1-3"), "--layers '1-3' must be START:END, e.g. 4:28"),
    "prune-layers-three-parts": (_prune("--layers", "1:2:3"), "must be START:END"),
    "prune-layers-reversed": (_prune("--layers", "3:1"), "layer range 3:1 must be START:END with 0 <= START < END"),
    "prune-layers-negative": (_prune("--layers=-1:3"), "layer range -1:3 must be START:END"),
    "prune-method-unknown": (_prune("--method", "magic"), "invalid choice: 'magic' .*llm-pruner"),
    "prune-importance-unknown": (_prune("--importance", "taylor"), "invalid choice: 'taylor' .*element1"),
    "prune-calibration-zero": (_prune("--calibration", "0"), "calibration 0 must be at least 1 sequence"),
    "prune-calibration-too-many": (_prune("--calibration", "500", "--seq-len", "64"),
                                   "500 sequences x 64 tokens = 32000 are needed; pass more text, or lower"),
    "prune-calibration-text-binary": (_prune("--calibration-text", _path("adapter", "adapter_model.safetensors")),
                                      "NUL bytes, so it is a binary file"),
    "prune-calibration-text-missing": (_prune("--calibration-text", lambda b, tmp: tmp / "x.txt"),
                                       "not found; pass --calibration-text FILE"),
    "prune-out-exists": (_prune(out=_path("adapter")), "already exists; choose another --out"),
    "prune-out-is-input": (_prune(out=_path("model")), "already exists|is the input itself"),
    "prune-out-under-a-file": (_prune(out=_file_parent), "is a file, not a directory; choose another --out"),
    "prune-model-no-config": (_prune(model="not-a-model"), "without config.json or pruning.json"),
    "prune-model-unsupported": (_prune("--layers", "0:1", model="gpt2"),
                                "unsupported architecture 'gpt2'; supported families: llama"),
    # search
    "search-candidate-zero": (_search("--candidates", "0,2"), r"rank candidates \[0, 2\] must be .*positive"),
    "search-candidate-negative": (_search("--candidates=-2,4"), r"rank candidates \[-2, 4\] must be"),
    "search-candidate-text": (_search("--candidates", "a,b"), "'a,b' must be comma-separated integers"),
    "search-fixed-rank-zero": (_search("--fixed-rank", "0"), r"fixed_rank=0 must be a positive rank \(--fixed-rank"),
    "search-fixed-first-negative": (_search("--fixed-first=-1"), "fixed_first=-1, fixed_last=2 must be >= 0"),
    "search-budget-above-all": (_search("--budget", "1e12"), "unreachable: the dearest plan .* lower --budget or raise the largest"),
    "search-budget-between-candidates": (_search("--candidates", "2,4", "--fixed-first", "0", "--fixed-last", "0",
                                                 "--fixed-rank", "2", "--budget", "49", "--budget-tolerance", "0"),
                                         r"no rank vector with free-layer ranks in \[2, 4\] .*widen --budget-tolerance"),
    "search-budget-negative": (_search("--budget=-5"), "budget -5.0 must be a positive number"),
    "search-budget-nan": (_search("--budget", "nan"), "budget nan must be a positive number"),
    "search-budget-word": (_search("--budget", "lots"), "must be 'uniform:R', a parameter count or 'none'"),
    "search-trials-zero": (_search(trials="0"), "--trials 0 must be >= 1"),
    "search-trials-negative": (_search(trials="-1"), "--trials -1 must be >= 1"),
    "search-meta-missing": (_search("--meta", lambda b, tmp: tmp / "none.json"), "--meta file .* not found"),
    "search-meta-not-json": (_meta("{"), "rank-measurements file .* is not valid JSON"),
    "search-meta-object": (_meta('{"records": []}'), "expected a list of records"),
    "search-meta-empty": (_meta("[]"), "expected a list of records"),
    "search-meta-not-records": (_meta("[1, 2]"), "record 0 is int 1; expected"),
    "search-meta-no-performance": (_meta('[{"name": "a", "rank_list": [8, 8]}]'), "record 0 has no performance"),
    "search-meta-rank-text": (_meta(json.dumps([{"name": "a", "rank_list": ["x"], "performance": ALL_TASKS}])),
                              r"rank_list \['x'\] must be a non-empty list of numbers"),
    "search-meta-score-text": (_meta(json.dumps([{"name": "a", "rank_list": [8] * 16, "performance": {"piqa": "x"}}])),
                               "performance .* must map task names to numbers"),
    "search-meta-no-scores": (_meta(json.dumps([{"name": "a", "rank_list": [8] * 16, "performance": {"piqa": 0.5}}])),
                              "no record has all seven task scores"),
    "search-meta-ragged": (_meta(json.dumps([{"name": "a", "rank_list": [8] * 16, "performance": ALL_TASKS},
                                             {"name": "a", "rank_list": [8] * 12, "performance": ALL_TASKS}])),
                           "record 1 rank_list has 12 layers.* other records of setting 'a' have 10"),
    "search-out-exists": (_search(out=_path("corpus.txt")), "--out .* already exists; choose a new file"),
    "search-out-under-a-file": (_search(out=_file_parent), "is a file, not a directory; choose another --out"),
    "search-report-exists": (_search("--report", _path("adapter")), "report directory .* already exists"),
    "search-model-missing": (lambda b, tmp: ["search", str(tmp / "none"), "--study", "s", "--trials", "2", "--out",
                                             str(tmp / "out.json")], "not an existing path"),
    "search-model-too-shallow": (lambda b, tmp: ["search", str(b / "model"), "--study", "s", "--trials", "2",
                                                 "--out", str(tmp / "out.json")],
                                 "leaves no free layer out of n_layers=4; lower them"),
    # assets
    "assets-fetch-unknown": (lambda b, tmp: ["assets", "fetch", "nope"], "unknown asset 'nope'; valid assets: "),
    "assets-verify-unknown": (lambda b, tmp: ["assets", "verify", "nope"], "unknown asset 'nope'"),
    "assets-list-unknown": (lambda b, tmp: ["assets", "list", "nope"], "unknown asset 'nope'"),
    "assets-action-unknown": (lambda b, tmp: ["assets", "frob"], "invalid choice: 'frob'"),
    # demo
    "demo-preset-unknown": (lambda b, tmp: ["demo", "--preset", "huge", "--out", str(tmp / "run")],
                            "invalid choice: 'huge' .*smoke"),
    "demo-out-of-another-preset": (_demo_run_of_another_preset, "holds a run made with other settings.*same --preset"),
    "demo-out-a-file": (lambda b, tmp: ["demo", "--out", write_file(tmp, "f.txt", "x"), "--model", str(b / "model")],
                        "is a file; a demo run needs a directory"),
    "demo-out-under-a-file": (lambda b, tmp: ["demo", "--out", str(_file_parent(b, tmp)), "--model", str(b / "model")],
                              "is a file, not a directory"),
    "demo-model-missing": (lambda b, tmp: ["demo", "--preset", "smoke", "--out", str(tmp / "run"), "--model",
                                           str(tmp / "none"), "--no-progress"], "not an existing path"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_a_message_and_changes_nothing(case, inputs, tmp_path, capsys, monkeypatch):
    build, message = CASES[case]
    monkeypatch.chdir(tmp_path)
    argv = build(inputs, tmp_path)
    assert_refused(argv, message, capsys, tmp_path, inputs)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.json").exists()


def test_prunedlora_flag_choices_match_the_library():
    from rankadaptor.lora import pruned_lora
    from rankadaptor.lora.obs import SCORERS
    from rankadaptor.cli.prunedlora_flags import SCORER_NAMES, SCOPES

    assert SCORER_NAMES == tuple(sorted(SCORERS))
    assert pruned_lora.SCOPES == SCOPES


@pytest.mark.parametrize("argv", [["--help"], ["recover", "--help"], ["prune", "m", "--ratio", "x", "--out", "o"]])
def test_help_and_argument_errors_do_not_import_torch(argv):
    code = ("import runpy, sys\n"
            f"sys.argv = ['rankadaptor', *{argv!r}]\n"
            "try:\n"
            "    runpy.run_module('rankadaptor', run_name='__main__')\n"
            "except SystemExit as exc:\n"
            "    code = exc.code\n"
            "print('exit', code, 'torch' in sys.modules, file=sys.stderr)\n")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert last in ("exit 0 False", "exit 2 False"), proc.stderr[-2000:]
