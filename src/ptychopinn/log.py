"""The package logger. Everything logs through ``ptychopinn`` so hosts (CLI, Ptychodus) see it."""

import logging

LOGGER_NAME = "ptychopinn"


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (redirections and test capture work)."""

    @property
    def stream(self):
        import sys

        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property ignores it
        pass


#: Lightning warnings that are expected with our defaults and say nothing actionable.
EXPECTED_WARNINGS = (
    r".*does not have many workers.*",  # num_workers=0 is the right default for in-memory groups
    r".*Checkpoint directory .* exists and is not empty.*",  # resume into the same output dir
    r".*isinstance\(treespec, LeafSpec\).*",  # torch >= 2.10 deprecation hit inside Lightning
)


def quiet_levels(quiet: bool) -> dict[str, int]:
    """Logger levels of a quiet CLI run: Lightning's info lines (GPU/TPU availability, the
    litlogger tip) and our own INFO output hidden."""
    if not quiet:
        return {}
    return {
        "lightning.pytorch": logging.WARNING,
        "lightning.fabric": logging.WARNING,
        LOGGER_NAME: logging.WARNING,
        # "Experiment with name ... not found. Creating it." is a warning there
        "lightning.pytorch.loggers.mlflow": logging.ERROR,
    }


def filter_expected_warnings() -> None:
    import warnings

    for pattern in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def configure_cli_logging(quiet: bool = False) -> None:
    """CLI only (process-wide settings): INFO to stderr, WARNING only with ``quiet`` (Lightning's
    info lines hidden too); expected Lightning warnings filtered."""
    for name, level in quiet_levels(quiet).items():
        logging.getLogger(name).setLevel(level)
    filter_expected_warnings()
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not any(isinstance(h, _CurrentStderrHandler) for h in logger.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.propagate = False
