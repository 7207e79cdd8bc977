"""``rankadaptor demo [--preset smoke|quick|paper] [--out runs/NAME]``: the whole pipeline, resumable.

The console shows one progress bar for the whole run (with the time left) and a line per finished
unit; everything the libraries log (lm-eval, transformers, datasets, warnings) goes to RUN/demo.log.
"""

from __future__ import annotations

from rankadaptor.cli import at_least


def add_parser(sub) -> None:
    from rankadaptor.demo import PRESETS

    p = sub.add_parser("demo", help="prune, recover with every rank method, evaluate, report (offline default)",
                       description=__doc__)
    p.add_argument("--preset", choices=tuple(PRESETS), default="quick",
                   help="smoke (~3 min, proves it runs), quick (default, ~15 min on 2 CPU cores), paper (GPU)")
    p.add_argument("--out", default=None, help="run directory (default runs/demo-PRESET); re-running resumes")
    p.add_argument("--model", default="smollm2-135m", help="model spec (default: the offline SmolLM2-135M)")
    p.add_argument("--workers", type=at_least(1), default=None,
                   help="worker processes running independent units side by side (default: 2 on a CPU with "
                        ">= 2 cores, 1 with a GPU); each uses --threads torch threads (default: cores / workers)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from rankadaptor.errors import RankAdaptorError
    from rankadaptor.fileio import check_output

    out = Path(args.out or f"runs/demo-{args.preset}")
    if out.exists() and not out.is_dir():
        raise RankAdaptorError(f"--out {out} is a file; a demo run needs a directory (a new one, or an "
                               "earlier run's to resume it)")
    # a pruned copy of the model, adapters and reports: about the model's own size (a lower bound)
    from rankadaptor.models.loading import weights_bytes

    check_output(out, may_exist=True, inputs=[args.model], size=weights_bytes(args.model))
    from rankadaptor.eval.tasks import check_data

    check_data(None)  # the seven tasks' benchmark files, checked against their manifest before any unit runs
    import logging

    from rankadaptor.demo import run_demo
    from rankadaptor.demo.workers import console_filter

    for handler in logging.getLogger().handlers:  # the CLI's console: progress lines and warnings only
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.addFilter(console_filter)
    report = run_demo(args.preset, out, args.model, progress=not args.no_progress, workers=args.workers,
                      threads=args.threads)
    print(report["markdown"])
    print(f"report: {report['report']}")
    for p in report["plots"]:
        print(f"plot: {p}")
    return 0
