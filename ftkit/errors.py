"""UsageError: the user gave us something wrong (exit code 2). RunStopped: a run ended early on purpose."""


class UsageError(Exception):
    """Bad usage, config or input. The CLI prints the message as one line and exits with code 2.

    The message must say where (file, line, column or key), what was found and what was expected.
    """


class RunStopped(Exception):
    """Training stopped before the end (a signal, a diverging loss). The CLI prints the message, which says what
    was kept and how to go on, and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (library errors run to many); "" when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else ""
