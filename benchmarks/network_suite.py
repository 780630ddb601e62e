"""The network's targets (issue 12) side by side in one run: a model trained for each held-out
scan's experiment against its own physics-estimate input and against iterative reconstruction
(ours and pty-chi LSQML), on scans made independently of ptychopinn (``benchmarks/scenarios.py``).

    python benchmarks/network_suite.py --output benchmarks/results/network_suite.json
        [--only CASE ...] [--ptychi-python /path/to/ptychi-venv/bin/python]
        [--work DIR] [--train-scans 4] [--max-epochs 8] [--train-args '...'] [--threads 2]
        [--network-only]
    python benchmarks/network_suite.py --tables benchmarks/results/network_suite.json

Each case is one scenario of ``scenarios.py`` (its probe, scan pattern, object kind and dose).
The scan it makes is held out: the model never sees its object. The model is trained for the
scan's experiment through the CLI (``probe_workflow.train_for_experiment``: ``--train-scans``
natural-image scans simulated with the scan's true probe, positions and dose, ``simulate
--probe-from --positions-from``, then ``train`` for ``--max-epochs``; kept in ``--work`` and
reused by a later run). The probe is the true one and fixed in every method, so the comparison
is of object reconstruction alone. Rows, all on the same scan and judged against its ground
truth by ``ptychopinn.evaluation`` (phase SSIM, phase PSNR, amplitude SSIM, complex NRMSE):

- flat object (the baseline any result must beat);
- the physics estimate alone (``EstimateEngine`` with the model's iterations: the network's
  input, no learning);
- the network's single pass (``reconstruction.network.reconstruct``; its time includes the
  estimate);
- network + refinement (``refine`` from the network's object, defaults for a given start: Adam
  lr 1e-2, plateau window 3; up to 300 epochs with the default stop), again with the flat
  start's optimiser and window (PGD, 20 epochs), and at 1e4 photons and below also with the
  prior ``prior_sigma=0.01`` that keeps a good start; times include the pass;
- refinement from a flat start (``refine``, defaults of ``reconstruct --refine-only``: PGD, up to
  300 epochs, default stop) at its stop, and at its best epoch chosen with the truth (the
  *oracle* stop: no stopping rule can do better);
- with ``--ptychi-python``: pty-chi 2.x LSQML (Gaussian noise model; below 1e5 photons also
  Poisson), ``--ptychi-epochs`` epochs, at its last epoch and at its best snapshot (oracle).

Times are in-process on ``--threads`` torch threads (pty-chi: its ``task.run`` alone).
Refinement's trajectory is evaluated after a fixed set of epochs (evaluation time not counted).
The summary per case: network vs estimate, the network's phase-PSNR margin over the best
iterative row (oracle rows included), the time flat refinement needs to reach the network's
phase PSNR (against the pass's time), and the time network + refinement needs to reach flat
refinement's final phase PSNR with either optimiser (against flat refinement's time).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios  # noqa: E402
from ptychopinn.cli.reconstruct import REFINE_ONLY_EPOCHS  # noqa: E402
from ptychopinn.data import ScanData  # noqa: E402
from ptychopinn.evaluation import evaluate_reconstruction  # noqa: E402
from ptychopinn.reconstruction.gradient import Refiner  # noqa: E402

#: the cases run by default: every N = 64 scenario of scenarios.py (n128 only with --only)
DEFAULT_CASES = [n for n, s in scenarios.SCENARIOS.items() if s.n == 64]
#: refinement is evaluated after these epochs (and after its last)
EVAL_EPOCHS = {1, 2, 3, 5, 7, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 125, 150, 200, 250, 300}
#: pty-chi's object is kept after these epochs
PTYCHI_SNAPSHOTS = (2, 5, 10, 20, 30, 50, 75, 100, 150, 200)
#: the prior of network + refinement at low dose (per real/imaginary part of a pixel)
LOW_DOSE_PRIOR_SIGMA = 0.01
KEYS = ("phase_ssim", "phase_psnr", "amplitude_ssim", "complex_nrmse")


def measure(obj, offset, illumination, truth) -> dict:
    m = evaluate_reconstruction(obj, truth, offset_px=offset, illumination=illumination)
    return {k: round(float(m[k]), 4) for k in KEYS} | {
        "flat": {k: round(float(m["baseline_flat"][k]), 4) for k in KEYS}
    }


def row(case, method, seconds, metrics, **extra) -> dict:
    r = {"case": case, "method": method, "seconds": round(seconds, 2)}
    r |= {k: metrics[k] for k in KEYS} | extra
    print(
        f"  {method:<52} {seconds:7.1f} s  phase SSIM {r['phase_ssim']:.3f}  "
        f"PSNR {r['phase_psnr']:6.2f} dB  NRMSE {r['complex_nrmse']:.4f}",
        flush=True,
    )
    return r


def trajectory(scan, truth, start=None, offset=None, max_epochs=REFINE_ONLY_EPOCHS, **kw):
    """Refinement epoch by epoch with the default stop, measured after EVAL_EPOCHS and at its
    end: ``[(epoch, seconds, metrics)]`` (seconds: the refinement's own, set-up included), and
    the last result."""
    refiner = Refiner(scan, start, offset, **kw)
    points, res = [], None
    while refiner.epoch < max_epochs:
        refiner.run_epoch()
        last = refiner.converged or refiner.epoch >= max_epochs
        if refiner.epoch in EVAL_EPOCHS or last:
            res = refiner.result()
            points.append(
                (
                    refiner.epoch,
                    refiner.elapsed,
                    measure(res.object, res.offset_px, res.illumination, truth),
                )
            )
        if last:
            break
    return points, res


def best(points):
    return max(points, key=lambda p: p[2]["phase_psnr"])


def first_reaching(points, psnr, offset_s=0.0):
    """The time of the first point at or above ``psnr`` (None: never)."""
    for _, seconds, m in points:
        if m["phase_psnr"] >= psnr:
            return round(offset_s + seconds, 2)
    return None


def held_out_scan(name: str) -> tuple[ScanData, np.ndarray]:
    """The held-out scan of case ``name`` (``scenarios.simulate``) as ScanData, and its truth."""
    counts, xy, probe, truth = scenarios.simulate(scenarios.SCENARIOS[name])
    scan = ScanData(
        diffraction=counts.astype(np.float32),
        positions_px=xy,
        probe=probe.astype(np.complex64),
        object_truth=truth,
        source=f"scenarios.py {name}",
    )
    return scan, truth


def run_case(name, a) -> tuple[list[dict], dict]:
    from ptychopinn.data.npz import write_npz
    from ptychopinn.io.bundle import load_bundle
    from ptychopinn.reconstruction.estimate import EstimateEngine
    from ptychopinn.reconstruction.network import reconstruct

    s = scenarios.SCENARIOS[name]
    scan, truth = held_out_scan(name)
    print(f"\n{name}: {scan.n_patterns} patterns, N = {s.n}, {s.photons:.0e} photons", flush=True)
    work = a.work / name
    work.mkdir(parents=True, exist_ok=True)
    times_file = work / "times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    times["_file"] = str(times_file)
    from probe_workflow import train_for_experiment

    source = work / "scan.npz"
    if not source.exists():
        write_npz(scan, source)
    model = train_for_experiment(
        source,
        work,
        s.n,
        s.photons,
        a.train_scans,
        a.max_epochs,
        a.seed,
        threads=a.threads,
        times=times,
        train_args=tuple(a.train_args.split()),
    )
    bundle = load_bundle(model)
    check = bundle.execution.get("validation_check")
    rows = []

    engine = EstimateEngine.for_model(bundle)
    t0 = time.perf_counter()
    est = engine.run(scan)
    est_s = time.perf_counter() - t0
    m_est = measure(est.object, est.offset_px, est.illumination, truth)
    rows.append(row(name, "flat object (baseline)", 0.0, m_est["flat"]))
    rows.append(row(name, f"physics estimate alone ({engine.iterations} iterations)", est_s, m_est))

    reconstruct(bundle, scan)  # warm-up (first-call costs), not timed
    t0 = time.perf_counter()
    net = reconstruct(bundle, scan)
    net_s = time.perf_counter() - t0
    m_net = measure(net.object, net.offset_px, net.illumination, truth)
    rows.append(row(name, "network, single pass", net_s, m_net))

    summary = {
        "case": name,
        "photons": s.photons,
        "step_over_probe_diameter": round(s.step_px / s.probe_diameter_px, 2),
        "training": {"scans": a.train_scans, "epochs": a.max_epochs, "args": a.train_args},
        "training_seconds": round(times.get("train", float("nan")), 1),
        "validation_check": check,
        "network_minus_estimate_phase_ssim": round(m_net["phase_ssim"] - m_est["phase_ssim"], 4),
        "network_minus_estimate_phase_psnr": round(m_net["phase_psnr"] - m_est["phase_psnr"], 2),
        "network_not_worse_than_estimate": bool(
            m_net["complex_nrmse"] <= m_est["complex_nrmse"]
            and m_net["phase_ssim"] >= m_est["phase_ssim"]
        ),
        "network_seconds": round(net_s, 2),
    }
    if a.network_only:
        print(
            "  summary:", json.dumps({k: v for k, v in summary.items() if k != "validation_check"})
        )
        picture(name, truth, [("physics estimate", est), ("network", net)], work / "picture.png")
        return rows, summary

    flat, flat_res = trajectory(scan, truth, seed=a.seed)
    e, sec, m = flat[-1]
    rows.append(row(name, "refinement from flat, default stop", sec, m, epochs=e))
    e, sec, m = best(flat)
    rows.append(row(name, "refinement from flat, best epoch (oracle)", sec, m, epochs=e))

    starts = [
        ("network + refinement", {}),
        # the flat start's optimiser and plateau window from the network's object
        ("network + refinement, PGD", {"optimizer": "pgd", "patience": 20}),
    ]
    if s.photons <= 1e4:
        starts.append(
            (
                f"network + refinement, prior sigma {LOW_DOSE_PRIOR_SIGMA}",
                {"prior_sigma": LOW_DOSE_PRIOR_SIGMA},
            )
        )
    after, after_res = {}, None
    for method, extra in starts:
        pts, res = trajectory(scan, truth, net.object, net.offset_px, seed=a.seed, **extra)
        after[method] = pts
        after_res = after_res or res
        e, sec, m = pts[-1]
        rows.append(row(name, f"{method}, default stop", net_s + sec, m, epochs=e))
        e, sec, m = best(pts)
        rows.append(row(name, f"{method}, best epoch (oracle)", net_s + sec, m, epochs=e))

    if a.ptychi_python:
        from ptychi_side import run_ptychi

        models = ["gaussian"] + (["poisson"] if s.photons < 1e5 else [])
        for noise in models:
            res = run_ptychi(
                a.ptychi_python,
                scan,
                "lsqml",
                a.ptychi_epochs,
                a.seed,
                a.threads,
                refine_probe=False,
                extra_args=("--noise-model", noise),
                snapshot_epochs=tuple(e for e in PTYCHI_SNAPSHOTS if e <= a.ptychi_epochs),
            )
            label = f"pty-chi LSQML ({noise})"
            m = measure(res.object, res.offset_px, res.illumination, truth)
            rows.append(
                row(name, f"{label}, {res.epochs} epochs", res.seconds, m, epochs=res.epochs)
            )
            snaps = [
                (e, sec, measure(o, res.offset_px, res.illumination, truth))
                for e, (o, sec) in res.snapshots.items()
            ]
            if snaps:
                e, sec, m = best(snaps)
                rows.append(row(name, f"{label}, best snapshot (oracle)", sec, m, epochs=e))

    iterative = [
        r for r in rows if "refinement from flat" in r["method"] or "pty-chi" in r["method"]
    ]
    top = max(iterative, key=lambda r: r["phase_psnr"])
    flat_final = flat[-1]
    refined = after["network + refinement"]
    summary |= {
        "best_iterative": top["method"],
        "network_minus_best_iterative_phase_psnr": round(
            m_net["phase_psnr"] - top["phase_psnr"], 2
        ),
        "network_minus_best_iterative_phase_ssim": round(
            m_net["phase_ssim"] - top["phase_ssim"], 4
        ),
        "flat_seconds_to_network_psnr": first_reaching(flat, m_net["phase_psnr"]),
        "flat_final_seconds": round(flat_final[1], 2),
        "flat_final_phase_psnr": flat_final[2]["phase_psnr"],
        "network_refine_seconds_to_flat_final_psnr": first_reaching(
            refined, flat_final[2]["phase_psnr"], net_s
        ),
        "network_refine_pgd_seconds_to_flat_final_psnr": first_reaching(
            after["network + refinement, PGD"], flat_final[2]["phase_psnr"], net_s
        ),
    }
    print("  summary:", json.dumps({k: v for k, v in summary.items() if k != "validation_check"}))
    items = [
        ("physics estimate", est),
        ("network, single pass", net),
        ("refinement from flat", flat_res),
        ("network + refinement", after_res),
    ]
    picture(name, truth, items, work / "picture.png")
    return rows, summary


def picture(name, truth, items, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(items) + 1, figsize=(3.2 * (len(items) + 1), 3.2))
    axes[0].imshow(np.angle(truth), cmap="gray")
    axes[0].set_title(f"{name}\ntruth (phase)", fontsize=8)
    for ax, (label, rec) in zip(axes[1:], items, strict=True):
        lit = rec.illumination > 0.1 * rec.illumination.max()
        obj = rec.object * np.exp(-1j * np.angle(rec.object[lit].mean()))  # global phase
        ax.imshow(np.where(lit, np.angle(obj), np.nan), cmap="gray")
        ax.set_title(label, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def tables(results: dict) -> str:
    """Markdown of a results file: one summary table, then each case's rows."""
    out = [
        "| case | photons | step / probe diameter | network - estimate (phase SSIM / PSNR dB) "
        "| network - best iterative (PSNR dB) | best iterative | network s | flat refinement "
        "to the network's PSNR s | network + refinement (Adam / PGD) to flat's final PSNR s "
        "| flat's final s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results["summary"]:
        out.append(
            f"| {c['case']} | {c['photons']:.0e} | {c['step_over_probe_diameter']} "
            f"| {c['network_minus_estimate_phase_ssim']:+.3f} / "
            f"{c['network_minus_estimate_phase_psnr']:+.2f} "
            f"| {c.get('network_minus_best_iterative_phase_psnr', float('nan')):+.2f} "
            f"| {c.get('best_iterative', '-')} | {c['network_seconds']} "
            f"| {c.get('flat_seconds_to_network_psnr')} "
            f"| {c.get('network_refine_seconds_to_flat_final_psnr')} / "
            f"{c.get('network_refine_pgd_seconds_to_flat_final_psnr')} "
            f"| {c.get('flat_final_seconds', '-')} |"
        )
    for c in results["summary"]:
        out += [
            "",
            f"{c['case']} ({c['photons']:.0e} photons):",
            "",
            "| method | time (s) | phase SSIM | phase PSNR (dB) | amplitude SSIM | complex NRMSE |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["rows"]:
            if r["case"] == c["case"]:
                epochs = (
                    f" ({r['epochs']} epochs)"
                    if "epochs" in r and "pty-chi" not in r["method"]
                    else ""
                )
                out.append(
                    f"| {r['method']}{epochs} | {r['seconds']} | {r['phase_ssim']:.3f} "
                    f"| {r['phase_psnr']:.2f} | {r['amplitude_ssim']:.3f} "
                    f"| {r['complex_nrmse']:.4f} |"
                )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tables",
        type=Path,
        default=None,
        help="print a results file's tables as markdown and exit (no run)",
    )
    ap.add_argument("--output", type=Path, default=None)
    ap.add_argument("--only", nargs="*", choices=sorted(scenarios.SCENARIOS), default=None)
    ap.add_argument("--work", type=Path, default=Path("network-suite-run"))
    ap.add_argument("--train-scans", type=int, default=4)
    ap.add_argument("--max-epochs", type=int, default=8, help="training epochs")
    ap.add_argument(
        "--train-args",
        default="",
        help="more options for train, one string (e.g. '--gridsize 3'); use its own --work",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--network-only",
        action="store_true",
        help="only the flat, estimate and network rows (to compare trainings quickly)",
    )
    ap.add_argument("--ptychi-python", default=None)
    ap.add_argument("--ptychi-epochs", type=int, default=100)
    a = ap.parse_args()
    if a.tables is not None:
        print(tables(json.loads(a.tables.read_text())))
        return 0
    if a.output is None:
        ap.error("--output is required (unless --tables)")
    torch.set_num_threads(a.threads)
    rows, summaries = [], []
    for name in a.only or DEFAULT_CASES:
        r, summary = run_case(name, a)
        rows += r
        summaries.append(summary)
        a.output.parent.mkdir(parents=True, exist_ok=True)
        a.output.write_text(
            json.dumps(
                {
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                    "command": " ".join(sys.argv),
                    "rows": rows,
                    "summary": summaries,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
