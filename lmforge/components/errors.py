"""The one exception type for user mistakes (bad params, bad files, missing inputs)."""


class LmforgeError(Exception):
    """A mistake the user can fix. The CLI prints its message as one line and exits with 2.

    The message must name the file, key or value at fault and say what was expected.
    Bugs are not LmforgeErrors: they keep their traceback.
    """
