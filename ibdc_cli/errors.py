"""The one exception type for problems a user can fix (bad input, bad options).

The CLI maps it to exit code 2 and prints its message on one line; anything else is a bug (exit 1).
"""


class IbdcError(Exception):
    """A user-facing error: the message names what is wrong and where (file, row, option)."""
