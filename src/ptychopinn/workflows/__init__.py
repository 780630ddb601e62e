"""Workflows: the steps the CLI subcommands (and the Python API) chain over the engines.

``outputs`` (reconstruction files), ``reconstruct`` (refinement of a start, self-supervised
reconstruction, evaluation against ground truth), ``demo`` (the embedded end-to-end run).
"""

from ptychopinn.data.scan import probe_is_known, resolve_probe_refinement
from ptychopinn.reconstruction.gradient import probe_change
from ptychopinn.workflows.demo import DemoResult, DemoSettings, run_demo, simulate_train_test
from ptychopinn.workflows.outputs import RECONSTRUCTION_FILES, write_reconstruction_outputs
from ptychopinn.workflows.reconstruct import (
    evaluate_against_truth,
    network_reconstruction,
    refine_reconstruction,
    self_supervised_reconstruction,
)

__all__ = [
    "DemoResult",
    "DemoSettings",
    "RECONSTRUCTION_FILES",
    "evaluate_against_truth",
    "network_reconstruction",
    "probe_change",
    "probe_is_known",
    "refine_reconstruction",
    "resolve_probe_refinement",
    "run_demo",
    "self_supervised_reconstruction",
    "simulate_train_test",
    "write_reconstruction_outputs",
]
