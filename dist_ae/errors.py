"""The one error type for mistakes a user can make (bad file, bad flag, too small a batch).

The CLI prints its message on one line and exits with status 2; anything else is a bug and keeps its traceback.
"""


class UsageError(Exception):
    """A problem with what the user asked for or gave us; the message names the value and what would be right."""


class TrainingError(Exception):
    """Training cannot go on (replicas that disagree, a lost worker); the CLI prints it on one line, exit status 1."""


class Preempted(Exception):
    """Training stopped on request (SIGTERM or SIGINT) after the chief wrote a checkpoint at `position`."""

    exit_status = 75  # EX_TEMPFAIL: try again; rerunning the same command resumes

    def __init__(self, position):
        super().__init__(f"after step {position.step} of epoch {position.epoch + 1}" if position.step
                         else f"after epoch {position.epoch}")
        self.position = position
