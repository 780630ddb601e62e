"""The package logger. Everything logs through ``ptychopinn`` so hosts (CLI, Ptychodus) see it."""

import logging

LOGGER_NAME = "ptychopinn"


def get_logger(name: str | None = None) -> logging.Logger:
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


def configure_cli_logging(quiet: bool = False) -> None:
    """INFO to stderr for the CLI, WARNING only with ``quiet``."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not any(getattr(h, "_ptychopinn_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._ptychopinn_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
