"""``rankadaptor recover``: LoRA recovery of a (pruned) model with a rank plan or a registered method."""

from __future__ import annotations

import argparse
from pathlib import Path

from rankadaptor.errors import RankAdaptorError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "recover",
        help="fine-tune LoRA with per-layer ranks on a (pruned) model; writes a PEFT adapter + recovery.json",
        description="Examples: rankadaptor recover pruned/ --ranks lora-star --steps 40 --out adapter/ ; "
                    "rankadaptor recover pruned/ --method adalora --steps 40 --out ada/",
    )
    p.add_argument("model", help="alias (smollm2-135m), HF dir, GGUF file or pruned-artefact dir")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ranks", help="uniform:R, lora-star, or a rank-plan JSON file")
    how.add_argument("--method", help="a registered recovery method (adalora, prunedlora, ...)")
    p.add_argument("--target-params", type=int, default=None,
                   help="final LoRA parameter budget for --method (default: uniform rank --uniform-r's count)")
    p.add_argument("--uniform-r", type=int, default=8, help="uniform rank whose parameter count is the default budget")
    p.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra keyword option for --method (repeatable)")
    p.add_argument("--data", default=None, help="Alpaca .json/.jsonl, a text file, or a hub dataset id "
                                                 "(default: the offline Brown corpus train split)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="recovery config JSON (RecoveryConfig fields: lr, batch_size, ...); flags given here win")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=int, default=None, help="optimizer steps (default 20)")
    steps.add_argument("--epochs", type=float, default=None)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per optimizer step (default 8)")
    p.add_argument("--micro-batch-size", type=int, default=None, help="examples per forward (grad accumulation)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per example (default 128)")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--warmup-steps", type=int, default=None, help="default 0")
    p.add_argument("--weight-decay", type=float, default=None, help="default 0")
    p.add_argument("--eval-every", type=int, default=None, help="steps between validation losses (default: end only)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="save a resumable checkpoint every N steps in OUT.checkpoints/; re-running the same "
                        "command resumes from it (default 0: no checkpoints)")
    p.add_argument("--out", required=True, help="new adapter directory (refuses to overwrite; an unfinished "
                                                 "run with checkpoints resumes)")
    p.add_argument("--force", action="store_true",
                   help="use a --ranks plan file even though it records another model than MODEL")
    from rankadaptor.cli.prunedlora_flags import add_prunedlora_arguments
    from rankadaptor.cli.scale_flags import add_device_map_arguments, add_recovery_scale_arguments

    add_prunedlora_arguments(p)
    add_recovery_scale_arguments(p)
    add_device_map_arguments(p)
    p.set_defaults(func=run)


def parse_ranks(spec: str, n_layers: int | None = None):
    """``uniform:R`` / ``lora-star`` need the layer count; a file is read before any model loads."""
    from rankadaptor.lora.ranks import RankPlan

    if spec.startswith("uniform:"):
        try:
            r = int(spec.split(":", 1)[1])
        except ValueError:
            raise RankAdaptorError(f"--ranks {spec!r}: the rank after 'uniform:' must be an integer, e.g. uniform:8")
        if r < 1:
            raise RankAdaptorError(f"--ranks {spec!r}: rank must be >= 1")
        return None if n_layers is None else RankPlan.uniform(n_layers, r)
    if spec == "lora-star":
        return None if n_layers is None else RankPlan.lora_star(n_layers)
    if Path(spec).suffix == ".json" or Path(spec).exists():
        return RankPlan.from_json(spec)
    raise RankAdaptorError(f"--ranks {spec!r} unknown; use uniform:R, lora-star or a plan .json file")


def _build_method(cls, name: str, kwargs: dict):
    """A method from keyword options; an unknown or ill-typed option is a user error, not a traceback."""
    import inspect

    try:
        return cls(**kwargs)
    except TypeError as exc:
        params = [p for p in inspect.signature(cls).parameters if p not in ("self", "kwargs", "schedule")]
        if name == "prunedlora":
            from dataclasses import fields

            from rankadaptor.lora.pruned_lora import PruneSchedule

            params += [f.name for f in fields(PruneSchedule)]
        raise RankAdaptorError(f"--method {name}: bad --method-arg ({exc}); valid keys: {sorted(params)}") from None


def _method_kwargs(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise RankAdaptorError(f"--method-arg {pair!r} must look like KEY=VALUE")
        key, value = pair.split("=", 1)
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key.replace("-", "_")] = value
    return out


# flag -> RecoveryConfig field; a flag left at None keeps the config file's value or the default
_CONFIG_FLAGS = {"steps": "max_steps", "epochs": "epochs", "lr": "lr", "batch_size": "batch_size",
                 "micro_batch_size": "micro_batch_size", "seq_len": "seq_len", "seed": "seed",
                 "warmup_steps": "warmup_steps", "weight_decay": "weight_decay", "eval_every": "eval_every",
                 "checkpoint_every": "checkpoint_every", "threads": "threads",
                 "gradient_checkpointing": "gradient_checkpointing"}


def recovery_config(args: argparse.Namespace):
    """RecoveryConfig from defaults, then ``--config FILE``, then the flags actually given."""
    from rankadaptor.lora.recover import RecoveryConfig

    values = {}
    if args.config is not None:
        from rankadaptor.fileio import read_json

        values = read_json(args.config, what="recovery config")
        RecoveryConfig.from_dict(values, source=f"recovery config {args.config}")  # the file alone must be valid
        values = dict(values)
    for flag, field_name in _CONFIG_FLAGS.items():
        if getattr(args, flag, None) not in (None, False):  # a store_true flag left off keeps the file's value
            values[field_name] = getattr(args, flag)
    if args.epochs is not None:
        values["max_steps"] = None  # --epochs replaces a step count from the file
    elif args.steps is not None:
        values["epochs"] = None
    return RecoveryConfig(**values)


def _estimate(args, config, file_plan, method, teacher_spec, distill_config) -> None:
    """Print peak memory and time per step before anything loads; refuse a run that cannot fit."""
    from rankadaptor.cli.scale_flags import available_memory, print_estimate
    from rankadaptor.estimate import estimate_recover
    from rankadaptor.lora.distill import check_same_vocabulary
    from rankadaptor.lora.ranks import RankPlan, count_lora_params, decoder_layer_names
    from rankadaptor.models.loading import skeleton

    model = skeleton(args.model)
    teacher = skeleton(teacher_spec) if teacher_spec is not None else None
    if model is None:
        return  # a GGUF file: its shapes are known once its weights are read
    if teacher is not None:
        check_same_vocabulary(model, teacher)  # before either model's weights load
    n = len(decoder_layer_names(model))
    plan = file_plan or (parse_ranks(args.ranks, n) if args.ranks else None)
    if plan is None:  # a method: its starting rank decides the LoRA state
        start = getattr(getattr(method, "schedule", None), "init_rank", None)  # PrunedLoRA
        if start is None and hasattr(method, "budget"):
            start = method.budget(model)["init_r"]  # AdaLoRA
        plan = RankPlan.uniform(n, start or args.uniform_r)
    print_estimate(estimate_recover(model, config.batch_size, config.seq_len, count_lora_params(model, plan),
                                    micro_batch_size=config.micro_batch_size,
                                    gradient_checkpointing=config.gradient_checkpointing, teacher=teacher,
                                    available=available_memory(args)), args)


def run(args: argparse.Namespace) -> int:
    from rankadaptor.lora.methods import get_method
    from rankadaptor.lora.recover import recover
    from rankadaptor.models.loading import load_model

    from rankadaptor.data.recovery import check_data_source
    from rankadaptor.fileio import check_output

    # Everything checkable without the model is checked first. The adapter's size is known only
    # once the model is wrapped: recover() checks the room for it then, before training.
    check_output(args.out, inputs=[args.model, args.data, args.config, args.ranks])
    config = recovery_config(args)
    file_plan = parse_ranks(args.ranks) if args.ranks else None
    check_data_source(args.data)
    method = None
    if args.method == "prunedlora" and not args.method_arg:
        from rankadaptor.lora.pruned_lora import method_from_args

        method = method_from_args(args)
    elif args.method:
        kwargs = _method_kwargs(args.method_arg)
        kwargs.setdefault("target_params", args.target_params)
        if args.method == "adalora":
            kwargs.setdefault("uniform_r", args.uniform_r)
        method = _build_method(get_method(args.method), args.method, kwargs)
    from rankadaptor.cli import scale_flags

    placement = scale_flags.device_map_args(args)
    teacher_spec, distill_config = scale_flags.distill_config(args)
    scale_flags.check_placement(args.model, placement)
    _estimate(args, config, file_plan, method, teacher_spec, distill_config)  # refuses what cannot fit

    loaded = load_model(args.model, **placement)
    if file_plan is not None and not args.force:
        mismatch = file_plan.model_mismatch(loaded.identity)
        if mismatch:
            raise RankAdaptorError(f"--ranks {args.ranks}: {mismatch}; make a plan for this model, or pass --force "
                                   "to use it anyway")
    distill = None
    if teacher_spec is not None:
        from rankadaptor.lora.distill import Distiller

        teacher = load_model(teacher_spec, **placement)
        distill = Distiller(teacher.model, distill_config, identity=teacher.identity, tokenizer=teacher.tokenizer)
    plan = file_plan
    if args.ranks and plan is None:
        from rankadaptor.lora.ranks import decoder_layer_names

        plan = parse_ranks(args.ranks, len(decoder_layer_names(loaded.model)))
    if plan is not None and plan.model is None:
        plan.model = loaded.identity
    result = recover(loaded.model, loaded.tokenizer, plan, config, data=args.data, method=method, out=args.out,
                     identity=loaded.identity, distill=distill)
    rec = result.record
    if rec.get("resumed_after_steps"):
        print(f"resumed from the checkpoint after step {rec['resumed_after_steps'][-1]} of {rec['total_steps']}")
    print(f"recovered {args.model} with {rec['method']}: {rec['total_steps']} steps, "
          f"{rec['trainable_params']:,} trainable LoRA parameters, "
          f"loss {rec['loss_curve'][0]['loss']:.3f} -> {rec['loss_curve'][-1]['loss']:.3f}, "
          f"validation loss {rec['val_loss']:.3f}, {rec['seconds_per_step']:.2f} s/step")
    if "prunedlora" in rec:
        b = rec["prunedlora"]["budget"]
        verdict = "at budget" if b["at_budget"] else "NOT at budget"
        print(f"PrunedLoRA: {b['final_params']:,} LoRA parameters for a budget of {b['requested_params']:,}: "
              f"{verdict} (at most the budget and less than one component, {b['largest_component']:,}, below it)")
    print(f"adapter + recovery.json: {args.out}")
    return 0
