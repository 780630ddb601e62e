"""Imports the built-in engines so that they register in ``engine.ENGINES``."""

from ptychopinn.reconstruction import estimate, gradient, network  # noqa: F401
