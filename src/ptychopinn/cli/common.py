"""Shared CLI helpers."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a finite number > 0")
    return value


def add_units_flag(parser: argparse.ArgumentParser) -> None:
    """``--diffraction-units`` and ``--data-format`` (how to read the input scan files)."""
    from ptychopinn.data.readers import READERS, formats

    parser.add_argument("--diffraction-units", choices=["auto", "counts", "amplitude"], default="auto",
                        help="units of the diffraction arrays in NPZ inputs; auto honours the file's "
                             "'diffraction_units' entry, else detects (default: auto)")
    parser.add_argument("--data-format", choices=list(formats()), default="auto",
                        help="format of a single-file scan: " + "; ".join(
                            f"{r.name} = {r.description}" for r in READERS.values())
                        + "; auto detects it from the file's contents (default: auto)")


def add_refine_probe_flag(parser: argparse.ArgumentParser, extra: str = "") -> None:
    from ptychopinn.config import PROBE_REFINEMENT

    parser.add_argument("--refine-probe", choices=list(PROBE_REFINEMENT), default="auto",
                        help="retrieve the probe jointly during refinement: auto = unless the "
                             "scan's probe is known to be the true one (scans made by ptychopinn "
                             f"simulate, or metadata probe_known){extra} (default auto)")


def add_patterns_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patterns", choices=["all", "even", "odd"], default="all",
                        help="reconstruct all patterns, or only the even (0, 2, 4, ...) or odd ones: "
                             "two independent halves for 'evaluate --reference' (half-scan FRC); "
                             "recorded in the reconstruction's metadata (default all)")


def add_quiet_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true",
                        help="only warnings and errors; no progress bars")


def _scan_flag_names(name: str) -> tuple[str, str, str]:
    """(npz, product, diffraction) option names: 'data' -> --data/--product/--diffraction,
    'test-data' -> --test-data/--test-product/--test-diffraction."""
    prefix = name[: -len("data")] if name.endswith("data") else f"{name}-"
    return name, f"{prefix}product", f"{prefix}diffraction"


def add_scan_input_flags(parser: argparse.ArgumentParser, name: str = "data", what: str = "scan") -> None:
    """Add ``--NAME F`` (PtychoPINN NPZ) and the alternative ``--product P --diffraction D``
    (Ptychodus files); for ``name='test-data'`` the pair is ``--test-product/--test-diffraction``.
    Read them back with :func:`load_scan_from_args` (same ``name``)."""
    from pathlib import Path

    npz, product, diffraction = _scan_flag_names(name)
    parser.add_argument(f"--{npz}", type=Path, metavar="F", default=None,
                        help=f"{what} as one file: PtychoPINN NPZ, tike NPZ or CXI (see --data-format where offered)")
    parser.add_argument(f"--{product}", type=Path, metavar="P", default=None,
                        help=f"{what} as Ptychodus files: product.h5 (positions, probe, object grid); "
                             f"use with --{diffraction}, instead of --{npz}")
    parser.add_argument(f"--{diffraction}", type=Path, metavar="D", default=None,
                        help=f"Ptychodus diffraction.h5 (patterns, indexes, bad pixels) paired with --{product}")


def scan_input_given(args: argparse.Namespace, name: str = "data") -> bool:
    """Whether any of the scan input flags added by :func:`add_scan_input_flags` was given."""
    return any(getattr(args, n.replace("-", "_"), None) is not None for n in _scan_flag_names(name))


def load_scan_from_args(args: argparse.Namespace, name: str = "data"):
    """The ScanData named by the flags of :func:`add_scan_input_flags`.

    Raises a one-line PtychoPINNError when neither form, both forms, or half of the pair is given.
    ``--diffraction-units`` is honoured when the parser has it.
    """
    from ptychopinn.data import load_scan
    from ptychopinn.errors import PtychoPINNError

    npz, product, diffraction = _scan_flag_names(name)
    path, prod, diff = (getattr(args, n.replace("-", "_"), None) for n in (npz, product, diffraction))
    if path is not None and (prod is not None or diff is not None):
        raise PtychoPINNError(f"give either --{npz} (NPZ) or --{product} with --{diffraction} "
                              "(Ptychodus files), not both")
    if path is None and prod is None and diff is None:
        raise PtychoPINNError(f"no input scan: give --{npz} F (NPZ) or --{product} P --{diffraction} D "
                              "(Ptychodus files)")
    if path is None and (prod is None or diff is None):
        given, missing = (product, diffraction) if diff is None else (diffraction, product)
        raise PtychoPINNError(f"--{given} needs --{missing} (Ptychodus scans are a product + diffraction pair)")
    units = getattr(args, "diffraction_units", "auto")
    return load_scan(path, units, product=prod, diffraction=diff,
                     format=getattr(args, "data_format", "auto"))
