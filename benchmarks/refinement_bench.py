"""Time-to-quality of physics refinement from a flat start on simulated scans (not a test).

For each scan (a held-out natural-image object, and random lines; 1e6 and 1e4 photons per
pattern) it runs ``ptychopinn.reconstruction.gradient.Refiner`` epoch by epoch and measures the
object against the ground truth with ``ptychopinn.evaluation`` (translation, global phase offset
and ramp, and amplitude scale removed; region = illumination > 10% of its peak, eroded): phase and
amplitude SSIM, phase PSNR and complex NRMSE, at a growing set of epochs, with the wall time of the
refinement alone (metric time excluded), plus patterns/s and the time to reach phase SSIM
thresholds (first measured epoch at or above them).

    python benchmarks/refinement_bench.py --output refine.json [--n 64 --positions 441]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ptychopinn.data.simulate import SimulationConfig, simulate_scan
from ptychopinn.evaluation import evaluate_reconstruction
from ptychopinn.reconstruction.gradient import DEFAULT_LR, Refiner

#: epochs after which the object is measured (metrics are slow; the loop itself is fast)
MEASURE_EPOCHS = {
    1,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    12,
    15,
    20,
    25,
    30,
    40,
    50,
    60,
    80,
    100,
    130,
    160,
    200,
    250,
    300,
    400,
    500,
}
KEYS = ("phase_ssim", "amplitude_ssim", "phase_psnr", "amplitude_psnr", "complex_nrmse")
THRESHOLDS = (0.8, 0.9, 0.95)


def measure(obj, scan, refiner, illumination) -> dict:
    m = evaluate_reconstruction(
        obj,
        scan.object_truth,
        offset_px=refiner.offset_px,
        illumination=illumination,
        baseline=False,
    )
    return {k: m[k] for k in KEYS}


def run_case(name, scan, *, optimizer, lr, batch_size, seconds, max_epochs, seed=0):
    refiner = Refiner(scan, optimizer=optimizer, lr=lr, batch_size=batch_size, seed=seed)
    illumination = refiner.illumination().numpy()
    flat = measure(np.ones_like(refiner.current_object()), scan, refiner, illumination)
    rows = []
    while refiner.epoch < max_epochs and refiner.elapsed < seconds and not refiner.converged:
        loss = refiner.run_epoch()
        if refiner.epoch in MEASURE_EPOCHS or refiner.converged or refiner.elapsed >= seconds:
            rows.append(
                {
                    "epoch": refiner.epoch,
                    "seconds": round(refiner.elapsed, 3),
                    "loss": loss,
                    "lr": refiner.lr,
                    **measure(refiner.current_object(), scan, refiner, illumination),
                }
            )
    final = refiner.result()  # barely lit pixels reset, as users get it
    final_metrics = measure(final.object, scan, refiner, illumination)
    loop_s = max(refiner.elapsed - refiner.setup_seconds, 1e-9)
    reach = {}
    for th in THRESHOLDS:
        hit = next((r for r in rows if r["phase_ssim"] >= th), None)
        reach[f"phase_ssim>={th}"] = (
            None if hit is None else {"seconds": hit["seconds"], "epoch": hit["epoch"]}
        )
    return {
        "case": name,
        "optimizer": optimizer,
        "lr": lr or DEFAULT_LR[optimizer],
        "batch_size": batch_size,
        "n_patterns": scan.n_patterns,
        "patch_size": scan.patch_size,
        "photons": scan.metadata.get("photons_per_pattern"),
        "object_shape": list(scan.object_truth.shape),
        "flat": flat,
        "setup_seconds": refiner.setup_seconds,
        "epochs": refiner.epoch,
        "patterns_per_s": refiner.epoch * scan.n_patterns / loop_s,
        "time_to": reach,
        "final": {"seconds": refiner.elapsed, **final_metrics},
        "history": rows,
    }


def summarise(case: dict, checkpoints) -> list[str]:
    lines = []
    shown = set()
    for t in checkpoints:
        hit = [r for r in case["history"] if r["seconds"] <= t]
        if not hit or hit[-1]["epoch"] in shown:
            continue
        r = hit[-1]
        shown.add(r["epoch"])
        lines.append(
            f"  {r['seconds']:6.2f} s  epoch {r['epoch']:>3}  "
            f"phase SSIM {r['phase_ssim']:.3f}"
            f"  amp SSIM {r['amplitude_ssim']:.3f}  phase PSNR {r['phase_psnr']:.1f} dB"
            f"  NRMSE {r['complex_nrmse']:.4f}"
        )
    f = case["final"]
    lines.append(
        f"  final {f['seconds']:.2f} s ({case['epochs']} epochs): phase SSIM "
        f"{f['phase_ssim']:.3f}  amp SSIM {f['amplitude_ssim']:.3f}  NRMSE "
        f"{f['complex_nrmse']:.4f}"
    )
    reach = ", ".join(
        f"{k}: " + (f"{v['seconds']:.2f} s" if v else "not reached")
        for k, v in case["time_to"].items()
    )
    lines.append(f"  time to {reach}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, help="JSON file to write (must not exist)")
    p.add_argument("--n", type=int, default=64, help="pattern size N")
    p.add_argument("--positions", type=int, default=441)
    p.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help="at most this refinement wall time per case (it also stops when converged)",
    )
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--optimizer", default="adam", help="comma list of adam, pgd")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--objects", default="natural,lines")
    p.add_argument("--photons", default="1e6,1e4")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = p.parse_args(argv)
    out = Path(args.output)
    if out.exists():
        print(f"--output: {out} exists; choose a new path", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    # Pay one-time costs (torch.optim import, FFT plans) outside the timed cases.
    warm = simulate_scan(SimulationConfig(patch_size=args.n, n_positions=16, seed=1))
    for optimizer in args.optimizer.split(","):
        Refiner(warm, optimizer=optimizer).run_epoch()
    load_before = os.getloadavg()
    cases = []
    checkpoints = [0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300]
    t_start = time.perf_counter()
    for kind in args.objects.split(","):
        for photons in (float(x) for x in args.photons.split(",")):
            cfg = SimulationConfig(
                patch_size=args.n,
                n_positions=args.positions,
                object_kind=kind,
                test_split=True,
                photons=photons,
                seed=3,
            )
            scan = simulate_scan(cfg)
            for optimizer in args.optimizer.split(","):
                name = f"{kind}-{photons:.0e}-{optimizer}"
                case = run_case(
                    name,
                    scan,
                    optimizer=optimizer,
                    lr=args.lr,
                    batch_size=args.batch_size,
                    seconds=args.seconds,
                    max_epochs=args.max_epochs,
                )
                cases.append(case)
                print(
                    f"{name}: {scan.n_patterns} patterns N={args.n}, object "
                    f"{case['object_shape']}, {case['patterns_per_s']:.0f} patterns/s; flat "
                    f"object: phase SSIM {case['flat']['phase_ssim']:.3f} NRMSE "
                    f"{case['flat']['complex_nrmse']:.3f}"
                )
                print("\n".join(summarise(case, checkpoints)), flush=True)
    report = {
        "benchmark": "refinement time-to-quality (flat start)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
        },
        "command": " ".join(
            ["python benchmarks/refinement_bench.py"] + (argv if argv is not None else sys.argv[1:])
        ),
        "metrics": "ptychopinn.evaluation.evaluate_reconstruction (defaults)",
        "total_seconds": time.perf_counter() - t_start,
        "cases": cases,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
