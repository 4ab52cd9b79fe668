"""The one kind of error a user can fix: every command line prints it as one line, `error: <message>`, and exits 2.

Each subclass names where the problem is (its message names the file, the
key or field, and the fix); tools/utils/cli.py does the printing. A user's value is quoted in a message
with quoted(), which never builds more than a short prefix of its repr.
"""
import reprlib
import signal

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 60, 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 8


def quoted(value, limit=80):
    """repr(value) cut to at most about `limit` characters; a huge value costs no more than a short one."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class UserError(Exception):
    """A problem the user can fix; the message says where it is and what to do."""


class ConfigError(UserError, ValueError):
    """A config that cannot be used."""


class DataError(UserError, ValueError):
    """A data file that does not follow the format."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, corrupt or from another run."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (the loss diverged, nothing is learned)."""


class DistributedError(UserError, RuntimeError):
    """A run across processes cannot go on: another rank failed, died or stopped answering."""


class DiskFull(UserError, OSError):
    """A write found its device full (or the quota spent): the file, the bytes it needed, what that left."""

    def __init__(self, path, needed, left="nothing was replaced (the file there before, if any, is whole)",
                 fix="Free space and rerun"):
        super().__init__(f"{path}: no space left on its device (writing it needs {needed}); {left}. {fix}")
        self.path, self.needed = path, needed


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # what Stopped reports: a scheduler's stop and Ctrl-C


def restart_calls_on_stop():
    """Let a stop signal restart the system call it lands in (SA_RESTART), for the handlers installed now; its
    Python handler runs when the call returns.

    For the calls between the ranks of a run: Paddle's TCP store fails a recv the signal interrupts ("TCP receive
    error. Details: Interrupted system call"), which ended a stopping run as "another rank died" without its step
    checkpoint, and paddle.distributed.launch sends its SIGTERM up to three times, 0.2 s apart. signal.signal()
    clears the flag (files.stop_signals_held swaps handlers around every checkpoint write), so the callers set it
    again before each call: 4 sigaction calls, about a microsecond.
    """
    for signum in STOP_SIGNALS:
        signal.siginterrupt(signum, False)


class Stopped(BaseException):
    """The run was stopped by a signal (SIGTERM from a scheduler, Ctrl-C) after keeping what it had.

    The command lines print the message as one line and exit with exit_code (128 + the signal's number). A
    BaseException, as KeyboardInterrupt is, so that no `except Exception` meant for a library's failures turns a
    stop into an error (import_pickle's did: "its objects do not rebuild a pandas DataFrame (Stopped: ...)").
    """

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code
