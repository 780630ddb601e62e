"""User-facing errors. The CLI prints these (and OS errors) as one line and exits with code 2;
anything else is a bug and keeps its traceback (exit 1).

Every class derives from :class:`PtychoPINNError`, itself a ``ValueError`` so library callers
that catch ``ValueError`` keep working.
"""


class PtychoPINNError(ValueError):
    """Base class for errors caused by user input (files, values, options) or by the run's data."""


class ConfigError(PtychoPINNError):
    """A configuration value, option or config file is invalid. The message names the field,
    the value and what is expected."""


class DataError(PtychoPINNError):
    """A scan file or array does not satisfy the data contract.

    The message names the file, the key and what was expected.
    """

    def __init__(self, source: str, key: str, problem: str):
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}")


class BundleError(PtychoPINNError):
    """A model bundle is missing, corrupt, unsafe or incompatible."""


class OutputLockedError(PtychoPINNError):
    """Another live run holds the output directory's lock."""


class TrainingDivergedError(PtychoPINNError):
    """Training produced a non-finite loss or weights; no bundle was written."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C / SIGINT); no bundle was written.

    ``checkpoint`` is the ``last.ckpt`` to resume from (``--resume-from last``), or None.
    """

    def __init__(self, message: str, checkpoint=None):
        super().__init__(message)
        self.checkpoint = checkpoint
