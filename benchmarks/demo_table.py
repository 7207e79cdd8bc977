"""Run the demo pipeline and keep its report as a benchmark result (the table the README shows).

    python benchmarks/demo_table.py --preset quick        # -> benchmarks/results/demo_quick.{json,md}

The run directory (models, adapters, per-unit results) lives under benchmarks/work/ and is
resumable; pass --from-run DIR to keep the report of a run that already finished elsewhere.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from rankadaptor.demo import run_demo
from rankadaptor.fileio import read_json

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--from-run", default=None, help="an existing demo run directory (resumed, not restarted)")
    args = ap.parse_args()
    run = Path(args.from_run or HERE / "work" / f"demo-{args.preset}")
    if args.from_run is None or not (run / "report.json").exists():
        # resumes: finished units are read back, not recomputed (a finished run keeps the report, and the
        # wall time, of the session that computed it)
        run_demo(args.preset, run, progress=True)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    report = read_json(run / "report.json", "demo report")
    shutil.copyfile(run / "report.md", results / f"demo_{args.preset}.md")
    shutil.copyfile(run / "report.json", results / f"demo_{args.preset}.json")
    print(f"wrote {results / f'demo_{args.preset}.md'} ({len(report['runs'])} evaluated runs); "
          "python benchmarks/readme_tables.py puts it in the README")


if __name__ == "__main__":
    main()
