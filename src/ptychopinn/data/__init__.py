"""Data: ScanData, readers (PtychoPINN NPZ, tike NPZ, CXI, Ptychodus HDF5), writers, grouping,
simulation."""

from ptychopinn.data.grouping import PatchGroups, group_positions
from ptychopinn.data.npz import read_npz, write_npz
from ptychopinn.data.scan import ScanData

__all__ = ["PatchGroups", "group_positions", "read_npz", "write_npz", "ScanData", "load_scan"]


def load_scan(
    path=None,
    diffraction_units: str = "auto",
    *,
    product=None,
    diffraction=None,
    format: str = "auto",
) -> ScanData:
    """Load a scan: one file ``path`` (PtychoPINN NPZ, tike NPZ, CXI; ``format`` 'auto' detects
    it from the file's bytes, see ``ptychopinn.data.readers``), or a Ptychodus ``product`` +
    ``diffraction`` pair.

    Give exactly one of the two forms. ``diffraction_units`` applies to both (see ``read_npz`` and
    ``ptychodus_h5.read_ptychodus``; Ptychodus files hold counts).
    """
    from ptychopinn.errors import PtychoPINNError

    pair = product is not None or diffraction is not None
    if path is not None and pair:
        raise PtychoPINNError(
            "give either an NPZ scan file or a Ptychodus product + diffraction pair, not both"
        )
    if pair:
        if product is None or diffraction is None:
            missing = "product" if product is None else "diffraction"
            raise PtychoPINNError(
                f"a Ptychodus scan needs both product and diffraction files; {missing} is missing"
            )
        from ptychopinn.data.ptychodus_h5 import read_ptychodus  # h5py only when needed

        return read_ptychodus(product, diffraction, diffraction_units=diffraction_units)
    if path is None:
        raise PtychoPINNError(
            "no scan given: need an NPZ file or a Ptychodus product + diffraction pair"
        )
    from ptychopinn.data.readers import read_scan

    return read_scan(path, diffraction_units=diffraction_units, format=format)
