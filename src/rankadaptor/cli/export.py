"""``rankadaptor export PRUNED [--adapter DIR] [--merge] --out DIR``: a directory plain transformers loads."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a pruned model (optionally with its adapter merged) that plain transformers / PEFT load",
        description=(
            "Writes safetensors weights, config.json, the tokenizer and, when blocks have different widths, "
            "a small modeling file (load with trust_remote_code=True). --merge folds a LoRA adapter into the "
            "weights exactly as PEFT's merge_and_unload does; without --merge the adapter is copied to "
            "OUT/adapter and names OUT as its base. Example: rankadaptor export pruned/ --adapter adapter/ "
            "--merge --out merged/"
        ),
    )
    p.add_argument("pruned", metavar="PRUNED", help="a pruned artefact directory (written by `rankadaptor prune`)")
    p.add_argument("--adapter", default=None, metavar="DIR", help="a PEFT LoRA/AdaLoRA adapter trained on PRUNED")
    p.add_argument("--merge", action="store_true", help="fold --adapter into the weights (one plain model)")
    p.add_argument("--out", required=True, help="new output directory (must not exist; appears only when complete)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rankadaptor.models.export import export_pruned

    done = export_pruned(args.pruned, args.out, adapter=args.adapter, merge=args.merge)
    code = ", trust_remote_code=True" if done["needs_trust_remote_code"] else ""
    what = "merged model" if done["merged"] else "model"
    print(f"exported {what} to {done['out']}: AutoModelForCausalLM.from_pretrained({done['out']!r}{code})")
    if done["adapter_dir"]:
        print(f"adapter: AutoPeftModelForCausalLM.from_pretrained({done['adapter_dir']!r}{code})")
    return 0
