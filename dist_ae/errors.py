"""The one error type for mistakes a user can make (bad file, bad flag, too small a batch).

The CLI prints its message on one line and exits with status 2; anything else is a bug and keeps its traceback.
"""


class UsageError(Exception):
    """A problem with what the user asked for or gave us; the message names the value and what would be right."""


class TrainingError(Exception):
    """Training cannot go on (replicas that disagree, a lost worker); the CLI prints it on one line, exit status 1."""
