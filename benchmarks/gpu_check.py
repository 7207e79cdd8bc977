"""The GPU check's stages, each in its own process under a time budget; results JSON + markdown.

1. environment: versions, the device, which optional packages import, which carried data exist;
2. tests: the CUDA-marked tests (``pytest -m gpu tests/test_gpu.py``; skipped without CUDA);
3. pipeline: ``benchmarks/gpu_pipeline.py`` (prune → recover → recover --distill → PARA → eval) on a
   random-weight SmolLM2-shaped model in bfloat16;
4. real shapes: ``benchmarks/real_shapes.py`` at full LLaMA-7B / Llama-3-8B shapes (32 layers).

A stage that fails or runs out of time is recorded as such and the next one still runs. With
``--small`` every stage runs at test size on whatever device there is (the CPU test).
``benchmarks/gpu_check.sh`` is the entry point (it installs carried wheels first).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CARRY = ROOT / ".gpu_carry"
BUDGET_S = 470  # of the 8 minutes: the rest is Python start-up and installing wheels
CAPS = {"tests": 120, "pipeline": 150, "real_shapes": 300}  # each stage's own limit (seconds)


def environment(out: Path, env: dict) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
            "gpus": torch.cuda.device_count(), "packages": {}}
    for name in ("transformers", "peft", "accelerate", "lm_eval", "datasets", "optuna", "gguf"):
        spec = importlib.util.find_spec(name)
        info["packages"][name] = _version(name) if spec else None
    info["carried"] = {"cache": (CARRY / "cache").is_dir(), "tokenizer": (CARRY / "smollm2-tokenizer").is_dir(),
                       "RANKADAPTOR_CACHE": env.get("RANKADAPTOR_CACHE")}
    if torch.cuda.is_available():  # properties only: a CUDA context here would hold GPU memory all along
        info.update(gpu_memory_bytes=torch.cuda.get_device_properties(0).total_memory,
                    capability=list(torch.cuda.get_device_capability(0)))
    return info


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name.replace("_", "-"))
    except PackageNotFoundError:
        return "importable"


def run_stage(name: str, cmd: list[str], limit: float, out: Path, env: dict) -> dict:
    """Run one stage's command; its output goes to ``out/<name>.log``."""
    t0 = time.perf_counter()
    log = out / f"{name}.log"
    with open(log, "w") as fh:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=limit).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {limit:.0f} s"
    tail = log.read_text(errors="replace").splitlines()[-15:]
    return {"stage": name, "status": status, "seconds": time.perf_counter() - t0, "log_tail": tail}


def pytest_counts(log_tail: list[str]) -> str | None:
    for line in reversed(log_tail):
        if any(w in line for w in ("passed", "skipped", "failed", "error")) and " in " in line:
            return line.strip("= ").strip()
    return None


def markdown(result: dict) -> str:
    env = result["environment"]
    gib = 2**30
    lines = [f"# GPU check: {env['device']} ({'small shapes' if result['small'] else 'full shapes'})", "",
             f"torch {env['torch']}, Python {env['python']}, packages {json.dumps(env['packages'])}; "
             f"carried data {env['carried']}; total {result['seconds']:.0f} s of a {result['budget_s']} s budget.", "",
             "| stage | status | seconds | notes |", "|---|---|---|---|"]
    for s in result["stages"]:
        lines.append(f"| {s['stage']} | {s['status']} | {s['seconds']:.0f} | {s.get('notes', '')} |")
    pipe = result.get("pipeline")
    if pipe:
        lines += ["", f"Pipeline on a random-weight SmolLM2-shaped model ({pipe['dtype']}, {pipe['device_name']}):", "",
                  "| step | exit | seconds | peak GiB | s / step | docs/s | tokens/s |", "|---|---|---|---|---|---|---|"]
        for r in pipe["steps"]:
            cells = [_num(r, "seconds_per_step", 3), _num(r, "docs_per_s", 1), _num(r, "tokens_per_s", 0)]
            lines.append(f"| {r['step']} | {r['rc']} | {r['seconds']:.1f} | {r['peak_bytes'] / gib:.2f} | "
                         + " | ".join(cells) + " |")
    shapes = result.get("real_shapes")
    if shapes:
        lines += ["", "Real shapes (random weights): see real_shapes table below.", "", shapes["markdown"]]
    return "\n".join(lines) + "\n"


def _num(row: dict, key: str, digits: int) -> str:
    return f"{row[key]:.{digits}f}" if row.get(key) is not None else "–"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--small", action="store_true")
    p.add_argument("--budget", type=float, default=BUDGET_S)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # CPU peaks: freed tensors leave the resident set
    if (CARRY / "cache").is_dir() and "RANKADAPTOR_CACHE" not in env:
        env["RANKADAPTOR_CACHE"] = str(CARRY / "cache")  # the carried subset: every default data path finds it
    result = {"small": args.small, "budget_s": args.budget, "environment": environment(out, env), "stages": []}
    py = sys.executable
    tokenizer = CARRY / "smollm2-tokenizer"
    stages = [
        ("tests", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py", "-rs"]),
        ("pipeline", [py, "benchmarks/gpu_pipeline.py", "--out", str(out)]
         + (["--small", "--docs", "2", "--steps", "2"] if args.small else
            (["--tokenizer", str(tokenizer)] if tokenizer.is_dir() else []))),
        ("real_shapes", [py, "benchmarks/real_shapes.py", "--out-dir", str(out), "--name", "real_shapes"]
         + (["--shapes", "tiny", "--layers", "2", "--steps", "2", "--docs", "2"] if args.small else
            ["--layers", "32", "--steps", "10", "--docs", "50"])),
    ]
    for name, cmd in stages:
        left = args.budget - (time.perf_counter() - t0)
        if left < 20:
            result["stages"].append({"stage": name, "status": "not run: time budget spent", "seconds": 0.0})
            continue
        stage = run_stage(name, cmd, min(CAPS[name], left), out, env)
        if name == "tests":
            stage["notes"] = pytest_counts(stage["log_tail"]) or ""
        result["stages"].append(stage)
    if (out / "pipeline.json").is_file():
        result["pipeline"] = json.loads((out / "pipeline.json").read_text())
    if (out / "real_shapes.json").is_file():
        result["real_shapes"] = {"json": "real_shapes.json",
                                 "markdown": (out / "real_shapes.md").read_text()}
    result["seconds"] = time.perf_counter() - t0
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    (out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if all(s["status"] == "ok" for s in result["stages"]) else 1


if __name__ == "__main__":
    sys.exit(main())
