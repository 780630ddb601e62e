"""The one protocol every reconstruction engine follows, and the engine registry.

An engine takes a scan (and optionally a start: an earlier engine's ``Reconstruction``) and
returns a ``Reconstruction`` on one canvas: object, probe, positions and, in
``metadata["history"]``, one entry per step it ran (an epoch of refinement, a batch of the
network pass). Two optional hooks let a host (the CLI, Ptychodus) follow and stop it:

- ``progress(step, total, info)``: called after each step (``step`` counts from 1; ``total`` is
  the most steps the engine will run; ``info`` a dict such as ``{"loss": 0.12}``);
- ``stop()``: polled between steps; when it returns True the engine returns what it has.

Engines: ``network`` (a trained bundle's single pass), ``estimate`` (the physics estimate the
network takes as input, stitched: no learning) and ``gradient`` (refinement on the scan's own
likelihood, with probe retrieval and position correction). A new engine is a class with
``name`` and ``run`` added to ``ENGINES`` (``@ENGINES.register("name")``); its contract test in
``tests/test_registries.py`` runs it on a tiny scan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

from ptychopinn.registry import Registry

if TYPE_CHECKING:
    from ptychopinn.data.scan import ScanData
    from ptychopinn.reconstruction.result import Reconstruction

#: ``progress(step, total, info)`` after each step of an engine.
Progress = Callable[[int, int, dict], Any]
#: ``stop()`` polled between steps: True ends the run early with what it has.
StopRequest = Callable[[], bool]


class Engine(Protocol):
    """Scan (+ optional start) in; ``Reconstruction`` (object, probe, positions, history) out."""

    name: str

    def run(
        self,
        scan: ScanData,
        start: Reconstruction | None = None,
        *,
        progress: Progress | None = None,
        stop: StopRequest | None = None,
    ) -> Reconstruction: ...


#: name -> engine class (constructed with the engine's own settings, then ``run``); the built-ins
#: register in ``ptychopinn.reconstruction.engines``, imported on first lookup
ENGINES = Registry("engine", builtins="ptychopinn.reconstruction.engines")
