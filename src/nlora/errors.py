"""One exception type for every user-facing problem: the CLI prints it as one line and exits 2."""


class NloraError(Exception):
    """Bad input or an unrecoverable condition that the user can fix (file, field or value named)."""
