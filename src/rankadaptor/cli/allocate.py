"""``rankadaptor allocate MODEL --allocator NAME --out plan.json``: one-shot rank plan at a LoRA budget.

The plan (per-module ranks within 1 % of the budget) is a rank file for ``rankadaptor recover`` and
a seed plan for ``rankadaptor search``; ``plan.allocation.json`` beside it records
the ranks the method chose before they were fitted to the budget. Allocators: uniform, lora-star,
eva (PEFT's EVA on the first training batches), para (PARA's cut of a short uniform high-rank run),
prunedlora (the final ranks of a PrunedLoRA run at the budget).
"""

from __future__ import annotations

from pathlib import Path

from rankadaptor.errors import RankAdaptorError

ALLOCATOR_NAMES = ("uniform", "lora-star", "eva", "para", "prunedlora")  # rankadaptor.lora.allocators (no torch here)


def add_parser(sub) -> None:
    p = sub.add_parser("allocate", help="a one-shot rank plan at a LoRA budget (uniform, LoRA*, EVA, PARA, PrunedLoRA)",
                       description=__doc__)
    p.add_argument("model", metavar="MODEL", help="model spec (alias, directory, GGUF, pruned artefact)")
    p.add_argument("--allocator", required=True, help=f"one of {', '.join(ALLOCATOR_NAMES)}")
    p.add_argument("--budget", default="uniform:8", help="'uniform:R' (uniform rank R's count) or a parameter count")
    p.add_argument("--steps", type=int, default=10, help="training steps of para's / prunedlora's run (default 10)")
    p.add_argument("--high-rank", type=int, default=32, help="starting rank of para's / prunedlora's run")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="training data (default: the offline Brown corpus train split)")
    p.add_argument("--out", required=True, help="the plan JSON (RankPlan format)")
    p.set_defaults(func=run)


def _budget(spec: str, model) -> int:
    from rankadaptor.lora.ranks import RankPlan, count_lora_params, decoder_layer_names

    if spec.startswith("uniform:"):
        try:
            r = int(spec.split(":", 1)[1])
        except ValueError:
            raise RankAdaptorError(f"--budget {spec!r}: use uniform:R with an integer R") from None
        return count_lora_params(model, RankPlan.uniform(len(decoder_layer_names(model)), r))
    try:
        return int(float(spec))
    except ValueError:
        raise RankAdaptorError(f"--budget {spec!r} must be 'uniform:R' or a parameter count") from None


def run(args) -> int:
    from rankadaptor.data.recovery import check_data_source
    from rankadaptor.fileio import check_output, write_json_atomic

    if args.allocator not in ALLOCATOR_NAMES:
        raise RankAdaptorError(f"allocator {args.allocator!r} unknown; valid: {sorted(ALLOCATOR_NAMES)}")
    out = Path(args.out)
    record = out.with_name(out.stem + ".allocation.json")
    for path in (out, record):  # both checked and claimed before the model loads
        check_output(path, inputs=[args.model, args.data], size=1 << 20)
    if args.steps < 1 or args.high_rank < 1:
        raise RankAdaptorError(f"--steps {args.steps} and --high-rank {args.high_rank} must be >= 1")
    if args.allocator in ("eva", "para", "prunedlora"):
        check_data_source(args.data)

    from rankadaptor.data import load_recovery_data
    from rankadaptor.lora import allocators
    from rankadaptor.lora.recover import RecoveryConfig
    from rankadaptor.models.loading import load_model

    config = RecoveryConfig(max_steps=args.steps, lr=args.lr, batch_size=args.batch_size, seq_len=args.seq_len,
                            seed=args.seed)
    loaded = load_model(args.model)
    budget = _budget(args.budget, loaded.model)
    kw: dict = {}
    if args.allocator in ("eva", "para", "prunedlora"):
        data = load_recovery_data(args.data, loaded.tokenizer, seq_len=args.seq_len)
        pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else loaded.tokenizer.eos_token_id
        kw = {"eva": {"batches": allocators.eva_batches(data, pad or 0, args.batch_size)},
              "para": {"tokenizer": loaded.tokenizer, "data": data, "config": config, "high_rank": args.high_rank},
              "prunedlora": {"tokenizer": loaded.tokenizer, "data": data, "config": config}}[args.allocator]
        if args.allocator == "prunedlora":
            from rankadaptor.experiment_methods import prunedlora_at_budget

            kw["method"] = prunedlora_at_budget(loaded.model, args.high_rank, budget, args.steps)
    alloc = allocators.get_allocator(args.allocator)(loaded.model, budget=budget, **kw)
    alloc.plan.model = loaded.identity
    alloc.plan.to_json(out)
    write_json_atomic(record, alloc.to_dict())
    print(f"{args.allocator}: {alloc.params:,} LoRA parameters ({alloc.params / budget:.4f} of the budget "
          f"{budget:,}); {alloc.note}")
    print(f"plan: {out}\nrecord: {record}")
    return 0
