"""User-facing errors. The CLI prints these as one line and exits with code 2."""


class PtychoPINNError(ValueError):
    """Base class for errors caused by user input (files, values, options)."""


class DataError(PtychoPINNError):
    """A scan file or array does not satisfy the data contract.

    The message names the file, the key and what was expected.
    """

    def __init__(self, source: str, key: str, problem: str):
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}")


class BundleError(PtychoPINNError):
    """A model bundle is missing, corrupt or incompatible."""
