"""``ptychopinn ptychodus -- ARGS``: the stock Ptychodus application with PtychoPINN added.

Ptychodus has no plugin discovery for reconstructors, so this runs ``ptychodus``'s own entry
point (GUI, or batch mode ``-b reconstruct|train -i IN -o OUT``) with ModelCore's
ProcessingCore wrapped to add the ``PtychoPINNLightning`` library
(``ptychopinn.integrations.ptychodus``). Select it with ``[Processing] Algorithm =
ptychopinnlightning_pinn`` (or ``_supervised``) in ``IN/settings.ini``.

After a batch reconstruction, the last per-step product (``OUT/product.NNNNNN.h5``, which is
all Ptychodus 1.7 writes) is also copied to ``OUT/product.h5``.
"""

from __future__ import annotations

import argparse

EXTRA_HINT = "pip install 'ptychopinn[ptychodus]'"
GUI_HINT = "pip install 'ptychodus[gui]>=1.7,<1.8'"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ptychodus",
        help="run Ptychodus (GUI or batch mode) with the PtychoPINN reconstructors",
        description="Runs the Ptychodus application with the PtychoPINNLightning reconstructor "
        "library (PINN, Supervised) added. Everything after '--' goes to Ptychodus, "
        "e.g. 'ptychopinn ptychodus -- -b reconstruct -i IN -o OUT' (IN holds "
        "diffraction.h5, product.h5, settings.ini with [Processing] Algorithm = "
        "ptychopinnlightning_pinn, optionally model.ptpinn). Needs the "
        f"ptychodus extra: {EXTRA_HINT}.",
    )
    p.add_argument(
        "ptychodus_args",
        nargs=argparse.REMAINDER,
        metavar="-- ARGS",
        help="arguments for Ptychodus (see 'ptychopinn ptychodus -- --help')",
    )
    p.set_defaults(run=run)


def _ptychodus_args(args: argparse.Namespace) -> list[str]:
    rest = list(args.ptychodus_args or [])
    return rest[1:] if rest[:1] == ["--"] else rest


def _wants_gui(argv: list[str]) -> bool:
    """Without -b (and without a -h/-v that exits first), Ptychodus starts its Qt GUI."""
    flags = {a.split("=", 1)[0] for a in argv}
    return not flags & {"-b", "--batch", "-h", "--help", "-v", "--version"} and not any(
        a.startswith("-b") and len(a) > 2 for a in argv
    )


def _batch_output_dir(argv: list[str]):
    """The ``-o/--output-directory`` of a ``-b reconstruct`` run, else None."""
    from pathlib import Path

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-b", "--batch")
    parser.add_argument("-o", "--output-directory")
    known, _ = parser.parse_known_args(argv)
    if known.batch == "reconstruct" and known.output_directory:
        return Path(known.output_directory)
    return None


def run(args: argparse.Namespace) -> int:
    import importlib.util
    import sys
    import time

    from ptychopinn.errors import PtychoPINNError

    if importlib.util.find_spec("ptychodus") is None:
        raise PtychoPINNError(f"Ptychodus is not installed; install the extra: {EXTRA_HINT}")
    argv = _ptychodus_args(args)
    if _wants_gui(argv) and importlib.util.find_spec("PyQt5") is None:
        raise PtychoPINNError(
            "the Ptychodus GUI needs PyQt5, which is not installed: "
            f"{GUI_HINT} (or use batch mode: -b reconstruct|train -i IN -o OUT)"
        )
    try:
        import ptychodus.__main__ as ptychodus_main
        import ptychodus.model.core as core
    except ModuleNotFoundError as exc:
        raise PtychoPINNError(
            f"the Ptychodus application needs '{exc.name}', which is not installed "
            f"(an API-only install?); install the full application: {EXTRA_HINT}"
        ) from None
    from ptychopinn.integrations.ptychodus import finalize_batch_output, patch_ptychodus

    saved_argv = sys.argv
    sys.argv = ["ptychodus", *argv]  # Ptychodus parses sys.argv itself
    started = time.time()
    try:
        with patch_ptychodus(core):
            code = ptychodus_main.main()
    finally:
        sys.argv = saved_argv
    code = int(code or 0)
    out = _batch_output_dir(argv)
    if code == 0 and out is not None:
        finalize_batch_output(out, started)
    return code
