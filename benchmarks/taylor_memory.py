"""Peak memory of Taylor importance: every gradient at once (before) vs block by block (now), issue 17.

Each measurement is a fresh child process with one torch thread. It loads SmolLM2-135M, cuts the
calibration sequences (default 10 x 128 tokens, LLM-Pruner's count), resets the kernel's peak-RSS
mark (``/proc/self/clear_refs``), scores every KV group and MLP channel of blocks 4..27 (the
default range) and reads the peak (VmHWM): so the number is the importance step's own, not the
model load's. "before" runs the source of ``--before`` (the commit with the all-gradients code),
extracted with ``git archive`` into benchmarks/work/taylor_memory/; "after" runs this tree's src/.
Both choose the units a 20 % pruning keeps, and the two choices are compared.

    python benchmarks/taylor_memory.py --repeats 3 --threads 1

Writes results/taylor_memory.json and .md, with the bytes formula evaluated for SmolLM2-135M
(checked against the measurement) and for LLaMA-7B.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
WORK = HERE / "work" / "taylor_memory"
KINDS = ("attn", "mlp")
MiB = 2**20


def _status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS now, VmHWM the peak since the last reset)."""
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def measure(args) -> dict:
    """Child process: the importance scores of one implementation, with its peak memory."""
    import torch

    torch.set_num_threads(args.threads)
    from rankadaptor.assets import text_corpus_path
    from rankadaptor.models.families import get_family
    from rankadaptor.models.loading import load_model
    from rankadaptor.prune import importance as imp_mod
    from rankadaptor.prune.width import plan_width

    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    fam, imp = get_family(model), imp_mod.get_importance(args.importance)
    batches = imp_mod.calibration_batches(tok, [text_corpus_path("train").read_text()], args.calibration, args.seq_len)
    layers = range(4, fam.n_layers - 2)
    block_bytes = sum(p.nbytes for i in layers for p in fam.layers[i].parameters())
    # Warm-up, the same for both: one 8-token forward + backward through every block pages in libtorch's
    # backward code, which would otherwise count as the first importance pass's memory. Only the first
    # block's first weight gets a gradient, so the warm-up leaves no large freed buffers behind.
    first = next(fam.layers[0].parameters())
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(p is first)
    warm = batches[:1, :8]
    model(input_ids=warm, labels=warm).loss.backward()
    for p, flag in flags:
        p.requires_grad_(flag)
        p.grad = None
    gc.collect()
    baseline = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak mark restarts from here
    t0 = time.perf_counter()
    if hasattr(imp_mod, "layer_gradients"):  # after: block by block
        grads = imp_mod.layer_gradients(model, batches, layers, fisher=imp.needs_fisher,
                                        reduce=lambda i, st: {k: imp_mod.unit_scores(fam, i, k, imp, st) for k in KINDS})
        scores = grads.results
        held = {"gradient_statistics": grads.peak_gradient_bytes, "cached_block_inputs": grads.cache_bytes}
    else:  # before: gradient_stats holds .grad, the running sums (and squares) of every parameter in range
        stats = imp_mod.gradient_stats(model, batches, fisher=imp.needs_fisher, only=[fam.layers[i] for i in layers])
        scores = {i: {k: imp_mod.unit_scores(fam, i, k, imp, stats) for k in KINDS} for i in layers}
        del stats
        held = {"gradient_statistics": block_bytes * (3 if imp.needs_fisher else 2), "cached_block_inputs": 0}
    wall = time.perf_counter() - t0
    peak = _status("VmHWM")
    plan = plan_width(fam, args.ratio, layers)
    kept = {i: {"kv_groups": _top(scores[i]["attn"], plan["drop_groups"][i]),
                "channels": _top(scores[i]["mlp"], plan["drop_channels"][i])} for i in layers}
    return {"importance": args.importance, "peak_rss_bytes": peak, "baseline_rss_bytes": baseline,
            "increase_bytes": peak - baseline, "wall_s": wall, "held_bytes": held,
            "weights_bytes": sum(p.nbytes for p in {id(p): p for p in model.parameters()}.values()),
            "scores": {str(i): {k: scores[i][k].tolist() for k in KINDS} for i in layers}, "kept": kept}


def _top(scores, drop: int) -> list[int]:
    order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))  # width.py's tie-break
    return sorted(order[:len(scores) - drop])


# ----------------------------------------------------------------------------- the bytes formula


SHAPES = {  # decoder-only LLaMA shapes: hidden, intermediate, blocks, vocab, tied embeddings
    "SmolLM2-135M": dict(h=576, inter=1536, kv=192, blocks=30, vocab=49152, tied=True),
    "LLaMA-7B": dict(h=4096, inter=11008, kv=4096, blocks=32, vocab=32000, tied=False),
}


