"""One exception type for every user-facing error.

The CLI turns a ``RankAdaptorError`` into a one-line message and exit code 2; anything else is
a bug and keeps its traceback. Messages name the bad value and say how to fix it.
"""


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
