"""The one exception type for mistakes a user can fix (bad flag, missing file, offline, ...).

CLIs catch it (see :mod:`fastcifar.cli`) and print its message as one line with no traceback;
programming errors stay ordinary exceptions and keep their tracebacks.
"""


class UserError(Exception):
    """A problem the user can fix; its message says what went wrong and what to do."""

    exit_code = 2
