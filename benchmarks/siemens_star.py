"""Real measured data: the APS Velociprobe Siemens star that tike 0.26.0 ships (BSD-3),
reconstructed by ptychopinn and, side by side in the same run, by pty-chi LSQML and ePIE.

No ground truth exists; every method is judged by the same reference-free measures
(``ptychopinn.evaluation.reference_free``): half-scan FRC (even vs odd patterns, 1/2-bit
threshold) and the data residual (Poisson deviance per pixel, amplitude R-factor) of the full
reconstruction, evaluated with ptychopinn's forward model, plus the pictures.

    python benchmarks/siemens_star.py                       # ptychopinn only
    python benchmarks/siemens_star.py --ptychi-python /path/to/ptychi-venv/bin/python

The data are fetched once with ``pip download --no-deps --no-binary :all: tike==0.26.0`` into
``--cache`` (default ~/.cache/ptychopinn-benchmarks), checked against a fixed sha256, and only
the one ``.npz.bz2`` member is read from the tarball (never unpickled). ``--make-crop F`` writes
the 64-pattern crop vendored in tests/data.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

TIKE = "tike==0.26.0"
TARBALL = "tike-0.26.0.tar.gz"
TARBALL_SHA256 = "e6a89bfb8e62ff77e01ca2cef4384898b1208f541652a5449dc0c61781006a19"
MEMBER = "tike-0.26.0/tests/data/siemens-star-small.npz.bz2"
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ptychi_side import run_ptychi  # noqa: E402

#: half-pixel grid searched for pty-chi's frame convention when its object is evaluated with
#: ptychopinn's forward model (its window centre may differ from ours by a fraction of a pixel)
OFFSET_GRID = (-1.0, -0.5, 0.0, 0.5, 1.0)


def fetch(cache: Path) -> Path:
    """The cached ``siemens-star-small.npz.bz2`` (downloading the tike sdist once)."""
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / "siemens-star-small.npz.bz2"
    if out.exists():
        return out
    tarball = cache / TARBALL
    if not tarball.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                TIKE,
                "-d",
                str(cache),
            ],
            check=True,
        )
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != TARBALL_SHA256:
        raise SystemExit(f"{tarball}: sha256 {digest} differs from the expected {TARBALL_SHA256}")
    with tarfile.open(tarball) as tf:
        data = tf.extractfile(MEMBER).read()
    tmp = out.with_suffix(".part")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


def make_crop(source: Path, target: Path, n: int = 64) -> None:
    """The ``n`` patterns nearest the median position, in tike's own layout, bzip2-compressed."""
    with bz2.open(source, "rb") as fh:
        with np.load(io.BytesIO(fh.read()), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    scan = arrays["scan"][0]
    dist = np.hypot(*(scan - np.median(scan, axis=0)).T)
    idx = np.sort(np.argsort(dist)[:n])
    buf = io.BytesIO()
    np.savez(buf, data=arrays["data"][:, idx], scan=arrays["scan"][:, idx], probe=arrays["probe"])
    target.write_bytes(bz2.compress(buf.getvalue(), 9))
    print(f"{target}: {n} patterns within {dist[idx].max():.1f} px of the median position")


# ---------------------------------------------------------------------------------------------
# ptychopinn


def run_ours(scan, epochs: int | None, seed: int):
    from ptychopinn.cli.reconstruct import REFINE_ONLY_EPOCHS
    from ptychopinn.workflows import refine_reconstruction, resolve_probe_refinement

    t0 = time.perf_counter()
    recon = refine_reconstruction(
        None,
        scan,
        epochs or REFINE_ONLY_EPOCHS,
        seed=seed,
        refine_probe=resolve_probe_refinement("auto", scan),
    )
    return recon, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# pty-chi (in its own environment, through benchmarks/ptychi_runner.py)


def best_frame_residual(result, scan) -> tuple[dict, list]:
    """Data residual of ``result`` with the sub-pixel frame offset (OFFSET_GRID) that explains
    the counts best: a fraction-of-a-pixel convention difference must not count against it."""
    from ptychopinn.evaluation.reference_free import data_residual

    best, best_d = None, None
    for dx in OFFSET_GRID:
        for dy in OFFSET_GRID:
            res = data_residual(
                result.object, result.offset_px + np.array([dx, dy]), result.probe, scan
            )
            if (
                best is None
                or res["poisson_deviance_per_pixel"] < best["poisson_deviance_per_pixel"]
            ):
                best, best_d = res, [dx, dy]
    return best, best_d


# ---------------------------------------------------------------------------------------------


def summarise(name, full, halves, scan, seconds, half_seconds, epochs=None, frame_search=False):
    from ptychopinn.evaluation.reference_free import data_residual, half_scan_frc

    frc = half_scan_frc(*halves)
    if frame_search:
        res, frame = best_frame_residual(full, scan)
    else:
        res, frame = data_residual(full.object, full.offset_px, full.probe, scan), [0.0, 0.0]
    res.pop("per_pattern_deviance")
    row = {
        "method": name,
        "seconds": round(seconds, 2),
        "half_seconds": round(half_seconds, 2),
        "epochs": epochs,
        "half_scan_frc_px": frc["frc_resolution_px"],
        "frc_crossed_threshold": frc["frc_crossed_threshold"],
        "deviance_per_pixel": res["poisson_deviance_per_pixel"],
        "r_factor": res["r_factor"],
        "frame_offset_px": frame,
        "frc_curve": frc["frc_curve"],
    }
    print(
        f"{name:<34} {seconds:7.1f} s  half-scan FRC {frc['frc_resolution_px']:6.2f} px  "
        f"deviance {res['poisson_deviance_per_pixel']:7.3f}  R {res['r_factor']:.4f}",
        flush=True,
    )
    return row


def draw_amplitude_phase(axes, result, title, fontsize: int) -> None:
    """Amplitude and phase of ``result`` on the two ``axes``, cropped to where the probe lit the
    object (illumination >= 10% of its peak; the rest blank), the phase referred to the lit
    region's mean, each shown between its 1st and 99th percentile; ``title(label)`` names
    each."""
    ill = np.asarray(result.illumination)
    lit = ill >= 0.1 * ill.max()
    rows, cols = np.nonzero(lit)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    o, m = np.asarray(result.object)[box], lit[box]
    ph = np.angle(o * np.exp(-1j * np.angle(o[m].mean())))
    for ax, (img, cmap, label) in zip(
        axes, ((np.abs(o), "gray", "amplitude"), (ph, "twilight", "phase (rad)")), strict=True
    ):
        lo, hi = np.percentile(img[m], [1, 99])
        ax.imshow(np.where(m, img, np.nan), cmap=cmap, vmin=lo, vmax=hi)
        ax.set_title(title(label), fontsize=fontsize)
        ax.axis("off")


def picture(rows_objects, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(rows_objects), 3, figsize=(12, 4 * len(rows_objects)), squeeze=False
    )
    for i, (name, result, row) in enumerate(rows_objects):
        draw_amplitude_phase(axes[i, :2], result, lambda label, name=name: f"{name}: {label}", 9)
        curve = row["frc_curve"]
        f = np.asarray(curve["frequency_cycles_per_px"])
        axes[i, 2].plot(f[1:], np.asarray(curve["frc"])[1:], label="half-scan FRC")
        axes[i, 2].plot(
            f[1:], np.asarray(curve["threshold_half_bit"])[1:], "--", label="1/2-bit threshold"
        )
        axes[i, 2].set_title(
            f"{row['half_scan_frc_px']:.2f} px, {row['seconds']:.0f} s, R {row['r_factor']:.3f}",
            fontsize=9,
        )
        axes[i, 2].set_xlabel("cycles/px")
        axes[i, 2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    print(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "ptychopinn-benchmarks")
    p.add_argument("--make-crop", type=Path, default=None, metavar="F")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="ptychopinn refinement epochs (default: the --refine-only default)",
    )
    p.add_argument(
        "--ptychi-python",
        default=None,
        help="python of an environment with ptychi: adds LSQML and ePIE side by side",
    )
    p.add_argument("--ptychi-epochs", type=int, default=100, help="pty-chi epochs (default 100)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=HERE / "results" / "siemens_star.json")
    p.add_argument(
        "--image", type=Path, default=HERE.parent / "docs" / "images" / "siemens_star.png"
    )
    args = p.parse_args()

    source = fetch(args.cache)
    if args.make_crop is not None:
        make_crop(source, args.make_crop)
        return 0
    import torch

    from ptychopinn.data import load_scan
    from ptychopinn.evaluation.reference_free import split_halves
    from ptychopinn.log import get_logger

    get_logger("refinement").setLevel("WARNING")
    torch.set_num_threads(args.threads)
    scan = load_scan(source)
    halves = split_halves(scan)
    print(
        f"{source}: {scan.n_patterns} patterns of {scan.patch_size} x {scan.patch_size}, "
        f"{scan.mean_counts:.3g} counts per pattern",
        flush=True,
    )
    rows, pictures = [], []

    full, t_full = run_ours(scan, args.epochs, args.seed)
    half_runs = [run_ours(h, args.epochs, args.seed) for h in halves]
    row = summarise(
        "ptychopinn --refine-only (defaults)",
        full,
        [r for r, _ in half_runs],
        scan,
        t_full,
        sum(t for _, t in half_runs),
        epochs=full.metadata.get("refine_epochs_run"),
    )
    rows.append(row)
    pictures.append(("ptychopinn", full, row))

    if args.ptychi_python:
        from ptychopinn.physics.shifts import canvas_geometry

        canvas = canvas_geometry(scan.positions_px, scan.patch_size)
        budgets = [
            (f"{args.ptychi_epochs} epochs", args.ptychi_epochs, None),
            ("equal time", 10_000, t_full),
        ]
        for algorithm in ("lsqml", "epie"):
            for label, epochs, limit in budgets:
                res = run_ptychi(
                    args.ptychi_python,
                    scan,
                    algorithm,
                    epochs,
                    args.seed,
                    args.threads,
                    limit,
                    canvas,
                )
                hl = None if limit is None else limit * halves[0].n_patterns / scan.n_patterns
                hres = [
                    run_ptychi(
                        args.ptychi_python,
                        h,
                        algorithm,
                        epochs,
                        args.seed,
                        args.threads,
                        hl,
                        canvas,
                    )
                    for h in halves
                ]
                name = f"pty-chi {algorithm.upper() if algorithm == 'lsqml' else 'ePIE'} ({label})"
                row = summarise(
                    name,
                    res,
                    hres,
                    scan,
                    res.seconds,
                    sum(h.seconds for h in hres),
                    epochs=res.epochs,
                    frame_search=True,
                )
                rows.append(row)
                if limit is None:
                    pictures.append((name, res, row))

    picture(pictures, args.image)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}",
        "data": MEMBER + " (" + TIKE + ")",
        "command": " ".join(["python", "benchmarks/siemens_star.py", *sys.argv[1:]]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
