"""Flat-start iterative reconstruction (``ptychopinn reconstruct --refine-only`` defaults) on
scans simulated independently of ptychopinn (``benchmarks/scenarios.py``), measured against
their ground truth with ``ptychopinn.evaluation`` and with a global complex scale only.

    python benchmarks/scenario_suite.py --output benchmarks/results/scenarios.json [--only NAME ...]
        [--ptychi-python /path/to/ptychi-venv/bin/python]

Each scenario runs twice: with the probe that made the data (``probeTrue``, kept fixed), and the
CLI default for such a file (``--refine-probe auto``: these files carry no ``probe_known``
entry, so the probe is retrieved jointly from the file's mis-modelled ``probeGuess``; the
distance of the retrieved probe to the true one, after a global complex scale, is reported).
Timing is the refinement alone on this machine's CPU threads. With
``--ptychi-python`` pty-chi LSQML and ePIE run on the same scan in the same run, with the probe
retrieved from the same guess: ``--ptychi-epochs`` (converged) and, for LSQML, also for the wall
time ptychopinn took (equal time); pty-chi's time is its ``task.run`` alone (start-up excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios  # noqa: E402
from ptychopinn.cli.reconstruct import REFINE_ONLY_EPOCHS  # noqa: E402
from ptychopinn.data import load_scan  # noqa: E402
from ptychopinn.evaluation import evaluate_reconstruction  # noqa: E402
from ptychopinn.evaluation.metrics import ssim  # noqa: E402
from ptychopinn.reconstruction.gradient import refine  # noqa: E402
from ptychopinn.workflows import probe_change  # noqa: E402


def global_scale_phase_ssim(obj, truth, offset, illumination) -> float:
    """Phase SSIM after only a global complex scale (no ramp, no shift removed), inside the
    region lit above 10% of the peak, on the truth's frame."""
    ox, oy = np.round(offset).astype(int)
    h, w = truth.shape
    canvas = obj[oy : oy + h, ox : ox + w]
    lit = illumination[oy : oy + h, ox : ox + w] > 0.1 * illumination.max()
    if canvas.shape != truth.shape:
        return float("nan")
    c = np.vdot(canvas[lit], truth[lit]) / np.vdot(canvas[lit], canvas[lit])
    return float(ssim(np.angle(c * canvas), np.angle(truth), mask=lit))


def _row(name, probe, method, res_object, offset, illumination, scan, seconds, epochs):
    m = evaluate_reconstruction(
        res_object, scan.object_truth, offset_px=offset, illumination=illumination
    )
    return {
        "scenario": name,
        "probe": probe,
        "method": method,
        "epochs_run": epochs,
        "seconds": round(seconds, 2),
        "phase_ssim": round(m["phase_ssim"], 4),
        "amplitude_ssim": round(m["amplitude_ssim"], 4),
        "phase_psnr": round(m["phase_psnr"], 2),
        "complex_nrmse": round(m["complex_nrmse"], 4),
        "flat_phase_ssim": round(m["baseline_flat"]["phase_ssim"], 4),
        "phase_ssim_global_scale_only": round(
            global_scale_phase_ssim(res_object, scan.object_truth, offset, illumination), 4
        ),
    }


def run_ptychi_rows(name, scan, python, epochs, threads, ours_seconds, true_probe) -> list[dict]:
    from ptychi_side import run_ptychi
    from ptychopinn.physics.shifts import canvas_geometry

    # the truth's frame, as ptychopinn's refinement uses, so both are scored on the same pixels
    canvas = canvas_geometry(
        scan.positions_px, scan.patch_size, object_shape=scan.object_truth.shape
    )
    rows = []
    for algorithm, label, n_epochs, limit in (
        ("lsqml", "converged", epochs, None),
        ("lsqml", "equal time", 100_000, ours_seconds),
        ("epie", "converged", epochs, None),
    ):
        res = run_ptychi(python, scan, algorithm, n_epochs, 0, threads, limit, canvas)
        method = f"pty-chi {'LSQML' if algorithm == 'lsqml' else 'ePIE'} ({label})"
        rows.append(
            _row(
                name,
                "retrieved",
                method,
                res.object,
                res.offset_px,
                res.illumination,
                scan,
                res.seconds,
                res.epochs,
            )
        )
        rows[-1]["probe_distance"] = round(
            probe_change(true_probe.reshape(res.probe.shape), res.probe), 4
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run(
    name: str,
    directory: Path,
    threads: int,
    ptychi_python: str | None = None,
    ptychi_epochs: int = 100,
) -> list[dict]:
    path = scenarios.write(scenarios.SCENARIOS[name], directory / f"{name}.npz")
    guess_scan = load_scan(path)
    with np.load(path) as z:
        true_probe = z["probeTrue"]
    rows = []
    for probe in ("known", "retrieved"):
        torch.set_num_threads(threads)
        scan = replace(guess_scan, probe=true_probe) if probe == "known" else guess_scan
        res = refine(scan, epochs=REFINE_ONLY_EPOCHS, refine_probe=probe == "retrieved", quiet=True)
        rows.append(
            _row(
                name,
                probe,
                "ptychopinn refine-only defaults",
                res.object,
                res.offset_px,
                res.illumination,
                scan,
                res.seconds,
                len(res.losses),
            )
        )
        rows[-1]["probe_distance"] = round(
            probe_change(true_probe.reshape(res.probe.shape), res.probe), 4
        )
        if probe == "retrieved":
            rows[-1]["guess_distance"] = round(
                probe_change(true_probe.reshape(res.probe.shape), guess_scan.probe), 4
            )
        print(json.dumps(rows[-1]), flush=True)
    scan = guess_scan
    if ptychi_python:
        rows += run_ptychi_rows(
            name, scan, ptychi_python, ptychi_epochs, threads, rows[-1]["seconds"], true_probe
        )
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--only", nargs="*", choices=sorted(scenarios.SCENARIOS), default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--ptychi-python",
        default=None,
        help="python of an environment with ptychi: LSQML and ePIE side by side",
    )
    ap.add_argument(
        "--ptychi-epochs",
        type=int,
        default=100,
        help="pty-chi epochs of the converged runs (default 100)",
    )
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            r
            for name in (a.only or scenarios.SCENARIOS)
            for r in run(name, Path(tmp), a.threads, a.ptychi_python, a.ptychi_epochs)
        ]
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{a.threads} torch threads",
        "command": " ".join(sys.argv),
        "refine_epochs": REFINE_ONLY_EPOCHS,
        "rows": rows,
    }
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(json.dumps(record, indent=2))
    print(a.output)


if __name__ == "__main__":
    main()
