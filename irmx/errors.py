"""The one base class of errors a user fixes by changing the command, not the code.

``irmx.experiments.cli`` prints any ``UserError`` as one line ``error: <message>`` and exits 2;
everything else is a bug and keeps its traceback. Each subclass also derives from the builtin
error it refines, so ``except ValueError`` (or ``FileNotFoundError``) still catches it.
"""


class UserError(Exception):
    """A bad config value, an unusable workdir, a data set that is not prepared, ..."""


class ArgumentError(UserError, ValueError):
    """An invalid argument of a library function, named as the function names it:
    ``make_classifier: name='resnet18_x' is invalid; allowed: ...``.

    ``path`` says where the value sits in what the caller passed: the argument's name, or a
    dotted path into it (``specs.val.split``: option ``split`` of the spec ``val`` of argument
    ``specs``). A driver that passed a config value turns the error into one naming the config
    key (``irmx.config_checks.config_keys``); ``where``, ``argument``, ``value`` and ``allowed``
    are kept for that.
    """

    def __init__(self, where: str, argument: str, value, allowed: str, path: str = ""):
        self.where, self.argument, self.value, self.allowed = where, argument, value, allowed
        self.path = path or argument
        super().__init__(f"{where}: {argument}={value!r} is invalid; allowed: {allowed}")

    def __reduce__(self):  # picklable (a worker process's error reaches its parent)
        return type(self), (self.where, self.argument, self.value, self.allowed, self.path)
