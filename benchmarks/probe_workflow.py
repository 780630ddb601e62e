"""The experiment's-probe workflow on real measured data, end to end through the CLI.

The APS Velociprobe Siemens star that tike 0.26.0 ships (516 patterns of 128 x 128, BSD-3;
fetched like ``benchmarks/siemens_star.py``) is cut into two scans of one experiment: A (the
patterns left of the median x position) and B (the rest). Then, each step a ``ptychopinn``
command in its own process:

1. ``reconstruct --data A.npz``: the probe retrieved from scan A (flat start, defaults);
2. ``simulate --probe-from A/reconstruction.npz --positions-from A/reconstruction.npz``:
   training scans of varied natural-image objects with A's probe, positions and dose;
3. ``train`` on them;
4. ``infer --data B.npz --probe-from A/reconstruction.npz``: scan B in one pass (and its even
   and odd halves, for the half-scan FRC), then the same with ``--refine-epochs``;
5. the iterative references on B: ``reconstruct --data B.npz`` from the file's probe guess and
   ``reconstruct --data B.npz --probe-from A/reconstruction.npz``.

No ground truth exists: every result on B is judged by the data residual (Poisson deviance per
pixel and amplitude R-factor through ptychopinn's forward model, each with the probe it was
reconstructed with) against a flat object, by the half-scan FRC, and by the pictures.

    python benchmarks/probe_workflow.py [--train-scans 4 --max-epochs 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from siemens_star import MEMBER, TIKE, draw_amplitude_phase, fetch  # noqa: E402


def cli() -> list[str]:
    script = Path(sys.executable).parent / "ptychopinn"
    return [str(script)] if script.exists() else [shutil.which("ptychopinn") or "ptychopinn"]


def run(step: str, *args, threads: int, times: dict | None = None, key: str = "") -> float:
    """Run ``ptychopinn ARGS`` with ``threads`` torch threads; its wall time (start-up included).
    With ``times`` (the run's record, saved next to the outputs) a step already in it is not
    run again (``--resume``)."""
    if times is not None and key in times:
        print(f"{step:<44} {times[key]:7.1f} s (earlier run)", flush=True)
        return times[key]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [*cli(), *map(str, args), "--quiet", "--overwrite"]  # the run's own directory
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{step} failed ({done.returncode}):\n{' '.join(command)}\n{done.stderr}")
    print(f"{step:<44} {seconds:7.1f} s", flush=True)
    if times is not None:
        times[key] = seconds
        path = Path(times["_file"])
        path.write_text(json.dumps(times, indent=1))
    return seconds


def train_for_experiment(
    source: Path,
    work: Path,
    n: int,
    photons: float,
    n_scans: int,
    epochs: int,
    seed: int,
    *,
    threads: int,
    times: dict | None = None,
    whose: str = "the scan's",
    steps: tuple[str, str] = ("", ""),
    train_args: tuple = (),
) -> Path:
    """A model for ``source``'s experiment, through the CLI: ``n_scans`` training scans of
    natural-image objects simulated with its probe and positions at ``photons``
    (``simulate --probe-from --positions-from``) in ``work``, then ``train`` for ``epochs``
    into ``work/model`` (returned), with ``train_args`` added to its command line.
    ``times``: ``run``'s record (``--resume``)."""
    from ptychopinn.cli.simulate import simulate_outputs

    t = dict(threads=threads, times=times)
    output = work / "train.npz"
    run(
        f"{steps[0]}simulate training scans with {whose} probe",
        "simulate",
        "--output",
        output,
        "--n-scans",
        n_scans,
        "--patch-size",
        n,
        "--object",
        "natural",
        "--probe-from",
        source,
        "--positions-from",
        source,
        "--photons",
        f"{photons:.6g}",
        "--seed",
        seed,
        key="simulate",
        **t,
    )
    run(
        f"{steps[1]}train ({epochs} epochs)",
        "train",
        "--train-data",
        *simulate_outputs(output, n_scans),
        "--output-dir",
        work / "model",
        "--max-epochs",
        epochs,
        "--seed",
        seed,
        *train_args,
        key="train",
        **t,
    )
    return work / "model"


def split_scans(source: Path, work: Path) -> tuple[Path, Path]:
    """A (x below the median) and B (the rest) as PtychoPINN NPZ scans with the file's probe
    guess."""
    from ptychopinn.data import load_scan
    from ptychopinn.data.npz import write_npz

    scan = load_scan(source)
    x = scan.positions_px[:, 0]
    left = x < np.median(x)
    paths = []
    for name, rows in (("A", np.flatnonzero(left)), ("B", np.flatnonzero(~left))):
        path = work / f"{name}.npz"
        write_npz(scan.subset(rows), path, overwrite=True)
        paths.append(path)
        print(f"scan {name}: {len(rows)} patterns -> {path}", flush=True)
    return paths[0], paths[1]


def judge(name: str, recon_dir: Path, halves: tuple[Path, Path] | None, scan, seconds: float):
    """The row of one result on scan B: data residual with the result's own probe, half-scan
    FRC when the halves were reconstructed."""
    from ptychopinn.evaluation.io import load_reconstruction_file
    from ptychopinn.evaluation.reference_free import data_residual, half_scan_frc

    recon = load_reconstruction_file(recon_dir / "reconstruction.npz")
    res = data_residual(recon.object, recon.offset_px, recon.probe, scan)
    res.pop("per_pattern_deviance")
    row = {
        "method": name,
        "seconds": round(seconds, 1),
        "deviance_per_pixel": res["poisson_deviance_per_pixel"],
        "r_factor": res["r_factor"],
    }
    if halves is not None:
        frc = half_scan_frc(*(load_reconstruction_file(h / "reconstruction.npz") for h in halves))
        row["half_scan_frc_px"] = frc["frc_resolution_px"]
        row["frc_crossed_threshold"] = frc["frc_crossed_threshold"]
    frc_px = row.get("half_scan_frc_px", float("nan"))
    print(
        f"  {name:<42} {seconds:7.1f} s  deviance {row['deviance_per_pixel']:7.3f}  "
        f"R {row['r_factor']:.4f}  half-scan FRC {frc_px:.2f} px",
        flush=True,
    )
    return row, recon


def estimate_row(model_dir: Path, scan, probe_file: Path, threads: int) -> dict:
    """The network's own input on scan B, stitched: the physics estimate of the model's
    iterations with A's probe (``EstimateEngine``), judged like the rest. Its half-scan FRC
    is reported but not comparable: the estimate's probe-shaped artefacts are the same in
    both halves, so the halves agree past the object's resolution."""
    import torch

    from ptychopinn.cli.common import with_probe_from
    from ptychopinn.evaluation.reference_free import data_residual, half_scan_frc, split_halves
    from ptychopinn.io.bundle import load_bundle
    from ptychopinn.reconstruction.estimate import EstimateEngine

    torch.set_num_threads(threads)
    bundle = load_bundle(model_dir)
    scan = with_probe_from(scan, probe_file)
    engine = EstimateEngine.for_model(bundle)
    t0 = time.perf_counter()
    recon = engine.run(scan)
    seconds = time.perf_counter() - t0
    res = data_residual(recon.object, recon.offset_px, scan.probe, scan)
    frc = half_scan_frc(*(engine.run(h) for h in split_halves(scan)))
    row = {
        "method": f"physics estimate alone ({engine.iterations} iterations, the network's input)",
        "seconds": round(seconds, 1),
        "seconds_note": "in-process, start-up excluded",
        "deviance_per_pixel": res["poisson_deviance_per_pixel"],
        "r_factor": res["r_factor"],
        "half_scan_frc_px": frc["frc_resolution_px"],
        "frc_crossed_threshold": frc["frc_crossed_threshold"],
    }
    print(
        f"  {row['method']:<42} {seconds:7.1f} s  deviance {row['deviance_per_pixel']:7.3f}  "
        f"R {row['r_factor']:.4f}  half-scan FRC {row['half_scan_frc_px']:.2f} px",
        flush=True,
    )
    return row


def flat_row(scan, probe) -> dict:
    """A flat object (1 everywhere) through the same forward model: what any result must beat."""
    from ptychopinn.evaluation.reference_free import data_residual
    from ptychopinn.physics.shifts import canvas_geometry

    shape, offset = canvas_geometry(scan.positions_px, scan.patch_size)
    res = data_residual(np.ones(shape, np.complex64), offset, probe, scan)
    return {
        "method": "flat object, A's probe",
        "seconds": 0.0,
        "deviance_per_pixel": res["poisson_deviance_per_pixel"],
        "r_factor": res["r_factor"],
    }


def picture(items, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(items), 2, figsize=(8, 4 * len(items)), squeeze=False)
    for i, (row, recon) in enumerate(items):
        frc = row.get("half_scan_frc_px")
        caption = (
            f"{row['seconds']:.0f} s, deviance {row['deviance_per_pixel']:.2f}, "
            f"R {row['r_factor']:.3f}" + (f", FRC {frc:.1f} px" if frc is not None else "")
        )
        draw_amplitude_phase(
            axes[i], recon, lambda label, row=row, c=caption: f"{row['method']}: {label}\n{c}", 8
        )
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    print(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "ptychopinn-benchmarks")
    p.add_argument("--work", type=Path, default=Path("probe-workflow-run"))
    p.add_argument("--train-scans", type=int, default=4)
    p.add_argument("--max-epochs", type=int, default=8)
    p.add_argument("--refine-epochs", type=int, default=50, help="after the network's pass")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep --work and skip the steps an earlier run of it finished",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=HERE / "results" / "probe_workflow.json")
    p.add_argument(
        "--image", type=Path, default=HERE.parent / "docs" / "images" / "probe_workflow.png"
    )
    args = p.parse_args()
    from ptychopinn.data import load_scan

    source = fetch(args.cache)
    w = args.work
    record = w / "steps.json"
    if args.resume and record.exists():
        times = json.loads(record.read_text())
        a, b = w / "A.npz", w / "B.npz"
    else:
        if w.exists():
            shutil.rmtree(w)
        w.mkdir(parents=True)
        a, b = split_scans(source, w)
        times = {"_file": str(record)}
    scan_b = load_scan(b)
    t = dict(threads=args.threads, times=times)
    run(
        "1 reconstruct A (probe retrieved)",
        "reconstruct",
        "--data",
        a,
        "--output-dir",
        w / "A",
        key="retrieve",
        **t,
    )
    probe_file = w / "A" / "reconstruction.npz"
    photons = float(load_scan(a).mean_counts)
    train_for_experiment(
        probe_file,
        w,
        scan_b.patch_size,
        photons,
        args.train_scans,
        args.max_epochs,
        args.seed,
        whose="A's",
        steps=("2 ", "3 "),
        **t,
    )
    net = ["infer", "--model", w / "model", "--data", b, "--probe-from", probe_file]
    ref = ["reconstruct", "--data", b]
    runs = [  # (row name, command, output directory, halves for the half-scan FRC)
        ("network, one pass", net, "B_net", True),
        (
            f"network + {args.refine_epochs} refinement epochs",
            [*net, "--refine-epochs", args.refine_epochs],
            "B_net_refined",
            False,
        ),
        ("reconstruct (the file's probe guess)", ref, "B_iter", True),
        ("reconstruct (A's probe)", [*ref, "--probe-from", probe_file], "B_iter_probe_a", True),
    ]
    for name, command, d, with_halves in runs:
        run(f"4 {name}", *command, "--output-dir", w / d, key=d, **t)
        if with_halves:
            for half in ("even", "odd"):
                run(
                    f"    {half} half",
                    *command,
                    "--patterns",
                    half,
                    "--output-dir",
                    w / f"{d}_{half}",
                    key=f"{d}_{half}",
                    **t,
                )

    from ptychopinn.evaluation.io import load_reconstruction_file

    print("on scan B (wall time of the command, start-up included):", flush=True)
    rows = [flat_row(scan_b, load_reconstruction_file(probe_file).probe)]
    print(
        f"  {rows[0]['method']:<42} deviance {rows[0]['deviance_per_pixel']:7.3f}  "
        f"R {rows[0]['r_factor']:.4f}",
        flush=True,
    )
    rows.append(estimate_row(w / "model", scan_b, probe_file, args.threads))
    items = []
    for name, _, d, with_halves in runs:
        hv = (w / f"{d}_even", w / f"{d}_odd") if with_halves else None
        row, recon = judge(name, w / d, hv, scan_b, times[d])
        rows.append(row)
        items.append((row, recon))
    picture(items, args.image)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}",
        "data": MEMBER + " (" + TIKE + ")",
        "command": " ".join(["python", "benchmarks/probe_workflow.py", *sys.argv[1:]]),
        "step_seconds": {k: round(v, 1) for k, v in times.items() if k != "_file"},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
