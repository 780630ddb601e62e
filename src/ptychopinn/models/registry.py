"""Generator registry: ``build_generator(name, ...)``; an unknown name lists the valid ones."""

from __future__ import annotations

from torch import nn

from ptychopinn.registry import Registry

#: name -> factory(**kwargs) -> nn.Module; the built-ins register when ``models.cnn`` is imported.
GENERATORS = Registry("generator", builtins="ptychopinn.models.cnn")
register_generator = GENERATORS.register


def build_generator(name: str, **kwargs) -> nn.Module:
    """Build a generator network: (B, C, N, N) amplitudes -> (B, C, N, N) complex64 patches."""
    return GENERATORS[name](**kwargs)


def generator_names() -> list[str]:
    return sorted(GENERATORS)