def formula(s: dict, k: int, t: int, fisher: bool, bytes_per: int) -> dict:
    """Bytes of each term, block by block (after) and all gradients at once (before).

    A block has 2*h*h + 2*h*kv attention weights, 3*h*inter MLP weights and 2*h norm weights; the
    statistics are float32 whatever the model's dtype. Activations: the loss head of one sequence
    (logits, their log-softmax and its gradient: 3*t*vocab float32) and one block's saved tensors
    for one sequence, about t*(8*h + 4*inter)*bytes (norm outputs, q/k/v/o inputs, gate/up/act/down).
    """
    h, inter, blocks = s["h"], s["inter"], s["blocks"]
    block = 2 * h * h + 2 * h * s["kv"] + 3 * h * inter + 2 * h
    params = blocks * block + s["vocab"] * h * (1 if s["tied"] else 2) + h
    in_range = blocks - 6  # the default range leaves the first 4 and last 2 blocks alone
    head = 3 * t * s["vocab"] * 4
    block_acts = t * (8 * h + 4 * inter) * bytes_per
    after = {"weights": params * bytes_per,
             "one_block_gradients": block * 4 * (2 if fisher else 1) + block * bytes_per,
             "cached_block_inputs": (blocks - 4 + 1) * k * t * h * bytes_per,
             "activations": head + block_acts}
    before = {"weights": params * bytes_per,
              "all_gradients": in_range * block * (bytes_per + 4 * (2 if fisher else 1)),
              "activations": head + blocks * block_acts}
    return {"after": {**after, "total": sum(after.values())}, "before": {**before, "total": sum(before.values())}}


# ----------------------------------------------------------------------------- the parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--importances", default="element1,element2")
    p.add_argument("--calibration", type=int, default=10)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--before", default="2810a9d", help="commit whose src/ is the all-gradients implementation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--importance", default=None, help=argparse.SUPPRESS)
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.single:
        Path(args.part).write_text(json.dumps(measure(args)))
        return 0

    before_src = WORK / f"src-{args.before}"
    if not before_src.is_dir():  # the old implementation, exactly as committed
        WORK.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "src"], check=True, capture_output=True)
        before_src.mkdir()
        subprocess.run(["tar", "-x", "-C", str(before_src), "--strip-components=1"], input=archive.stdout, check=True)
    sources = {"before": before_src, "after": ROOT / "src"}
    runs: dict[str, dict[str, list[dict]]] = {}
    for importance in args.importances.split(","):
        for rep in range(args.repeats):
            for version, src in sources.items():  # interleaved, so machine load hits both alike
                part = WORK / f"{version}_{importance}_{args.calibration}x{args.seq_len}_{rep}.json"
                print(f"[taylor_memory] {version} {importance} repeat {rep}", flush=True)
                env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(args.threads)}
                subprocess.run([sys.executable, __file__, "--single", "--importance", importance, "--part", str(part),
                                "--model", args.model, "--calibration", str(args.calibration), "--seq-len",
                                str(args.seq_len), "--ratio", str(args.ratio), "--threads", str(args.threads)],
                               check=True, env=env)
                runs.setdefault(importance, {}).setdefault(version, []).append(json.loads(part.read_text()))
    out = summarise(args, runs)
    from rankadaptor.fileio import write_json_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "taylor_memory.json", out)
    (RESULTS / "taylor_memory.md").write_text(table(out))
    print(table(out))
    return 0


