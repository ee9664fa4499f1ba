"""The one exception type for errors a user can cause.

The CLI prints these as a single line and exits non-zero; anything else is a bug and
keeps its traceback. Messages name the file or object at fault and the fix.
"""


class StlBenchError(Exception):
    """A problem with the user's input: a path, a checkpoint, a data folder, a flag."""
