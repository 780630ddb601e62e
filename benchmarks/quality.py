#!/usr/bin/env python3
"""End-to-end performance and quality benchmark (not a unit test).

Simulates seeded training scans (natural-image objects) and held-out test scans with objects the
model never saw (amplitude and phase from different test images) at each photon dose, trains the
network, and measures on every test scan:
  - flat object (the "reconstruct nothing" baseline),
  - physics estimate only (the network's input, no learning: --physics-only-baseline),
  - network, single pass,
  - network + physics refinement (--refine-epochs),
  - physics refinement from a flat start (the automatic-differentiation iterative baseline),
    at the same wall time as network + refinement, and run to convergence (early stop),
with phase/amplitude SSIM and PSNR, complex NRMSE and FRC resolution (ptychopinn.evaluation),
plus training throughput (groups/s), inference throughput (patterns/s), wall times and peak
resident memory. Writes JSON (--output) and prints a Markdown table for docs/performance.md.

Example (the numbers in docs/performance.md):
    python benchmarks/quality.py --output benchmarks/results/quality.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

from ptychopinn.config import DataConfig, ExecutionConfig, ModelConfig, TrainingConfig
from ptychopinn.reconstruction.network import predict_patches, reconstruct
from ptychopinn.reconstruction.result import Reconstruction
from ptychopinn.reconstruction.stitching import stitch
from ptychopinn.training.fit import fit
from ptychopinn.workflows import (
    evaluate_against_truth,
    refine_reconstruction,
    simulate_train_test,
)

KEYS = (
    "phase_ssim",
    "phase_psnr",
    "amplitude_ssim",
    "amplitude_psnr",
    "complex_nrmse",
    "frc_resolution_px",
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def metrics_of(recon: Reconstruction, scan) -> dict:
    m, _ = evaluate_against_truth(recon, scan)
    return {k: m[k] for k in KEYS} | {"baseline_flat": {k: m["baseline_flat"][k] for k in KEYS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--patch-size", type=int, default=32)
    ap.add_argument("--train-positions", type=int, default=400)
    ap.add_argument("--n-train-scans", type=int, default=2)
    ap.add_argument("--test-positions", type=int, default=196)
    ap.add_argument("--photons", type=float, nargs="+", default=[1e6, 1e4])
    ap.add_argument("--max-epochs", type=int, default=6)
    # the package's recipe (ModelConfig / ExecutionConfig defaults), not a copy of it
    recipe, run = ModelConfig(), ExecutionConfig()
    ap.add_argument("--gridsize", type=int, default=recipe.gridsize)
    ap.add_argument("--physics-iterations", type=int, default=recipe.physics_iterations)
    ap.add_argument("--n-filters-scale", type=int, default=recipe.n_filters_scale)
    ap.add_argument("--refine-epochs", type=int, default=20)
    ap.add_argument("--learning-rate", type=float, default=run.learning_rate)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "cpus": torch.get_num_threads(),
        "torch": torch.__version__,
        "args": vars(args) | {"output": str(args.output)},
        "runs": [],
    }
    for photons in args.photons:
        train, test = simulate_train_test(
            args.patch_size,
            args.train_positions,
            args.n_train_scans,
            args.test_positions,
            photons,
            args.seed,
        )
        tmp = Path(tempfile.mkdtemp(prefix="ptychopinn-bench-"))
        try:
            t0 = time.perf_counter()
            result = fit(
                train,
                None,
                model_config=ModelConfig(
                    gridsize=args.gridsize,
                    n_filters_scale=args.n_filters_scale,
                    physics_iterations=args.physics_iterations,
                    skip_connections=True,
                ),
                data_config=DataConfig(val_fraction=0.05),
                training_config=TrainingConfig(max_epochs=args.max_epochs, batch_size=16),
                execution_config=ExecutionConfig(
                    seed=args.seed,
                    quiet=True,
                    early_stopping=False,
                    logger="none",
                    enable_checkpointing=False,
                    learning_rate=args.learning_rate,
                ),
                output_dir=tmp / "model",
            )
            train_s = time.perf_counter() - t0
            run = {
                "photons": photons,
                "train_groups": result.train_groups,
                "train_seconds": train_s,
                "train_groups_per_s": result.train_groups * args.max_epochs / train_s,
            }
            # network, single pass (timed separately from stitching)
            t0 = time.perf_counter()
            net = reconstruct(result.bundle, test, batch_size=64)
            run["infer_seconds"] = time.perf_counter() - t0
            run["infer_patterns_per_s"] = test.n_patterns / run["infer_seconds"]
            run["network"] = metrics_of(net, test)
            # physics estimate alone: the same pipeline with an untrained (identity) correction
            bundle0 = result.bundle
            gen0 = bundle0.build_generator()
            for p in gen0.head.parameters():
                torch.nn.init.zeros_(p)
            t0 = time.perf_counter()
            est_patches = predict_patches(bundle0, test, batch_size=64, generator=gen0)
            obj, ill, off = stitch(
                est_patches, test.positions_px, test.probe, test.object_truth.shape
            )
            est = Reconstruction(obj, off, test.positions_px, ill, test.probe)
            run["physics_estimate_seconds"] = time.perf_counter() - t0
            run["physics_estimate"] = metrics_of(est, test)
            if args.refine_epochs:
                t0 = time.perf_counter()
                refined = refine_reconstruction(net, test, args.refine_epochs, quiet=True)
                run["network_refined_seconds"] = run["infer_seconds"] + time.perf_counter() - t0
                run["network_refined"] = metrics_of(refined, test)
                # the iterative baseline at equal wall time, and run to convergence
                budget = run["network_refined_seconds"]
                t0 = time.perf_counter()
                flat = refine_reconstruction(None, test, 10_000, quiet=True, time_limit_s=budget)
                run["refine_from_flat_seconds"] = time.perf_counter() - t0
                run["refine_from_flat"] = metrics_of(flat, test)
                t0 = time.perf_counter()
                conv = refine_reconstruction(None, test, 300, quiet=True)
                run["refine_from_flat_converged_seconds"] = time.perf_counter() - t0
                run["refine_from_flat_converged_epochs"] = len(conv.metadata["refine_losses"])
                run["refine_from_flat_converged"] = metrics_of(conv, test)
            run["peak_rss_mb"] = peak_rss_mb()
            results["runs"].append(run)
            print(json.dumps(run, default=float), flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=float))

    print(
        "\n| photons | method | phase SSIM | phase PSNR | amp SSIM | NRMSE | FRC res (px) "
        "| time (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in results["runs"]:
        rows = [
            ("flat object", run["network"]["baseline_flat"], None),
            ("physics estimate only", run["physics_estimate"], run["physics_estimate_seconds"]),
            ("network (single pass)", run["network"], run["infer_seconds"]),
        ]
        if "network_refined" in run:
            rows += [
                ("network + refinement", run["network_refined"], run["network_refined_seconds"]),
                (
                    "refinement from flat, same time",
                    run["refine_from_flat"],
                    run["refine_from_flat_seconds"],
                ),
                (
                    "refinement from flat, converged",
                    run["refine_from_flat_converged"],
                    run["refine_from_flat_converged_seconds"],
                ),
            ]
        for name, m, secs in rows:
            cells = [
                f"{m[k]:.3f}" if isinstance(m[k], float) else "-"
                for k in (
                    "phase_ssim",
                    "phase_psnr",
                    "amplitude_ssim",
                    "complex_nrmse",
                    "frc_resolution_px",
                )
            ]
            print(
                f"| {run['photons']:.0e} | {name} | " + " | ".join(cells) + f" | {secs:.1f} |"
                if secs
                else f"| {run['photons']:.0e} | {name} | " + " | ".join(cells) + " | - |"
            )


if __name__ == "__main__":
    main()
