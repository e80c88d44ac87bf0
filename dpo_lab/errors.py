"""User-facing errors (mistakes in configs or data, printed as one paragraph without a traceback) and the exit
codes of every dpo-lab command and job process."""

EXIT_OK = 0
EXIT_FAILED = 1  # a job ran and did not complete: its result.json says why
EXIT_USER_ERROR = 2  # a UserError before anything ran (argparse's code for a bad command line too)
EXIT_BUSY = 75  # a job's process found its dir locked by another and wrote nothing (sysexits' EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT): recorded as `interrupted`; the same command resumes


class UserError(Exception):
    """A problem the user can fix (bad config, bad data, missing path). The message says what to do."""
