"""Safe outputs: checked before work, claimed against concurrent runs, written atomically, never NaN.

* ``check_output(out, ...)``: everything knowable about writing ``out`` before any work (exists?
  inside an input? a file where a directory must be? writable? room for its estimated size?),
  then a claim (an fcntl lock) so that two runs never write one output at once.
* ``atomic_directory`` / ``write_json_atomic``: a result appears only when complete; what a killed
  run left half-written (``.OUT.*.partial``, ``.OUT.*.tmp``) is removed by the next writer there.
* ``private_tempdir``: a scratch folder that the next run removes if its owner was killed.
* ``require_file`` / ``read_json`` / ``read_text_file``: inputs with errors that say what is wrong.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from rankadaptor.errors import RankAdaptorError

log = logging.getLogger(__name__)

MIN_FREE_BYTES = 4 << 20  # headroom beyond an output's estimated size: logs, lock files, metadata


# ---- reading inputs --------------------------------------------------------------------------------
def require_file(path: str | os.PathLike, what: str = "file", flag: str | None = None) -> Path:
    """``path`` as a Path if it is an existing file; otherwise say whether it is missing or a directory."""
    path = Path(path)
    fix = f"; pass {flag} FILE" if flag else ""
    if path.is_dir():
        raise RankAdaptorError(f"{what} {path} is a directory, not a file{fix}")
    if not path.is_file():
        raise RankAdaptorError(f"{what} {path} not found{fix}")
    return path


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read JSON with an error that names the file and the problem."""
    path = require_file(path, what)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RankAdaptorError(f"{what} {path} is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:  # a binary file where JSON text was expected
        raise RankAdaptorError(f"{what} {path} is not UTF-8 text, so not JSON ({exc.reason} at byte {exc.start})") from exc


def read_text_file(path: str | os.PathLike, what: str = "text file", flag: str | None = None) -> str:
    """A plain-text file; a few undecodable bytes are replaced, a binary file is refused.

    Random bytes (a weights file, an archive) would otherwise tokenise into a perplexity or a
    calibration set of mojibake without a word: a NUL byte or more than 10 % undecodable
    characters means "not text".
    """
    path = require_file(path, what, flag)
    raw = path.read_bytes()
    fix = f"pass a plain text file{' as ' + flag if flag else ''}"
    if b"\x00" in raw[:1 << 20]:
        raise RankAdaptorError(f"{what} {path} contains NUL bytes, so it is a binary file, not text; {fix}")
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
    if text and bad > 0.1 * len(text):
        raise RankAdaptorError(f"{what} {path} is not UTF-8 text ({bad} of {len(text)} characters undecodable); {fix}")
    return text


# ---- writing results -------------------------------------------------------------------------------
def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON via a temporary file and ``os.replace``.

    Always valid JSON: a NaN or infinity (which ``json`` would write as a bare ``NaN``) becomes
    ``null``, with a warning naming where it was; numbers that must be finite are checked
    earlier (``rankadaptor.checks``) and stop the command instead.
    """
    path = Path(path)
    found: list[str] = []
    obj = _json_safe(obj, "", found)
    if found:
        log.warning("%s: non-finite value(s) at %s written as null", path, ", ".join(found[:5]))
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with claim(path, wait=True):  # a sweep elsewhere then never takes our temporary file for a dead run's
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        _live.add(tmp)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        finally:
            _live.discard(tmp)
    return path


def _json_safe(obj: Any, where: str, found: list[str]) -> Any:
    """``obj`` with numpy/torch values as plain Python, paths as strings and non-finite floats as None."""
    if isinstance(obj, dict):
        return {k: _json_safe(v, f"{where}.{k}" if where else str(k), found) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v, f"{where}[{i}]", found) for i, v in enumerate(obj)]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy / torch scalars and arrays
        return _json_safe(obj.tolist(), where, found)
    if isinstance(obj, float) and not math.isfinite(obj):
        found.append(where or "<top>")
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"not JSON serialisable: {type(obj).__name__} at {where or '<top>'}")


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``out`` only if the block succeeds.

    Refuses to replace an existing ``out`` unless ``overwrite`` is set, so a user's earlier
    result is never lost to a typo; with ``overwrite`` the old directory is swapped out only
    after the new one is complete. The block runs under ``out``'s claim, so half-written
    siblings left by killed writers are removed first.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise RankAdaptorError(f"output directory {out} already exists; choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with claim(out):
        sweep_stale(out.parent)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
        _live.add(str(tmp))
        try:
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
        finally:
            _live.discard(str(tmp))


# ---- claims: one writer per output -----------------------------------------------------------------
_held: dict[str, tuple[int, int]] = {}  # lock key -> (fd, depth) for the claims this process holds
_live: set[str] = set()  # the .partial folders and .tmp files this process is writing now


def _lock_path(target: Path) -> Path:
    """Where the lock of ``target`` lives: one shared folder, so no lock file litters an output's folder."""
    folder = Path(tempfile.gettempdir()) / "rankadaptor-locks"
    if not folder.is_dir():
        folder.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            folder.chmod(0o1777)  # every user of the machine takes locks here, as in /tmp itself
    key = hashlib.sha256(str(target).encode()).hexdigest()[:32]
    return folder / f"{key}.lock"


def _key(target: str | os.PathLike) -> Path:
    return Path(os.path.abspath(Path(target).expanduser())).resolve()


@contextlib.contextmanager
def claim(target: str | os.PathLike, flag: str = "--out", wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` for the block; another process's claim is refused at once
    (or, with ``wait``, waited for: a short write, not a whole run).

    Re-entrant within a process (a command claims its ``--out``, then ``atomic_directory`` claims
    it again). Locks are released by the OS when a process dies, so a killed run never blocks a
    later one; that is also how ``sweep_stale`` tells a dead writer's leftovers from a live one's.
    """
    key = _key(target)
    name = str(key)
    if name in _held:
        fd, depth = _held[name]
        _held[name] = (fd, depth + 1)
    else:
        fd = _open_lock(_lock_path(key))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RankAdaptorError(f"{flag} {target} is being written by another rankadaptor run (pid {owner}); "
                                   f"wait for it to finish or choose another {flag}") from None
        with contextlib.suppress(OSError):  # another user's lock file may be read-only to us
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        _held[name] = (fd, 1)
    try:
        yield
    finally:
        fd, depth = _held[name]
        if depth > 1:
            _held[name] = (fd, depth - 1)
        else:
            del _held[name]
            os.close(fd)  # closing the descriptor releases the lock


def _open_lock(path: Path) -> int:
    """A descriptor to flock ``path`` with (read-only when another user made it: flock does not mind)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


def _claimed_elsewhere(target: Path) -> bool:
    """Whether another live process holds the claim of ``target``."""
    if str(_key(target)) in _held:
        return False
    try:
        fd = _open_lock(_lock_path(_key(target)))
    except OSError:
        return True  # cannot tell: leave it alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


# the names our writers give half-written things: mkdtemp/mkstemp add 8 random characters
_STALE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.(?P<kind>partial|tmp)$")
TMP_FILE_AGE_S = 60  # a .tmp file younger than this may be another program's (same idiom): left alone


def sweep_stale(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove what killed writers left in ``folder``: ``.OUT.*.partial`` directories, ``.OUT.*.tmp`` files.

    A leftover is stale when it is not being written by this process and no other process holds
    the claim of the output it was being written for (every writer here claims its output first),
    so a concurrent run's partial is never touched; a ``.tmp`` file must also be a minute old, as
    other programs name their atomic writes the same way.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.rglob(".*") if recursive else folder.glob(".*"):
        m = _STALE.match(p.name)
        if m is None or str(p) in _live or _claimed_elsewhere(p.parent / m["name"]):
            continue
        if m["kind"] == "tmp" and time.time() - p.lstat().st_mtime < TMP_FILE_AGE_S:
            continue
        log.warning("removing %s, left half-written by an interrupted run", p)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed


@contextlib.contextmanager
def private_tempdir(prefix: str) -> Iterator[Path]:
    """A scratch directory under the system temp folder, removed afterwards and, if this run is
    killed, by the next run that asks for one with the same ``prefix``."""
    root = Path(tempfile.gettempdir())
    with claim(root / f"{prefix}{os.getpid()}"):
        for old in root.glob(f"{prefix}*-*"):
            pid = old.name[len(prefix):].split("-", 1)[0]
            if old.is_dir() and pid.isdigit() and str(old) not in _live \
                    and not _claimed_elsewhere(root / f"{prefix}{pid}"):
                log.warning("removing %s, left by an interrupted run", old)
                shutil.rmtree(old, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
        _live.add(str(tmp))
        try:
            yield tmp
        finally:
            _live.discard(str(tmp))
            shutil.rmtree(tmp, ignore_errors=True)


# ---- checking an output before any work ------------------------------------------------------------
def check_output(out: str | os.PathLike, *, flag: str = "--out", inputs: Iterable = (), size: int = 0,
                 may_exist: bool = False, hold: bool = True) -> Path:
    """Refuse, before any work, an output that cannot be written; returns it as a Path.

    Checks, in order: it does not exist yet (unless ``may_exist``: a run folder that resumes); it
    is not an input nor inside an input directory (``inputs``: paths, missing ones ignored); no
    ancestor is a file; the nearest existing ancestor is writable; its filesystem has ``size``
    bytes (the output's estimated size) plus headroom free. Missing parent directories are
    created at write time. With ``hold`` the output is then claimed (``claim``) until
    ``release_claims()`` (the CLI calls it when a command ends) or the process exits.
    """
    out = Path(out)
    if out.exists() and not may_exist:
        raise RankAdaptorError(f"{flag} {out} already exists; choose a new {flag} or remove it "
                               "(results are never overwritten)")
    for inp in inputs:
        refuse_same_path(inp, out, flag)
    anchor = refuse_bad_out_parent(out, flag)
    problem = not_writable(anchor)
    if problem:
        raise RankAdaptorError(f"{flag} {out}: cannot write in {anchor} ({problem}); choose another {flag}")
    check_room(out, size, flag)
    if hold:
        hold_claim(out, flag)
    return out


_command_claims = contextlib.ExitStack()


def hold_claim(out: str | os.PathLike, flag: str = "--out") -> None:
    """Claim ``out`` until ``release_claims()`` (the end of the command) or the process exits."""
    _command_claims.enter_context(claim(out, flag))


def release_claims() -> None:
    """Release the outputs ``check_output`` claimed (the end of a command)."""
    _command_claims.close()


def refuse_same_path(inp: str | os.PathLike | None, out: str | os.PathLike, flag: str = "--out") -> None:
    """Never let an output overwrite an input or land inside an input directory."""
    if inp is None or not Path(inp).exists():
        return
    target, src = _key(out), _key(inp)
    if target == src:
        raise RankAdaptorError(f"{flag} {out} is the input itself; choose a new {flag}")
    if src.is_dir() and target.is_relative_to(src):
        raise RankAdaptorError(f"{flag} {out} is inside the input {inp}; inputs are never modified, so choose "
                               f"a {flag} outside it")


def refuse_bad_out_parent(out: str | os.PathLike, flag: str = "--out") -> Path:
    """The nearest existing ancestor of ``out``; an error when it is a file (``out`` cannot be created)."""
    anchor = next(p for p in _key(out).parents if p.exists() or p == p.parent)
    if not anchor.is_dir():
        raise RankAdaptorError(f"{flag} {out}: {anchor} is a file, not a directory; choose another {flag}")
    return anchor


def check_room(out: str | os.PathLike, size: int, flag: str = "--out") -> None:
    """Refuse to start work whose ``size`` bytes of output will not fit where ``out`` goes."""
    anchor = next(p for p in _key(out).parents if p.is_dir() or p == p.parent)
    free = shutil.disk_usage(anchor).free
    if free < size + MIN_FREE_BYTES:
        raise RankAdaptorError(f"{flag} {out}: the filesystem of {anchor} has {_mb(free)} free, and this run will "
                               f"write about {_mb(size + MIN_FREE_BYTES)}; free some space or choose another {flag}")


def not_writable(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (read-only filesystem, permissions), or None.

    A real probe (create + remove a file), since ``os.access`` says yes to root on a chmod-ed
    folder and knows nothing of quotas.
    """
    probe = folder / f".rankadaptor-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(probe)
    return None


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB" if n < 2**30 else f"{n / 2**30:,.1f} GB"
