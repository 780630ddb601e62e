"""Shared fixtures: seeded tiny simulated scans."""

import contextlib
import logging

import numpy as np
import pytest
import torch

from ptychopinn.data.simulate import SimulationConfig, simulate_scan

# Tiny tensors: one thread avoids oversubscription on small, shared machines (measured 10-100x
# slower epochs with 2 threads under load) and costs nothing on this data size.
torch.set_num_threads(1)


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def torch_threads():
    """``with torch_threads(n):`` runs a block with n intra-op threads and restores the count."""
    return _threads


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def tiny_config():
    return SimulationConfig(
        patch_size=32,
        n_positions=49,
        object_kind="lines",
        probe_kind="pinhole",
        photons=1e5,
        seed=1,
    )


@pytest.fixture(scope="session")
def tiny_scan(tiny_config):
    return simulate_scan(tiny_config)


@pytest.fixture(scope="session")
def tiny_scan_file(tmp_path_factory, tiny_scan):
    from ptychopinn.data.npz import write_npz

    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    write_npz(tiny_scan, path)
    return path


@pytest.fixture
def log_records():
    """Records from the 'ptychopinn' logger, whatever the CLI tests did to its propagation."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("ptychopinn")
    handler, level = Keep(level=logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)
