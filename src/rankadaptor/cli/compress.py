"""``rankadaptor compress``: PARA post-hoc rank compression of a PEFT LoRA adapter."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compress",
        help="shrink a trained LoRA adapter to non-uniform ranks (PARA, data-free)",
        description=(
            "Exact SVD of every module's update via QR factors, one global threshold over all "
            "singular values, and a new PEFT adapter with exact rank_pattern/alpha_pattern keys. "
            "The base model is not needed."
        ),
    )
    p.add_argument("adapter_dir", help="a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--target-params", type=int, help="keep at most N LoRA parameters (exact budget)")
    how.add_argument("--keep-fraction", type=float, help="keep this fraction of the LoRA parameters, in (0, 1]")
    how.add_argument("--energy", type=float, help="keep this fraction of the total squared singular mass, in (0, 1]")
    how.add_argument("--threshold", type=float, help="keep components whose (normalised) singular value >= T; 0 = full rank")
    p.add_argument(
        "--normalize",
        choices=("none", "scale", "fro"),
        default="none",
        help="score = raw sigma (none), sigma / module's largest sigma (scale), sigma / module's ||dW||_F (fro)",
    )
    p.add_argument("--min-rank", type=int, default=0, help="every module keeps at least this rank (0 lets modules drop)")
    p.add_argument("--out", required=True, help="new adapter directory (must not exist)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rankadaptor.compress.para import CompressConfig, compress
    from rankadaptor.fileio import check_output

    # the compressed adapter is at most as large as its input
    weights = Path(args.adapter_dir) / "adapter_model.safetensors"
    check_output(args.out, inputs=[args.adapter_dir], size=weights.stat().st_size if weights.is_file() else 0)

    config = CompressConfig(
        target_params=args.target_params,
        keep_fraction=args.keep_fraction,
        energy=args.energy,
        threshold=args.threshold,
        normalize=args.normalize,
        min_rank=args.min_rank,
    )
    report = compress(args.adapter_dir, args.out, config)
    print(format_table(report))
    print(f"wrote {args.out} (adapter + compress.json)")
    return 0


def format_table(report: dict) -> str:
    rows = report["modules"]
    width = max(len("module"), *(len(r["module"]) for r in rows))
    lines = [f"{'module':<{width}}  {'rank':>9}  {'params':>21}  {'discarded energy':>16}"]
    for r in rows:
        rank = f"{r['old_rank']}->{r['new_rank']}"
        params = f"{r['params_before']}->{r['params_after']}"
        mark = " (dropped)" if r["dropped"] else ""
        lines.append(f"{r['module']:<{width}}  {rank:>9}  {params:>21}  {r['discarded_energy_fraction']:>15.2%}{mark}")
    t = report["totals"]
    lines.append(
        f"total: {t['params_before']} -> {t['params_after']} parameters ({t['params_kept_fraction']:.1%} kept), "
        f"{t['modules_after']}/{t['modules_before']} modules, discarded energy {t['discarded_energy_fraction']:.2%}"
    )
    return "\n".join(lines)
