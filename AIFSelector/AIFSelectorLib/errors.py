"""The one error type for bad input: its message is a single line that names the problem."""


class InputError(ValueError):
    """Input that cannot be processed (wrong dimensions, NaN, missing frame times, bad files ...).

    The command line prints ``error: <message>`` and exits non-zero; the Slicer modules show the message.
    """
