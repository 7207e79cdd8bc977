"""Flags for running at scale, shared by the commands that take them, and the estimate they print.

* ``--device-map auto [--allow-cpu-offload]`` (eval, recover): one model spread over the visible GPUs;
* ``--gradient-checkpointing``, ``--distill [--teacher MODEL]`` (recover);
* ``print_estimate``: the memory / time estimate printed before a long prune, recovery or search,
  and the refusal when it does not fit (``--no-memory-check``, a global flag, runs anyway).
"""

from __future__ import annotations

from rankadaptor.errors import RankAdaptorError


def add_device_map_arguments(p) -> None:
    p.add_argument("--device-map", default=None, choices=("auto",),
                   help="spread the model's layers over every visible GPU (accelerate); choose the GPUs with "
                        "CUDA_VISIBLE_DEVICES. Without a GPU the model runs on the CPU")
    p.add_argument("--allow-cpu-offload", action="store_true",
                   help="with --device-map auto, run the layers that do not fit on the GPUs on the CPU (slow) "
                        "instead of refusing")


def device_map_args(args) -> dict:
    """load_model's keyword arguments for the device-map flags, checked against --device."""
    if args.device_map is None:
        if args.allow_cpu_offload:
            raise RankAdaptorError("--allow-cpu-offload only applies with --device-map auto")
        return {}
    if getattr(args, "device", None) not in (None, "auto"):
        raise RankAdaptorError(f"--device {args.device} and --device-map auto both say where the model goes; "
                               "drop --device (choose GPUs with CUDA_VISIBLE_DEVICES)")
    return {"device_map": args.device_map, "allow_offload": args.allow_cpu_offload}


def check_placement(spec: str, placement: dict) -> None:
    """Plan the device map on the weightless model now: one that cannot be placed fails before any estimate."""
    if not placement:
        return
    from rankadaptor.device import plan_device_map
    from rankadaptor.models.loading import skeleton

    model = skeleton(spec)
    if model is not None:
        plan_device_map(model, placement["device_map"], placement["allow_offload"])


def add_recovery_scale_arguments(p) -> None:
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each decoder block's activations in the backward pass: far less memory, "
                        "about a third more time per step")
    p.add_argument("--distill", action="store_true",
                   help="learn from the unpruned teacher's next-token distribution as well: loss = alpha*T^2*"
                        "KL(teacher||student) + (1-alpha)*next-token loss")
    p.add_argument("--teacher", default=None, metavar="MODEL",
                   help="teacher for --distill (default: the unpruned model named in the pruned artefact's "
                        "pruning.json)")
    p.add_argument("--distill-alpha", type=float, default=0.5, help="weight of the distillation term (default 0.5)")
    p.add_argument("--distill-temperature", type=float, default=2.0, help="softmax temperature T (default 2)")


def distill_config(args):
    """(teacher spec, DistillConfig) or (None, None); a bad setting fails before any model loads."""
    if not args.distill:
        if args.teacher is not None:
            raise RankAdaptorError("--teacher names the model to distil from; add --distill")
        return None, None
    from rankadaptor.lora.distill import DistillConfig, teacher_spec
    from rankadaptor.models.loading import model_source

    config = DistillConfig(alpha=args.distill_alpha, temperature=args.distill_temperature)
    spec = args.teacher if args.teacher is not None else teacher_spec(args.model)
    model_source(spec)  # a teacher that names nothing fails now
    return spec, config


def print_estimate(est, args) -> None:
    """Print the estimate; refuse (before any weight loads) when it does not fit, unless --no-memory-check."""
    from rankadaptor.estimate import check

    print(est.summary())
    check(est, force=getattr(args, "no_memory_check", False))


def available_memory(args) -> int | None:
    """With --device-map auto: the free memory of every visible GPU together (None: the device's own)."""
    if getattr(args, "device_map", None) is None:
        return None
    from rankadaptor.device import gpu_free_memory

    free = gpu_free_memory()
    return sum(free.values()) if free else None
