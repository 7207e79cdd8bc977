"""Atomic outputs: a result file or directory appears only when complete, inputs are never touched."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from rankadaptor.errors import RankAdaptorError


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON via a temporary file and ``os.replace``."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON with an error that names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise RankAdaptorError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RankAdaptorError(f"{what} {path} is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:  # a binary file where JSON text was expected
        raise RankAdaptorError(f"{what} {path} is not UTF-8 text, so not JSON ({exc.reason} at byte {exc.start})") from exc


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``out`` only if the block succeeds.

    Refuses to replace an existing ``out`` unless ``overwrite`` is set, so a user's earlier
    result is never lost to a typo; with ``overwrite`` the old directory is swapped out only
    after the new one is complete.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise RankAdaptorError(f"output directory {out} already exists; choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def refuse_same_path(inp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Never let an output overwrite an input."""
    if Path(inp).resolve() == Path(out).resolve():
        raise RankAdaptorError(f"--out {out} is the input itself; choose a new directory")


def refuse_bad_out_parent(out: str | os.PathLike) -> None:
    """Fail before any work when ``out`` cannot be created because an ancestor is a file."""
    for parent in Path(out).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise RankAdaptorError(f"--out {out}: {parent} is a file, not a directory; choose another --out")
            return