def summarise(args, runs: dict) -> dict:
    from rankadaptor.provenance import provenance
    from rankadaptor.stats import mean_ci, paired_difference

    rows = []
    for importance, by_version in runs.items():
        before, after = by_version["before"], by_version["after"]
        rel = max(abs(a - b) / max(abs(b), 1e-30)
                  for x, y in zip(after, before) for i in x["scores"] for k in KINDS
                  for a, b in zip(x["scores"][i][k], y["scores"][i][k]))
        row = {"importance": importance, "n": len(before),
               "same_kept_units": all(x["kept"] == y["kept"] for x, y in zip(after, before)),
               "max_relative_score_difference": rel,
               "increase_reduction_mib": paired_difference([r["increase_bytes"] / MiB for r in before],
                                                           [r["increase_bytes"] / MiB for r in after])}
        predicted = formula(SHAPES["SmolLM2-135M"], args.calibration, args.seq_len, importance == "element2", 4)
        row["formula_increase_mib"] = {v: (predicted[v]["total"] - predicted[v]["weights"]) / MiB for v in predicted}
        for version, rs in by_version.items():
            row[version] = {
                "peak_rss_mib": mean_ci([r["peak_rss_bytes"] / MiB for r in rs]).to_dict(),
                "increase_mib": mean_ci([r["increase_bytes"] / MiB for r in rs]).to_dict(),
                "wall_s": mean_ci([r["wall_s"] for r in rs]).to_dict(),
                "held_mib": {k: v / MiB for k, v in rs[0]["held_bytes"].items()},
                "weights_mib": rs[0]["weights_bytes"] / MiB,
            }
        rows.append(row)
    formulas = {name: {imp: {dtype: formula(shape, args.calibration, args.seq_len, imp == "element2", b)
                             for dtype, b in (("float32", 4), ("bfloat16", 2))}
                       for imp in ("element1", "element2")} for name, shape in SHAPES.items()}
    return {"benchmark": "taylor_memory", "model": args.model,
            "settings": {k: v for k, v in vars(args).items() if k not in ("single", "importance", "part")},
            "notes": ("Peak RSS of a child process during importance estimation only (the mark is reset after the "
                      "model load and an 8-token warm-up forward + backward); increase = peak minus the RSS just before. 'held' = gradient statistics the "
                      "algorithm keeps at its peak, counted from tensor sizes (before: .grad + running sums (+ "
                      "squares) of every parameter in blocks 4..27; after: one block's sums (+ squares) plus one "
                      "sequence's block gradients) and the cached block inputs + downstream gradients."),
            "rows": rows, "formula": formulas, "provenance": provenance(None)}


def _ci(d: dict, digits: int = 0) -> str:
    if d["n"] < 3 or d["ci_high"] == d["ci_low"]:
        return f"{d['mean']:.{digits}f} (no test)"
    return f"{d['mean']:.{digits}f} [{d['ci_low']:.{digits}f}, {d['ci_high']:.{digits}f}]"


def table(out: dict) -> str:
    s = out["settings"]
    lines = [f"# Taylor importance memory: {out['model']}, {s['calibration']} x {s['seq_len']} calibration tokens, "
             f"blocks 4..27, {s['threads']} thread", "", out["notes"], "",
             "| importance | version | peak RSS MiB | increase MiB | held: gradients MiB | held: block inputs MiB "
             "| seconds | same kept units at 20 % | max rel. score diff |", "|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        for version in ("before", "after"):
            v = r[version]
            lines.append(f"| {r['importance']} | {version} | {_ci(v['peak_rss_mib'])} | {_ci(v['increase_mib'])} | "
                         f"{v['held_mib']['gradient_statistics']:.0f} | {v['held_mib']['cached_block_inputs']:.0f} | "
                         f"{_ci(v['wall_s'], 1)} | {'yes' if r['same_kept_units'] else 'NO'} | "
                         f"{r['max_relative_score_difference']:.1e} |")
    lines += ["", "Increase saved (before - after, paired by repeat, MiB, 95 % CI): " + "; ".join(
        f"{r['importance']} {_ci(r['increase_reduction_mib'])}" for r in out["rows"]), "",
        "The formula below, evaluated for SmolLM2-135M in float32, predicts an increase of " + "; ".join(
            f"{r['importance']} {r['formula_increase_mib']['before']:.0f} MiB before, "
            f"{r['formula_increase_mib']['after']:.0f} MiB after" for r in out["rows"]) + ".", "",
        "## The bytes formula", "",
        "Block by block: weights + one block's gradient statistics (float32 sums, + squares for element2, + one "
        "sequence's block gradients) + cached block inputs ((blocks - 4 + 1) x K x T x hidden) + activations (one "
        "sequence's loss head 3 x T x vocab x 4 and one block's saved tensors T x (8 hidden + 4 inter) x bytes). "
        "All gradients at once (before): weights + (.grad + sums (+ squares)) of every block in range + one "
        "sequence's activations through every block. K = calibration sequences, T = tokens each.", "",
        "| model | importance | dtype | weights GiB | one block's gradients GiB | block inputs GiB | activations GiB "
        "| total after GiB | total before GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for name, by_imp in out["formula"].items():
        for imp, by_dtype in by_imp.items():
            for dtype, f in by_dtype.items():
                a, b = f["after"], f["before"]
                lines.append(f"| {name} | {imp} | {dtype} | {a['weights'] / 2**30:.2f} | "
                             f"{a['one_block_gradients'] / 2**30:.3f} | {a['cached_block_inputs'] / 2**30:.3f} | "
                             f"{a['activations'] / 2**30:.3f} | {a['total'] / 2**30:.2f} | {b['total'] / 2**30:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
