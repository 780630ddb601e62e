"""Data: ScanData, NPZ (and Ptychodus HDF5) readers/writers, grouping, simulation."""

from ptychopinn.data.grouping import PatchGroups, group_positions
from ptychopinn.data.npz import read_npz, write_npz
from ptychopinn.data.scan import ScanData

__all__ = ["PatchGroups", "group_positions", "read_npz", "write_npz", "ScanData", "load_scan"]


def load_scan(path, diffraction_units: str = "auto") -> ScanData:
    """Load a scan file by extension (.npz)."""
    return read_npz(path, diffraction_units=diffraction_units)
