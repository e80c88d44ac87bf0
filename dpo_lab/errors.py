"""User-facing errors (mistakes in configs or data, printed as one paragraph without a traceback), the exit codes of
every dpo-lab command and job process, and the one way a command ends (`run_command`)."""

import logging
import sys
import traceback
from typing import Callable, Optional

EXIT_OK = 0
EXIT_FAILED = 1  # a job ran and did not complete: its result.json says why (or a bug: its traceback is logged)
EXIT_USER_ERROR = 2  # a UserError: before anything ran, or a job's (argparse's code for a bad command line too)
EXIT_BUSY = 75  # a job's process found its dir locked by another and wrote nothing (sysexits' EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT): recorded as `interrupted`; the same command resumes


class UserError(Exception):
    """A problem the user can fix (bad config, bad data, missing path). The message says what to do."""


def bug_line(log_file: Optional[str] = None) -> str:
    """What follows the traceback of an exception that is not the user's mistake."""
    also = f" and {log_file}" if log_file else ""
    return (
        "This is a bug in dpo-lab or a library under it, not a problem with your config or data: please report it "
        f"with the traceback above{also}."
    )


def run_command(command: Callable[[], int], stopped: str = "Stopped.") -> int:
    """Run a command to its exit status: a UserError is its paragraph on stderr (2), Ctrl-C the `stopped` line (130),
    any other exception its traceback and the bug line, logged (the job's log where the command set one up) (1)."""
    try:
        return command()
    except UserError as e:
        print(e, file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"\n{stopped}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        logging.getLogger("dpo_lab").error("%s%s", traceback.format_exc(), bug_line())
        return EXIT_FAILED
