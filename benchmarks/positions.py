"""Position correction on scans with known position errors, simulated independently of
ptychopinn (``benchmarks/scenarios.py``), against the same reconstruction with exact positions.

    python benchmarks/positions.py --output benchmarks/results/positions.json
        [--errors 1 3 5 7 10] [--kinds random drift affine] [--positions 500] [--search-px 0]
        [--modes global grow]

The scan (scenario ``zoneplate-textured``: N = 64, Fermat spiral with 5 px steps, zone-plate probe,
textured object, 1e6 photons) is reconstructed from a flat start with the probe that made the
data (kept fixed) and the ``reconstruct`` epoch budget (``REFINE_ONLY_EPOCHS``, fewer once
converged), from positions with errors of a given 2-D rms (sqrt(mean |error|^2), in object
pixels) and kind:

- ``random``: independent Gaussian errors per pattern;
- ``drift``: a smooth random walk along the scan order (stage drift), scaled to the rms;
- ``affine``: a 4% scale, 2 degree rotation and shear of the positions about their centre plus
  random errors of a quarter of the rms, scaled to the rms.

Methods: exact positions; the erroneous positions uncorrected; ``--correct-positions`` (gradient);
and ``--correct-positions --position-search-px R`` (R defaults to twice the error rms, at least
4): the position-finding phase (searches, lost patterns searched again, the object restarted)
and then the same epoch budget, and again with ``--short-epochs`` epochs after the phase, once
per ``--modes`` (``--position-search-mode``: global, or grow from the scan's centre). With
``--ptychi-python`` pty-chi LSQML runs on the same scans with the same fixed probe and its own
position correction (gradient type, from epoch 5, update limit ``--ptychi-position-limit-px``
per update instead of its 0.1 default, which cannot move positions by pixels):
``--ptychi-epochs`` epochs, and for the time ptychopinn's (first mode's) search run took
(equal time; pty-chi's time is its ``task.run`` alone). Reported: the rms error of the positions
after removing a global shift (which object and positions share), phase SSIM against the truth
(``ptychopinn.evaluation``), and the wall time on this machine's CPU threads.

With ``--network`` the network path runs on the same scans: a model trained (through the CLI,
in ``--work``) on ``simulate --probe-from --positions-from`` this scan (``--train-scans`` scans
of natural-image objects with its probe, its positions and its dose; ``--model DIR`` reuses a
bundle), its single pass over each scan with the erroneous positions, then ``--network-epochs``
of refinement from it with ``--correct-positions``: jointly (object, positions from epoch
``POSITION_START_EPOCH``), and positions first (``position_start_epoch=0``, the object held for
``--object-start-epoch`` epochs). Their time includes the network's pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios  # noqa: E402
from ptychopinn.cli.reconstruct import REFINE_ONLY_EPOCHS  # noqa: E402
from ptychopinn.data.scan import ScanData  # noqa: E402
from ptychopinn.evaluation import evaluate_reconstruction  # noqa: E402
from ptychopinn.reconstruction.gradient import refine  # noqa: E402


def position_errors(kind: str, xy: np.ndarray, rms: float, seed: int) -> np.ndarray:
    """(M, 2) errors of 2-D rms ``rms`` (module doc)."""
    rng = np.random.default_rng(seed)
    m = len(xy)
    if kind == "random":
        err = rng.normal(size=(m, 2))
    elif kind == "drift":
        err = np.cumsum(rng.normal(size=(m, 2)), axis=0)
        err -= err.mean(0)
    elif kind == "affine":
        c = xy - xy.mean(0)
        a, rot = 0.04, np.deg2rad(2.0)
        matrix = (1 + a) * np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
        matrix = matrix @ np.array([[1.0, 0.02], [0.0, 1.0]])
        err = c @ matrix.T - c
        err /= np.sqrt((err**2).sum(1).mean())
        err += 0.25 * rng.normal(size=(m, 2)) / np.sqrt(2)
    else:
        raise SystemExit(f"unknown error kind {kind!r}")
    return err * rms / np.sqrt((err**2).sum(1).mean())


def rms_after_shift(pos: np.ndarray, truth: np.ndarray) -> float:
    d = pos - truth
    d = d - d.mean(0)
    return float(np.sqrt((d**2).sum(1).mean()))


def run_one(scan, truth_xy, obj, method, label, epochs=REFINE_ONLY_EPOCHS, **kwargs) -> dict:
    t0 = time.perf_counter()
    res = refine(scan, epochs=epochs, quiet=True, **kwargs)
    seconds = time.perf_counter() - t0
    return score(res, scan, truth_xy, obj, label, method, seconds, len(res.losses))


def network_rows(bundle, scan, truth_xy, obj, label, epochs, hold, refined=True) -> list[dict]:
    """The network's single pass over ``scan`` (positions as given), then (``refined``)
    refinement from it with position correction: joint, and positions first with the object
    held ``hold`` epochs."""
    from ptychopinn.reconstruction.network import reconstruct

    t0 = time.perf_counter()
    net = reconstruct(bundle, scan)
    pass_s = time.perf_counter() - t0
    rows = [score(net, scan, truth_xy, obj, label, "network, one pass", pass_s, 0)]
    if not refined:
        return rows
    start = dict(initial_object=net.object, offset_px=net.offset_px, correct_positions=True)
    for method, extra in (
        (f"network + {epochs} epochs, joint", {}),
        (
            f"network + {epochs} epochs, positions first (object held {hold})",
            dict(position_start_epoch=0, object_start_epoch=hold),
        ),
    ):
        t0 = time.perf_counter()
        res = refine(scan, epochs=epochs, quiet=True, **start, **extra)
        seconds = pass_s + time.perf_counter() - t0
        rows.append(score(res, scan, truth_xy, obj, label, method, seconds, len(res.losses)))
    return rows


def score(res, scan, truth_xy, obj, label, method, seconds, epochs) -> dict:
    m = evaluate_reconstruction(
        res.object, obj, offset_px=res.offset_px, illumination=res.illumination
    )
    pos = res.positions_px if res.positions_px is not None else scan.positions_px
    row = {
        **label,
        "method": method,
        "epochs_run": epochs,
        "seconds": round(seconds, 1),
        "position_rms_px": round(rms_after_shift(pos, truth_xy), 3),
        "phase_ssim": round(m["phase_ssim"], 4),
        "phase_psnr": round(m["phase_psnr"], 2),
    }
    print(json.dumps(row), flush=True)
    return row


def ptychi_rows(python, scan, truth_xy, obj, label, epochs, threads, equal_s, margin, limit):
    from ptychi_side import run_ptychi
    from ptychopinn.physics.shifts import canvas_geometry

    canvas = canvas_geometry(
        scan.positions_px, scan.patch_size, object_shape=obj.shape, margin=int(margin)
    )
    extra = ("--correct-positions", "--position-start", "5", "--position-limit-px", str(limit))
    rows = []
    for name, n_epochs, time_limit in (("", epochs, None), (" (equal time)", 100_000, equal_s)):
        res = run_ptychi(
            python, scan, "lsqml", n_epochs, 0, threads, time_limit, canvas, False, extra
        )
        m = evaluate_reconstruction(
            res.object, obj, offset_px=res.offset_px, illumination=res.illumination
        )
        row = {
            **label,
            "method": f"pty-chi LSQML position correction{name}",
            "epochs_run": res.epochs,
            "seconds": round(res.seconds, 1),
            "position_rms_px": round(rms_after_shift(res.positions_px, truth_xy), 3),
            "phase_ssim": round(m["phase_ssim"], 4),
            "phase_psnr": round(m["phase_psnr"], 2),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--errors", type=float, nargs="+", default=[1, 3, 5, 7, 10])
    ap.add_argument("--kinds", nargs="+", default=["random"], choices=["random", "drift", "affine"])
    ap.add_argument("--positions", type=int, default=500)
    ap.add_argument("--search-px", type=float, default=0, help="0: twice the error rms, >= 4")
    ap.add_argument(
        "--short-epochs", type=int, default=150, help="epochs after the search phase (0: skip)"
    )
    ap.add_argument(
        "--modes",
        nargs="+",
        default=["global"],
        choices=["global", "grow"],
        help="position_search_mode of the search runs (each mode is one row)",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--ptychi-python", default=None, help="python of an environment with ptychi")
    ap.add_argument("--ptychi-epochs", type=int, default=100)
    ap.add_argument("--ptychi-position-limit-px", type=float, default=1.0)
    ap.add_argument("--network", action="store_true", help="also the network path (module doc)")
    ap.add_argument("--model", type=Path, default=None, help="a trained bundle to use")
    ap.add_argument("--work", type=Path, default=Path("positions-network-run"))
    ap.add_argument("--train-scans", type=int, default=4)
    ap.add_argument("--max-epochs", type=int, default=8, help="training epochs")
    ap.add_argument("--network-epochs", type=int, default=100, help="refinement after the pass")
    ap.add_argument("--object-start-epoch", type=int, default=10)
    ap.add_argument(
        "--skip-iterative",
        action="store_true",
        help="only the network rows (and the exact-position run)",
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    s = replace(scenarios.SCENARIOS["zoneplate-textured"], positions=a.positions)
    counts, xy, probe, obj = scenarios.simulate(s)

    def scan_at(pos):
        return ScanData(
            diffraction=counts.astype(np.float32),
            positions_px=pos,
            probe=probe.astype(np.complex64),
            object_truth=obj,
            source=f"scenarios.py {s.name}",
        )

    rows = [run_one(scan_at(xy), xy, obj, "exact positions", {"kind": "none", "error_px": 0})]
    bundle, network_note = None, None
    if a.network or a.model:
        from ptychopinn.data.npz import write_npz
        from ptychopinn.io.bundle import load_bundle

        model = a.model
        if model is None:
            a.work.mkdir(parents=True, exist_ok=True)
            from probe_workflow import train_for_experiment

            exact = write_npz(scan_at(xy), a.work / "scan_exact.npz")
            model = train_for_experiment(
                exact,
                a.work,
                s.n,
                s.photons,
                a.train_scans,
                a.max_epochs,
                a.seed,
                threads=a.threads,
            )
        bundle = load_bundle(model)
        network_note = (
            f"model {model}"
            if a.model
            else f"trained here: {a.train_scans} natural-image scans simulated with the scan's "
            f"probe, positions and dose (simulate --probe-from --positions-from), "
            f"{a.max_epochs} epochs, seed {a.seed}"
        )
        label = {"kind": "none", "error_px": 0}
        rows += network_rows(
            bundle, scan_at(xy), xy, obj, label, a.network_epochs, a.object_start_epoch, False
        )
    for kind in a.kinds:
        for rms in a.errors:
            err = position_errors(kind, xy, rms, a.seed)
            label = {"kind": kind, "error_px": rms}
            scan = scan_at(xy + err)
            radius = a.search_px or max(4.0, 2 * rms)
            if bundle is not None:
                rows += network_rows(
                    bundle, scan, xy, obj, label, a.network_epochs, a.object_start_epoch
                )
            if a.skip_iterative:
                continue
            rows.append(run_one(scan, xy, obj, "uncorrected", label))
            rows.append(run_one(scan, xy, obj, "gradient", label, correct_positions=True))
            search_row = None
            for mode in a.modes:
                search = dict(
                    correct_positions=True, position_search_px=radius, position_search_mode=mode
                )
                name = f"{'' if mode == 'global' else mode + ' '}search {radius:g} px + gradient"
                rows.append(run_one(scan, xy, obj, name, label, **search))
                search_row = search_row or rows[-1]
                if a.short_epochs:
                    method = f"{name}, {a.short_epochs} epochs after"
                    rows.append(run_one(scan, xy, obj, method, label, a.short_epochs, **search))
            if a.ptychi_python:
                rows += ptychi_rows(
                    a.ptychi_python,
                    scan,
                    xy,
                    obj,
                    label,
                    a.ptychi_epochs,
                    a.threads,
                    search_row["seconds"],
                    radius,
                    a.ptychi_position_limit_px,
                )
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(
        json.dumps(
            {
                "benchmark": "benchmarks/positions.py",
                "data": f"benchmarks/scenarios.py {s.name}, {a.positions} patterns, N = {s.n}",
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": f"{platform.processor() or platform.machine()}, {a.threads} threads",
                **({"network": network_note} if network_note else {}),
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
