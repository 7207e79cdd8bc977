"""The whole pipeline through the CLI on a random-weight SmolLM2-shaped model, as a user runs it.

prune (Taylor, 20 %) → recover (uniform r=8, gradient checkpointing) → recover with distillation
from the unpruned model → PARA compression of the plain adapter to half its parameters → eval
(seven tasks on the first ``--docs`` documents each, fast scorer, held-out perplexity) — every step
a ``rankadaptor`` command in ``--dtype`` on the default device, timed, with its peak memory.
The data are the cache's defaults (``RANKADAPTOR_CACHE``: the carried subset on a GPU machine).
Random weights: the numbers are times, memory and throughput, not quality.

    PYTHONPATH=src python benchmarks/gpu_pipeline.py --out DIR [--small]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def save_model(out: Path, small: bool, tokenizer_dir: str | None, dtype) -> Path:
    """A random-weight SmolLM2-shaped (or, ``small``, tiny) model directory with a tokenizer."""
    import real_shapes

    from transformers import AutoTokenizer

    if tokenizer_dir:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        from rankadaptor.assets import text_corpus_path

        tok = real_shapes.synthetic_tokenizer([Path(text_corpus_path("train")).read_text()[:100_000]],
                                              real_shapes.SHAPES["tiny"]["vocab_size"])
    if small:
        model = real_shapes.build("tiny", 6, "cpu", dtype)
    else:
        model = real_shapes.build("smollm2-135m", None, "cpu", dtype)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def step(name: str, argv: list[str], device) -> dict:
    """One CLI command, its exit status, wall time and peak memory."""
    from rankadaptor.cli import main
    from rankadaptor.estimate import PeakMemory

    print(f"$ rankadaptor {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    with PeakMemory(device) as peak:
        rc = main(argv)
    return {"step": name, "argv": argv, "rc": rc, "seconds": time.perf_counter() - t0, "peak_bytes": peak.total}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for the pipeline's files and pipeline.json")
    p.add_argument("--small", action="store_true", help="a tiny model and a few steps (the CPU test)")
    p.add_argument("--tokenizer", default=None, help="SmolLM2's tokenizer folder (default: a synthetic one)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--docs", type=int, default=50)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import torch

    from rankadaptor.device import resolve_device, resolve_dtype

    device = resolve_device(None)
    dtype = resolve_dtype(args.dtype, device, training=True)
    out = Path(args.out)
    work = out / "pipeline-work"
    work.mkdir(parents=True, exist_ok=True)
    base = save_model(work / "base", args.small, args.tokenizer, dtype)
    seq, batch = ("32", "2") if args.small else ("256", "4")
    glob = ["--dtype", args.dtype]
    rec = ["--ranks", "uniform:8", "--steps", str(args.steps), "--batch-size", batch, "--seq-len", seq,
           "--gradient-checkpointing"]
    prune = ["prune", str(base), "--ratio", "0.2", "--out", str(work / "pruned")]
    if args.small:
        prune += ["--layers", "1:5", "--calibration", "2", "--seq-len", "32"]
    steps = [
        ("prune", glob + prune),
        ("recover", glob + ["recover", str(work / "pruned"), *rec, "--out", str(work / "plain")]),
        ("recover --distill", glob + ["recover", str(work / "pruned"), *rec, "--distill", "--out", str(work / "distill")]),
        ("compress (PARA)", ["compress", str(work / "plain"), "--keep-fraction", "0.5", "--out", str(work / "para")]),
        ("eval", glob + ["eval", str(work / "pruned"), "--adapter", str(work / "para"), "--limit", str(args.docs),
                         "--backend", "fast", "--ppl", "--ppl-max-tokens", "2048" if args.small else "16384",
                         "--out", str(work / "eval.json")]),
    ]
    rows = []
    for name, cmd in steps:
        rows.append(step(name, cmd, device))
        if rows[-1]["rc"] != 0:
            break
    for row in rows:  # what each step reports of itself
        if row["step"].startswith("recover") and row["rc"] == 0:
            r = json.loads((Path(row["argv"][-1]) / "recovery.json").read_text())
            row.update(seconds_per_step=r["seconds_per_step"], dtype=r["dtype"], lora_dtype=r["lora_dtype"],
                       first_loss=r["loss_curve"][0]["loss"], last_loss=r["loss_curve"][-1]["loss"])
        if row["step"] == "eval" and row["rc"] == 0:
            r = json.loads((work / "eval.json").read_text())
            tasks = r["tasks"]
            row.update(docs=sum(t["n"] for t in tasks.values()), tokens=sum(t.get("tokens", 0) for t in tasks.values()),
                       eval_seconds=sum(t["wall_s"] for t in tasks.values()))
            row["docs_per_s"] = row["docs"] / row["eval_seconds"]
            row["tokens_per_s"] = row["tokens"] / row["eval_seconds"]
    result = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
              "dtype": args.dtype, "small": args.small, "steps": rows,
              "ok": len(rows) == len(steps) and all(r["rc"] == 0 for r in rows)}
    (out / "pipeline.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
