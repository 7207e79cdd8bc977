"""One exception type for every user-facing error.

The CLI turns a ``RankAdaptorError`` into a one-line message and exit code 2; anything else is
a bug and keeps its traceback. Messages name the bad value and say how to fix it.
"""


class RankAdaptorError(Exception):
    """A problem with the user's input or environment, with a message that says the fix."""
