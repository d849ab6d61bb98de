"""The one base class of errors a user fixes by changing the command, not the code.

``irmx.experiments.cli`` prints any ``UserError`` as one line ``error: <message>`` and exits 2;
everything else is a bug and keeps its traceback. Each subclass also derives from the builtin
error it refines, so ``except ValueError`` (or ``FileNotFoundError``) still catches it.
"""


class UserError(Exception):
    """A bad config value, an unusable workdir, a data set that is not prepared, ..."""
