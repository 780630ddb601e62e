#!/usr/bin/env python3
"""What the physics estimate (the network's input) costs and gives, by its settings (not a test).

The estimate engine (``reconstruction.estimate``: ``projection_estimate`` of every group of 2 x 2
patterns, stitched) at K projection iterations, with the overlap constraint applied after every
``E``-th iteration (``constrain_every``; the package uses 1), on:
  - a held-out natural-image scan made by ``ptychopinn simulate`` (N = 64, 441 patterns, 1e6),
  - ``benchmarks/scenarios.py`` scans this package did not simulate (true probe given).
Phase SSIM / NRMSE against the truth (ptychopinn.evaluation) and throughput (patterns/s, 2
threads). The estimate dominates the network's single-pass cost (docs/performance.md).

    python benchmarks/estimate_cost.py --output benchmarks/results/estimate_cost.json
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import ptychopinn.reconstruction.network as network
from ptychopinn.data.scan import ScanData
from ptychopinn.physics.forward import projection_estimate
from ptychopinn.reconstruction.estimate import EstimateEngine
from ptychopinn.workflows import evaluate_against_truth, simulate_train_test

SETTINGS = ((20, 1), (20, 2), (20, 5), (20, 20), (10, 1), (10, 10), (5, 1))


def scans(scenario_names) -> dict:
    import scenarios as sc  # benchmarks/scenarios.py (this folder)

    _, natural = simulate_train_test(64, 300, 1, 441, 1e6, 0)
    out = {"natural (ptychopinn simulate)": natural}
    for name in scenario_names:
        counts, xy, probe, obj = sc.simulate(sc.SCENARIOS[name])
        out[f"{name} (benchmarks/scenarios.py, true probe)"] = ScanData(
            counts.astype(np.float32),
            xy,
            probe.astype(np.complex64),
            obj.astype(np.complex64),
            metadata={"probe_known": True},
            source=name,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--scenarios", nargs="*", default=["zoneplate-textured", "gaussian-weak"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    try:
        for label, scan in scans(args.scenarios).items():
            for k, every in SETTINGS:
                # the one projection_estimate, with this constraint interval
                network.projection_estimate = functools.partial(
                    projection_estimate, constrain_every=every
                )
                t0 = time.perf_counter()
                recon = EstimateEngine(iterations=k).run(scan)
                seconds = time.perf_counter() - t0
                m, _ = evaluate_against_truth(recon, scan)
                row = {
                    "scan": label,
                    "iterations": k,
                    "constrain_every": every,
                    "phase_ssim": round(m["phase_ssim"], 4),
                    "complex_nrmse": round(m["complex_nrmse"], 4),
                    "patterns_per_second": round(scan.n_patterns / seconds, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        network.projection_estimate = projection_estimate
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": platform.processor() or platform.machine(),
                "threads": args.threads,
                "torch": torch.__version__,
                "rows": rows,
            },
            indent=1,
        )
    )
    print("| scan | K | constrain every | phase SSIM | NRMSE | patterns/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scan']} | {r['iterations']} | {r['constrain_every']} | {r['phase_ssim']:.3f} "
            f"| {r['complex_nrmse']:.3f} | {r['patterns_per_second']:.0f} |"
        )


if __name__ == "__main__":
    main()
