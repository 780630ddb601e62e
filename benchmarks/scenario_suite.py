"""Flat-start iterative reconstruction (``ptychopinn reconstruct --refine-only`` defaults) on
scans simulated independently of ptychopinn (``benchmarks/scenarios.py``), measured against
their ground truth with ``ptychopinn.evaluation`` and with a global complex scale only.

    python benchmarks/scenario_suite.py --output benchmarks/results/scenarios.json [--only NAME ...]

Each scenario runs twice: with the probe that made the data, and the CLI default for such a
file (``--refine-probe auto``: these files carry no ``probe_known`` entry, so the probe is
retrieved jointly). Timing is the refinement alone on this machine's CPU threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
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
from ptychopinn.refinement import refine  # noqa: E402


def global_scale_phase_ssim(obj, truth, offset, illumination) -> float:
    """Phase SSIM after only a global complex scale (no ramp, no shift removed), inside the
    region lit above 10% of the peak, on the truth's frame."""
    ox, oy = np.round(offset).astype(int)
    h, w = truth.shape
    canvas = obj[oy:oy + h, ox:ox + w]
    lit = illumination[oy:oy + h, ox:ox + w] > 0.1 * illumination.max()
    if canvas.shape != truth.shape:
        return float("nan")
    c = np.vdot(canvas[lit], truth[lit]) / np.vdot(canvas[lit], canvas[lit])
    return float(ssim(np.angle(c * canvas), np.angle(truth), mask=lit))


def run(name: str, directory: Path, threads: int) -> list[dict]:
    path = scenarios.write(scenarios.SCENARIOS[name], directory / f"{name}.npz")
    scan = load_scan(path)
    rows = []
    for probe in ("known", "retrieved"):
        torch.set_num_threads(threads)
        res = refine(scan, epochs=REFINE_ONLY_EPOCHS, refine_probe=probe == "retrieved", quiet=True)
        m = evaluate_reconstruction(res.object, scan.object_truth, offset_px=res.offset_px,
                                    illumination=res.illumination)
        rows.append({"scenario": name, "probe": probe, "epochs_run": len(res.losses),
                     "seconds": round(res.seconds, 2),
                     "phase_ssim": round(m["phase_ssim"], 4),
                     "amplitude_ssim": round(m["amplitude_ssim"], 4),
                     "phase_psnr": round(m["phase_psnr"], 2),
                     "complex_nrmse": round(m["complex_nrmse"], 4),
                     "flat_phase_ssim": round(m["baseline_flat"]["phase_ssim"], 4),
                     "phase_ssim_global_scale_only": round(global_scale_phase_ssim(
                         res.object, scan.object_truth, res.offset_px, res.illumination), 4)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--only", nargs="*", choices=sorted(scenarios.SCENARIOS), default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for name in (a.only or scenarios.SCENARIOS) for r in run(name, Path(tmp), a.threads)]
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                         f"{a.threads} torch threads",
              "command": " ".join(sys.argv), "refine_epochs": REFINE_ONLY_EPOCHS, "rows": rows}
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(json.dumps(record, indent=2))
    print(a.output)


if __name__ == "__main__":
    main()
