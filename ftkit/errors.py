"""The one exception type that means "the user gave us something wrong" (exit code 2)."""


class UsageError(Exception):
    """Bad usage, config or input. The CLI prints the message as one line and exits with code 2.

    The message must say where (file, line, column or key), what was found and what was expected.
    """
