"""``rankadaptor compare A.json [A2.json ...] --against B.json [B2.json ...]``.

Paired comparison of two evaluations made on the same documents: per task and on the seven-task
average, A − B with a 95 % interval (paired bootstrap over documents × seeds), a verdict, the
smallest difference these documents can detect, and how many documents would detect ``--detect``.
Several files on one side are the seeds of one method (same model, adapters may differ).
"""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="paired A vs B comparison of `rankadaptor eval` results (CI, power, sizes)",
                       description=__doc__)
    p.add_argument("a", nargs="+", metavar="A.json", help="results of method A (one file per seed)")
    p.add_argument("--against", nargs="+", required=True, metavar="B.json", help="results of method B (one per seed)")
    p.add_argument("--detect", type=float, default=1.0, metavar="POINTS",
                   help="accuracy difference in points the sample-size column is sized for (default 1)")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap replicates (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--out", default=None, metavar="FILE.json", help="also write the comparison as JSON (new file)")
    p.set_defaults(func=run)


def run(args) -> int:
    from rankadaptor.errors import RankAdaptorError
    from rankadaptor.eval.compare import compare_results, comparison_text
    from rankadaptor.fileio import read_json, refuse_bad_out_parent, write_json_atomic

    paths = [*args.a, *args.against]
    seen = set()
    for path in paths:
        key = Path(path).resolve()
        if key in seen:
            raise RankAdaptorError(f"{path} is given twice; each file is one seed of one side")
        seen.add(key)
    if not 0 < args.detect < 100:
        raise RankAdaptorError(f"--detect {args.detect} must be a number of points in (0, 100)")
    if args.out is not None:
        if Path(args.out).exists():
            raise RankAdaptorError(f"{args.out} already exists; choose a new --out path (results are never overwritten)")
        if Path(args.out).resolve() in seen:
            raise RankAdaptorError(f"--out {args.out} is one of the inputs; choose a new path")
        refuse_bad_out_parent(args.out)
    a = [read_json(p, "results file") for p in args.a]
    b = [read_json(p, "results file") for p in args.against]
    cmp = compare_results(a, b, names_a=args.a, names_b=args.against, detect=args.detect / 100,
                          n_boot=args.boot, seed=args.seed)
    print(comparison_text(cmp, markdown=args.markdown))
    if args.out is not None:
        write_json_atomic(args.out, cmp)
        print(f"wrote {args.out}")
    return 0
