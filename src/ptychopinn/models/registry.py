"""Generator registry: ``build_generator(name, ...)``; an unknown name lists the valid ones."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ptychopinn.errors import ConfigError

GENERATORS: dict[str, Callable[..., nn.Module]] = {}


def register_generator(name: str):
    def deco(factory):
        if name in GENERATORS:
            raise ValueError(f"generator {name!r} registered twice")
        GENERATORS[name] = factory
        return factory

    return deco


def build_generator(name: str, **kwargs) -> nn.Module:
    """Build a generator network: (B, C, N, N) amplitudes -> (B, C, N, N) complex64 patches."""
    import ptychopinn.models.cnn  # noqa: F401  (registers the built-in generators)

    try:
        factory = GENERATORS[name]
    except KeyError:
        raise ConfigError(
            f"generator: unknown name {name!r}; expected one of {sorted(GENERATORS)}"
        ) from None
    return factory(**kwargs)


def generator_names() -> list[str]:
    import ptychopinn.models.cnn  # noqa: F401

    return sorted(GENERATORS)
