"""One exception type for every problem a user can fix (bad input, missing files, wrong settings).

The command line prints its message without a traceback; the app shows it in an error box.
"""


class SinfError(Exception):
    """A problem the user can act on; the message says what is wrong and what to do."""
