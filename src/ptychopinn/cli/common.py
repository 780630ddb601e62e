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
        "devices are for 'train' and 'infer', through DDP) (default 1)",
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
            "devices are for 'train' and 'infer', through DDP)"
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


def devices_of(accelerator: str, devices) -> tuple[str, int]:
    """(torch device, process count) for ``infer``: several devices run its network pass in as
    many processes (Lightning DDP); ``auto`` is one. ConfigError when unusable."""
    import torch

    from ptychopinn.errors import ConfigError

    text = str(devices).strip()
    count = 1 if text == "auto" else int(text)
    device = device_of(accelerator, 1)
    if count > 1 and device == "mps":
        raise ConfigError(f"--devices {count}: Apple MPS runs one process; use --devices 1")
    if device == "cuda" and count > torch.cuda.device_count():
        raise ConfigError(
            f"--devices {count}: only {torch.cuda.device_count()} CUDA device(s) on this machine"
        )
    return device, count


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


# --- the probe or positions of another file (simulate --probe-from, infer/reconstruct) --------
def _is_reconstruction(path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = {n.removesuffix(".npy") for n in zf.namelist()}
    except (zipfile.BadZipFile, OSError):
        return False
    return "object" in names and "diff3d" not in names and "data" not in names


def _of_file(path, key: str, missing: str):
    """The ``key`` attribute (probe, positions_px) of the reconstruction.npz or scan file at
    ``path``; DataError ``missing`` when a reconstruction has none."""
    if _is_reconstruction(path):
        from ptychopinn.evaluation.io import load_reconstruction_file

        value = getattr(load_reconstruction_file(path), key)
        if value is None:
            from ptychopinn.errors import DataError

            raise DataError(str(path), key, missing)
        return value
    from ptychopinn.data import load_scan

    return getattr(load_scan(path), key)


def probe_from_file(path, n: int, size_flag: str):
    """The probe (K, N, N) of ``path``: a reconstruction.npz written by infer/reconstruct (e.g.
    the probe retrieved from a measured scan) or any scan file. DataError when it has none or its
    size is not ``n`` (``size_flag`` names what set ``n``)."""
    from ptychopinn.errors import DataError

    probe = _of_file(
        path,
        "probe",
        "missing or unusable; a reconstruction written by infer/reconstruct holds one",
    )
    if probe.shape[-1] != n:
        raise DataError(
            str(path),
            "probe",
            f"is {probe.shape[-2]} x {probe.shape[-1]} but {size_flag} is {n}"
            + (f"; pass {size_flag} {probe.shape[-1]}" if size_flag.startswith("--") else ""),
        )
    return probe


def positions_from_file(path):
    """The scan positions (M, 2) of ``path``: a reconstruction.npz (corrected or not) or any scan
    file."""
    return _of_file(
        path,
        "positions_px",
        "missing; a reconstruction written by infer/reconstruct holds its positions",
    )


def add_probe_from_flag(parser: argparse.ArgumentParser) -> None:
    """``--probe-from F`` for the commands that reconstruct a scan."""
    from pathlib import Path

    parser.add_argument(
        "--probe-from",
        type=Path,
        default=None,
        metavar="F",
        help="use the probe of F instead of the scan's own: a reconstruction.npz (e.g. "
        "the probe retrieved from another scan of the experiment, the one training data "
        "were simulated with) or any scan file; its size must equal the patterns'",
    )


def with_probe_from(scan, path):
    """``scan`` with the probe of ``path`` (``--probe-from``; None: unchanged), recorded in its
    metadata as ``probe_from``; it counts as a guess (``probe_known`` false), so ``--refine-probe
    auto`` refines it."""
    if path is None:
        return scan
    from dataclasses import replace

    probe = probe_from_file(path, scan.patch_size, f"{scan.source}'s pattern size")
    return replace(
        scan, probe=probe, metadata={**scan.metadata, "probe_from": str(path), "probe_known": False}
    )
