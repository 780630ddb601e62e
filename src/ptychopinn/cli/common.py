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

    parser.add_argument(
        "--diffraction-units",
        choices=["auto", "counts", "amplitude"],
        default="auto",
        help="units of the diffraction arrays in NPZ inputs; auto honours the file's "
        "'diffraction_units' entry, else detects (default: auto)",
    )
    parser.add_argument(
        "--data-format",
        choices=list(formats()),
        default="auto",
        help="format of a single-file scan: "
        + "; ".join(f"{r.name} = {r.description}" for r in READERS.values())
        + "; auto detects it from the file's contents (default: auto)",
    )


def add_patterns_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--patterns",
        choices=["all", "even", "odd"],
        default="all",
        help="reconstruct all patterns, or only the even (0, 2, 4, ...) or odd ones: "
        "two independent halves for 'evaluate --reference' (half-scan FRC); "
        "recorded in the reconstruction's metadata (default all)",
    )


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    """``--accelerator`` and ``--devices`` (Lightning's names) for single-process commands."""
    parser.add_argument(
        "--accelerator",
        choices=["auto", "cpu", "gpu", "cuda", "mps"],
        default="auto",
        help="where the network pass and refinement run: auto = a CUDA GPU when "
        "one is available (else Apple MPS, else the CPU); gpu = cuda "
        "(default auto)",
    )
    parser.add_argument(
        "--devices",
        default="1",
        metavar="N",
        help="devices to use: this command runs on one ('1' or 'auto'; several "
        "devices are for 'train' through DDP) (default 1)",
    )


def torch_device(args: argparse.Namespace) -> str:
    """The torch device named by ``--accelerator``/``--devices`` (ConfigError when unusable)."""
    return device_of(getattr(args, "accelerator", "auto"), getattr(args, "devices", "1"))


def device_of(accelerator: str, devices) -> str:
    """The torch device of Lightning's accelerator name and a device count of 1 (or 'auto'), for
    the single-process commands (ConfigError naming ``--accelerator``/``--devices``)."""
    import torch

    from ptychopinn.errors import ConfigError

    devices = str(devices).strip()
    if devices not in ("1", "auto"):
        raise ConfigError(
            f"--devices {devices}: this command runs on one device; use 1 (several "
            "devices are for 'train', through DDP)"
        )
    choice = accelerator
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if choice == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if choice in ("gpu", "cuda"):
        if not cuda:
            raise ConfigError(
                f"--accelerator {choice}: no CUDA device is available on this machine "
                "(use --accelerator cpu or auto)"
            )
        return "cuda"
    if choice == "mps":
        if not mps:
            raise ConfigError("--accelerator mps: Apple MPS is not available on this machine")
        return "mps"
    return "cpu"


#: the execution keys of the single-process commands (infer, reconstruct): where they run, the
#: seed and the log level; the rest of the execution section is training's
RUN_KEYS = ("execution.seed", "execution.quiet", "execution.accelerator", "execution.devices")
#: their defaults that differ from training's: one device
RUN_DEFAULTS = {"execution.devices": 1}


def check_run_audit(output_dir, overwrite: bool) -> None:
    """Refuse an existing ``OUTPUT_DIR/config.resolved.yaml`` without ``--overwrite`` (call it
    before any work, like the other outputs' checks)."""
    from ptychopinn.config_factory import AUDIT_NAME
    from ptychopinn.io.atomic import check_new_output

    check_new_output(output_dir / AUDIT_NAME, overwrite)


def write_run_audit(rc, output_dir, command: str, device: str):
    """``OUTPUT_DIR/config.resolved.yaml`` of a reconstruction run: every value and its source
    (reusable as ``--config``), and the device it ran on."""
    from ptychopinn.config_factory import write_audit

    return write_audit(rc, output_dir, {"device": device}, command=command)


def add_quiet_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet", action="store_true", help="only warnings and errors; no progress bars"
    )


def _scan_flag_names(name: str) -> tuple[str, str, str]:
    """(npz, product, diffraction) option names: 'data' -> --data/--product/--diffraction,
    'test-data' -> --test-data/--test-product/--test-diffraction."""
    prefix = name[: -len("data")] if name.endswith("data") else f"{name}-"
    return name, f"{prefix}product", f"{prefix}diffraction"


def add_scan_input_flags(
    parser: argparse.ArgumentParser, name: str = "data", what: str = "scan"
) -> None:
    """Add ``--NAME F`` (PtychoPINN NPZ) and the alternative ``--product P --diffraction D``
    (Ptychodus files); for ``name='test-data'`` the pair is ``--test-product/--test-diffraction``.
    Read them back with :func:`load_scan_from_args` (same ``name``)."""
    from pathlib import Path

    npz, product, diffraction = _scan_flag_names(name)
    parser.add_argument(
        f"--{npz}",
        type=Path,
        metavar="F",
        default=None,
        help=f"{what} as one file: PtychoPINN NPZ, tike NPZ or CXI "
        "(see --data-format where offered)",
    )
    parser.add_argument(
        f"--{product}",
        type=Path,
        metavar="P",
        default=None,
        help=f"{what} as Ptychodus files: product.h5 (positions, probe, object grid); "
        f"use with --{diffraction}, instead of --{npz}",
    )
    parser.add_argument(
        f"--{diffraction}",
        type=Path,
        metavar="D",
        default=None,
        help=f"Ptychodus diffraction.h5 (patterns, indexes, bad pixels) paired with --{product}",
    )


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
    path, prod, diff = (
        getattr(args, n.replace("-", "_"), None) for n in (npz, product, diffraction)
    )
    if path is not None and (prod is not None or diff is not None):
        raise PtychoPINNError(
            f"give either --{npz} (NPZ) or --{product} with --{diffraction} "
            "(Ptychodus files), not both"
        )
    if path is None and prod is None and diff is None:
        raise PtychoPINNError(
            f"no input scan: give --{npz} F (NPZ) or --{product} P --{diffraction} D "
            "(Ptychodus files)"
        )
    if path is None and (prod is None or diff is None):
        given, missing = (product, diffraction) if diff is None else (diffraction, product)
        raise PtychoPINNError(
            f"--{given} needs --{missing} (Ptychodus scans are a product + diffraction pair)"
        )
    units = getattr(args, "diffraction_units", "auto")
    return load_scan(
        path, units, product=prod, diffraction=diff, format=getattr(args, "data_format", "auto")
    )
