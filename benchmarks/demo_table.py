"""Run the demo pipeline and keep its report as a benchmark result (the table the README shows).

    python benchmarks/demo_table.py --preset quick        # -> benchmarks/results/demo_quick.{json,md} + demo_quick/*.png

The run directory (models, adapters, per-unit results) lives under benchmarks/work/ and is
resumable; pass --from-run DIR to keep the report of a run that already finished elsewhere.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from rankadaptor.demo import run_demo
from rankadaptor.fileio import read_json, write_text_atomic

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--from-run", default=None, help="an existing demo run directory (resumed, not restarted)")
    ap.add_argument("--rerender", action="store_true",
                    help="rebuild the finished run's report (tables, pictures) with this version's report code")
    args = ap.parse_args()
    run = Path(args.from_run or HERE / "work" / f"demo-{args.preset}")
    if args.rerender:  # the report rebuilt from the finished units, keeping the session that computed them
        from rankadaptor.demo import Demo, preset
        from rankadaptor.report.demo_report import write_report

        old = read_json(run / "report.json", "demo report")
        demo = Demo(preset(args.preset), run, old.get("model", "smollm2-135m"))
        done = {u.key: demo.run.done(u.key) for u in demo.plan()}
        if None in done.values():
            raise SystemExit(f"{run} is not a finished run; resume it without --rerender first")
        write_report(run, demo.cfg, done, old["provenance"], old["session"], model=demo.model_spec)
    elif args.from_run is None or not (run / "report.json").exists():
        # resumes: finished units are read back, not recomputed (a finished run keeps the report, and the
        # wall time, of the session that computed it)
        run_demo(args.preset, run, progress=True)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    report = read_json(run / "report.json", "demo report")
    markdown = (run / "report.md").read_text()
    for png in report["plots"]:  # the links follow the pictures into their folder
        name = Path(png).name
        markdown = markdown.replace(f"]({name})", f"](demo_{args.preset}/{name})")
    write_text_atomic(results / f"demo_{args.preset}.md", markdown)
    shutil.copyfile(run / "report.json", results / f"demo_{args.preset}.json")
    pictures = results / f"demo_{args.preset}"  # the report's PNGs, beside its markdown's relative links
    pictures.mkdir(exist_ok=True)
    for png in report["plots"]:
        shutil.copyfile(run / Path(png).name, pictures / Path(png).name)
    print(f"wrote {results / f'demo_{args.preset}.md'} ({len(report['runs'])} evaluated runs); "
          "python benchmarks/readme_tables.py puts it in the README")


if __name__ == "__main__":
    main()
