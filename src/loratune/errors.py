"""The one user-facing error type.

Anything the user can fix (a bad path, a bad config value, a corrupt image) raises ``LoratuneError``; the CLI prints
its message as one line on stderr and exits with code 2. Every other exception is a bug and keeps its traceback.
"""


class LoratuneError(Exception):
    """A problem with the user's input, config or files; the message names the file or field."""

    exit_code = 2
