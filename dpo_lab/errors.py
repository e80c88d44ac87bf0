"""User-facing errors: raised for mistakes in configs or data, printed as one paragraph without a traceback."""


class UserError(Exception):
    """A problem the user can fix (bad config, bad data, missing path). The message says what to do."""
