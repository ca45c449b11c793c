"""The one user-facing error type.

Anything the user can fix (a bad path, a bad config value, a corrupt image) raises ``LoratuneError``; the CLI prints
its message as one line on stderr and exits with code 2. Every other exception is a bug and keeps its traceback.
"""


class LoratuneError(Exception):
    """A problem with the user's input, config or files; the message names the file or field."""

    exit_code = 2


def first_line(err: BaseException) -> str:
    """``TypeName: first line of the message`` for one-line error reports; safe on empty or blank messages.

    >>> first_line(ValueError("bad value\\nmore detail"))
    'ValueError: bad value'
    >>> first_line(KeyError())
    'KeyError'
    >>> first_line(RuntimeError("\\n"))
    'RuntimeError'
    """
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
