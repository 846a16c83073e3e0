"""The one exception type for mistakes a user can fix: the CLI prints it as one line."""


class GalmetError(Exception):
    """A user-facing error: bad input, unreachable service, missing file.

    The command line prints ``galmet: error: <message>`` and exits non-zero, with no
    traceback. Raise it (or a subclass) with a message that says what to do.
    """
