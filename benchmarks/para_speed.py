"""PARA speed: exact SVD via QR factors vs a dense SVD of every dW, on a LLaMA-7B-shaped adapter.

The adapter is generated here (never saved in git): 32 layers x {q,k,v,o: 4096x4096,
gate/up: 11008x4096 (d_out x d_in), down: 4096x11008}, r = 64, alpha = 128, with a decaying
spectrum per module (sigma_i ~ exp(-i / tau), tau different per module). Each method runs in its
own child process so that its peak resident memory is its own (``ru_maxrss``); we report the
peak *increase* over the child's footprint after the adapter was generated.

PARA runs on the whole adapter (224 modules) through ``compress_adapter`` (SVDs, global cut,
balanced factors). The dense baseline (``torch.linalg.svd`` of the d_out x d_in float32 product,
then truncation) is slow on a CPU, so by default it runs on one module of each distinct shape
(or one whole layer) and its time is extrapolated to all 224 modules; the JSON says which.

    .venv/bin/python benchmarks/para_speed.py [--dense-subset shapes|layer] [--layers 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {  # name: (d_out, d_in)
    "self_attn.q_proj": (4096, 4096),
    "self_attn.k_proj": (4096, 4096),
    "self_attn.v_proj": (4096, 4096),
    "self_attn.o_proj": (4096, 4096),
    "mlp.gate_proj": (11008, 4096),
    "mlp.up_proj": (11008, 4096),
    "mlp.down_proj": (4096, 11008),
}


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# One module per distinct shape, and how many modules of that shape one layer holds.
SHAPE_REPRESENTATIVES = {"self_attn.q_proj": 4, "mlp.gate_proj": 2, "mlp.down_proj": 1}


def make_adapter(n_layers: int, r: int, seed: int, only: tuple[str, ...] | None = None):
    import torch

    from rankadaptor.compress.adapter_io import LoraAdapter, LoraModule

    g = torch.Generator().manual_seed(seed)
    modules = {}
    for layer in range(n_layers):
        for j, (suffix, (d_out, d_in)) in enumerate(SHAPES.items()):
            if only is not None and suffix not in only:
                continue
            tau = 4.0 + 12.0 * ((layer * 7 + j) % 11) / 10  # spectra decay at different speeds
            decay = torch.exp(-torch.arange(r, dtype=torch.float32) / tau)
            B = torch.randn(d_out, r, generator=g) / d_out**0.5 * decay
            A = torch.randn(r, d_in, generator=g) / d_in**0.5
            name = f"model.layers.{layer}.{suffix}"
            modules[name] = LoraModule(name=name, A=A, B=B, r=r, alpha=2.0 * r, scale=2.0)
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(SHAPES)}
    return LoraAdapter(config=config, modules=modules)


def child(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    only = tuple(SHAPE_REPRESENTATIVES) if args.shapes_only else None
    adapter = make_adapter(args.layers, args.rank, args.seed, only)
    base_mb = rss_peak_mb()
    t0 = time.perf_counter()
    if args.mode == "para":
        from rankadaptor.compress.para import CompressConfig, compress_adapter, decompose

        new, report = compress_adapter(adapter, CompressConfig(keep_fraction=args.keep_fraction))
        seconds = time.perf_counter() - t0
        first = next(iter(adapter.modules.values()))
        top = decompose(first.B, first.A, first.scale).S[:8].tolist()
        extra = {"params_before": report["totals"]["params_before"], "params_after": report["totals"]["params_after"],
                 "first_module_top_sigmas": top}
    else:
        per_module = {}
        for m in adapter.modules.values():
            t_mod = time.perf_counter()
            delta = m.scale * (m.B @ m.A)  # the d_out x d_in product PARA never forms
            U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
            keep = max(1, m.r // 4)
            root = S[:keep].sqrt()
            _B, _A = U[:, :keep] * root, root[:, None] * Vh[:keep]
            if m is next(iter(adapter.modules.values())):
                top = S[:8].tolist()
            del delta, U, S, Vh
            per_module[m.name] = time.perf_counter() - t_mod
        seconds = time.perf_counter() - t0
        extra = {"first_module_top_sigmas": top, "per_module_seconds": per_module}
    return {"mode": args.mode, "layers": args.layers, "modules": len(adapter.modules), "seconds": seconds,
            "rss_after_generation_mb": base_mb, "rss_peak_mb": rss_peak_mb(),
            "peak_increase_mb": rss_peak_mb() - base_mb, **extra}


def run_child(mode: str, layers: int, args, shapes_only: bool = False) -> dict:
    cmd = [sys.executable, __file__, *(["--shapes-only"] if shapes_only else []), *(["--smoke"] if args.smoke else []), "--child", mode, "--layers", str(layers), "--rank", str(args.rank),
           "--seed", str(args.seed), "--threads", str(args.threads), "--keep-fraction", str(args.keep_fraction)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _previous_dense(args) -> dict | None:
    """The dense baseline does not depend on rankadaptor's code; re-timing it costs minutes of CPU."""
    path = RESULTS / "para_speed.json"
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    same = (old["adapter"]["rank"] == args.rank and old["provenance"]["seed"] == args.seed
            and old["threads"] == args.threads and old.get("dense_subset_kind", "shapes") == args.dense_subset)
    if not same:
        return None
    dense = old["dense_subset"]
    dense.setdefault("measured_at_commit", old["provenance"]["git_commit"])
    dense.setdefault("measured_on", old["provenance"]["date"])
    return dense


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--dense-subset", choices=("shapes", "layer"), default="shapes",
                   help="dense SVD timed on one module per distinct shape (q, gate, down) or on one whole layer; extrapolated")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--keep-fraction", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", choices=("para", "dense"), help=argparse.SUPPRESS)
    p.add_argument("--shapes-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--reuse-dense", action="store_true",
                   help="take the dense-subset measurement from the existing results JSON (same rank/seed/subset/threads)")
    p.add_argument("--smoke", action="store_true", help="shapes divided by 64: checks the script runs, measures nothing")
    args = p.parse_args()
    if args.smoke:
        for k, (d_out, d_in) in SHAPES.items():
            SHAPES[k] = (d_out // 64, d_in // 64)
    if args.child:
        args.mode = args.child
        print(json.dumps(child(args)))
        return

    from rankadaptor.provenance import provenance

    para_full = run_child("para", args.layers, args)
    shapes_only = args.dense_subset == "shapes"
    para_sub = run_child("para", 1, args, shapes_only)
    dense_sub = _previous_dense(args) if args.reuse_dense else None
    dense_sub = dense_sub or run_child("dense", 1, args, shapes_only)
    t = {name.split(".", 3)[3]: sec for name, sec in dense_sub["per_module_seconds"].items()}
    if shapes_only:
        per_layer = sum(t[suffix] * count for suffix, count in SHAPE_REPRESENTATIVES.items())
        how = "one module per distinct shape (q 4096x4096, gate 11008x4096, down 4096x11008) timed; per layer = 4 t_q + 2 t_gate + t_down"
    else:
        per_layer = sum(t.values())
        how = "one whole layer (7 modules) timed"
    dense_est = per_layer * args.layers
    sig_para, sig_dense = para_sub["first_module_top_sigmas"], dense_sub["first_module_top_sigmas"]
    max_rel = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(sig_para, sig_dense))
    result = {
        "benchmark": "para_speed",
        "adapter": {"layers": args.layers, "shapes": SHAPES, "rank": args.rank, "dtype": "float32",
                    "spectra": "sigma_i ~ exp(-i/tau), tau in [4, 16] varying per module"},
        "threads": args.threads,
        "para_full": para_full,
        "para_subset": para_sub,
        "dense_subset": dense_sub,
        "dense_subset_kind": args.dense_subset,
        "dense_extrapolated_seconds": dense_est,
        "dense_extrapolation": f"{how}; scaled to {args.layers} layers x 7 modules",
        "speedup_subset": dense_sub["seconds"] / para_sub["seconds"],
        "speedup_full_extrapolated": dense_est / para_full["seconds"],
        "peak_memory_ratio": dense_sub["peak_increase_mb"] / max(para_full["peak_increase_mb"], 1e-3),
        "top_sigma_max_relative_difference": max_rel,
        "provenance": provenance(args.seed),
    }
    if args.smoke:
        print(json.dumps(result, indent=2))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "para_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# PARA speed: LLaMA-7B-shaped adapter ({args.layers} layers x 7 projections, r={args.rank}, fp32), {args.threads} CPU thread(s)",
        "",
        "| method | modules timed | wall time (s) | peak RSS increase (MB) |",
        "|---|---|---|---|",
        f"| PARA (QR + r x r SVD), whole adapter | {para_full['modules']} | {para_full['seconds']:.2f} | {para_full['peak_increase_mb']:.0f} |",
        f"| PARA, subset | {para_sub['modules']} | {para_sub['seconds']:.2f} | {para_sub['peak_increase_mb']:.0f} |",
        f"| dense torch.linalg.svd of dW, subset | {dense_sub['modules']} | {dense_sub['seconds']:.1f} | {dense_sub['peak_increase_mb']:.0f} |",
        f"| dense, extrapolated to {args.layers} layers | {para_full['modules']} | {dense_est:.0f} (est.) | {dense_sub['peak_increase_mb']:.0f} (sequential) |",
        "",
        f"Speed-up: {result['speedup_subset']:.0f}x on the same subset, {result['speedup_full_extrapolated']:.0f}x on the whole adapter "
        f"(dense extrapolated: {result['dense_extrapolation']}). Peak-memory ratio dense/PARA: {result['peak_memory_ratio']:.1f}x. "
        f"Top-8 singular values of the first module agree to {max_rel:.1e} relative.",
        "",
        f"Command: `.venv/bin/python benchmarks/para_speed.py --layers {args.layers} --rank {args.rank} --dense-subset {args.dense_subset} --threads {args.threads}"
        f"{' --reuse-dense' if args.reuse_dense else ''}`"
        + (f" (dense subset measured at commit {dense_sub['measured_at_commit']})" if "measured_at_commit" in dense_sub else "") + "; "
        f"CPU: {result['provenance']['hardware']['processor']}; git {result['provenance']['git_commit']}.",
    ]
    (RESULTS / "para_speed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
