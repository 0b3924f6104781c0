"""The two kinds of failure a user can see, and the exit code each maps to.

Library code raises these; only the CLI turns them into a one-line message and an exit code.
"""


class TreerpoError(Exception):
    """Base class: a failure with a message meant for the user (one line)."""

    exit_code = 1


class BadInputError(TreerpoError):
    """The user's input is wrong (missing file, unknown id, invalid flag value...): exit 2.

    Raised before anything is written, so the store is left unchanged.
    """

    exit_code = 2


class RunFailure(TreerpoError):
    """Something failed while running on valid input: exit 1."""

    exit_code = 1
