"""Generator networks: amplitudes -> complex patches. Registry: ``build_generator(name, ...)``."""

from ptychopinn.models.registry import (
    build_generator,
    generator_names,
    register_generator,
)

__all__ = ["build_generator", "generator_names", "register_generator"]
