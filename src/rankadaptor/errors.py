"""One exception type for every user-facing error.

The CLI turns a ``RankAdaptorError`` into a one-line message and exit code 2; anything else is
a bug and keeps its traceback. Messages name the bad value and say how to fix it.
``describe_io_error`` turns what the environment raises (disk full, read-only filesystem,
permissions; also safetensors' own I/O errors) into such a line.
"""

import errno
import os
import re


class RankAdaptorError(Exception):
    """A problem with the user's input or environment, with a message that says the fix."""


def user_file_errors() -> tuple[type[BaseException], ...]:
    """What transformers / safetensors / pyarrow raise on a damaged or unsupported user file (a broken
    config.json, a value a config class rejects, truncated weights, a corrupt .arrow file).

    Catch these only around a call that reads the user's file, and re-raise a ``RankAdaptorError``
    naming that file: there they mean bad input, not a bug.
    """
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    errors: tuple[type[BaseException], ...] = (OSError, ValueError, TypeError, KeyError, IndexError, RuntimeError,
                                               ZeroDivisionError, MemoryError, OverflowError, SafetensorError,
                                               StrictDataclassError)
    try:
        import pyarrow

        errors += (pyarrow.ArrowException,)
    except ImportError:  # pragma: no cover - datasets brings pyarrow
        pass
    return errors


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The start of an exception's message, on one line, for a one-line error."""
    text = " ".join(str(exc).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def describe_io_error(exc: BaseException) -> str | None:
    """One line for an I/O error anywhere in ``exc``'s chain, or None when it is not one.

    safetensors reports a full disk as ``SafetensorError("... I/O error: No space left on device
    (os error 28)")``, not as an OSError; its errno is read back from the message.
    """
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return describe_os_error(seen)
        found = re.search(r"I/O error: .*\(os error (\d+)\)", str(seen))
        if found:
            code = int(found[1])
            return describe_os_error(OSError(code, os.strerror(code)))
        seen = seen.__cause__ or seen.__context__
    return None


def describe_os_error(exc: OSError) -> str:
    """One line for an I/O error: what failed, on which file, and the likely fix."""
    where = f" on {exc.filename}" if exc.filename else ""
    hints = {errno.ENOSPC: "the disk is full; free some space or write elsewhere",
             errno.EDQUOT: "the disk quota is exhausted; free some space or write elsewhere",
             errno.EROFS: "the filesystem is read-only; write elsewhere",
             errno.EACCES: "permission denied; check the permissions or write elsewhere",
             errno.EPERM: "operation not permitted; check the permissions or write elsewhere",
             errno.ENOENT: "no such file or directory; check the path",
             errno.EISDIR: "it is a directory, not a file",
             errno.ENOTDIR: "a part of the path is a file, not a directory",
             errno.EIO: "the device reported an input/output error"}
    return f"I/O error{where}: {exc.strerror or exc} ({hints.get(exc.errno, 'check the path and the disk')})"
