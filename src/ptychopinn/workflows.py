"""Shared steps of the CLI workflows (infer, reconstruct, demo): outputs and refinement."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ptychopinn.config import INFERENCE_BATCH_SIZE, PROBE_REFINEMENT
from ptychopinn.data.scan import ScanData
from ptychopinn.errors import ConfigError, DataError
from ptychopinn.inference import Reconstruction
from ptychopinn.io.atomic import check_new_output

RECONSTRUCTION_FILES = ("reconstruction.npz", "amplitude_phase.png")


def write_reconstruction_outputs(
    recon: Reconstruction,
    output_dir: str | Path,
    overwrite: bool = False,
    title: str = "reconstruction",
) -> list[Path]:
    """Write ``reconstruction.npz`` and an amplitude/phase PNG (with colour bars) atomically.

    Every target is checked before anything is written, so a refused run writes nothing.
    """
    from ptychopinn.evaluation.plots import save_complex_png

    out = Path(output_dir)
    targets = [out / name for name in RECONSTRUCTION_FILES]
    for t in targets:
        check_new_output(t, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    recon.save(targets[0], overwrite=overwrite)
    mask = recon.illumination > 1e-2 * float(recon.illumination.max())
    save_complex_png(recon.object, targets[1], title=title, mask=mask, overwrite=overwrite)
    return targets


def probe_is_known(scan: ScanData) -> bool:
    """Whether the scan's probe is the true probe rather than a guess: a ``probe_known`` entry in
    its metadata decides; scans made by ``ptychopinn simulate`` (``simulation`` metadata) carry
    the probe that made them. Everything else (measured data, Ptychodus products, other tools'
    files) holds a guess."""
    known = scan.metadata.get("probe_known")
    if known is not None:
        return bool(known)
    return "simulation" in scan.metadata


def resolve_probe_refinement(choice: str, scan: ScanData) -> bool:
    if choice not in PROBE_REFINEMENT:
        raise ConfigError(
            f"refine_probe: invalid value {choice!r}; expected one of {list(PROBE_REFINEMENT)}"
        )
    return choice == "on" or (choice == "auto" and not probe_is_known(scan))


def probe_change(start: np.ndarray, end: np.ndarray) -> float:
    """Relative L2 distance between two probes after removing a global complex scale (the
    ambiguity the gain absorbs): ``min_c ||c end - start|| / ||start||``."""
    a, b = np.asarray(start).reshape(-1), np.asarray(end).reshape(-1)
    if a.size != b.size:
        return float("nan")
    c = np.vdot(b, a) / max(float(np.vdot(b, b).real), 1e-30)
    return float(np.linalg.norm(c * b - a) / max(float(np.linalg.norm(a)), 1e-30))


def refine_reconstruction(
    recon: Reconstruction | None,
    scan: ScanData,
    epochs: int,
    *,
    quiet: bool = True,
    seed: int = 0,
    refine_probe: bool = False,
    **kwargs,
) -> Reconstruction:
    """Physics refinement on the scan's own Poisson likelihood, from ``recon`` or a flat start.
    With ``refine_probe`` the probe is retrieved jointly (from the scan's probe as the guess) and
    how far it moved is logged and recorded (``metadata["probe_change"]``)."""
    from ptychopinn.log import get_logger
    from ptychopinn.refinement import refine

    initial, offset = (None, None) if recon is None else (recon.object, recon.offset_px)
    result = refine(
        scan,
        initial,
        offset,
        epochs=epochs,
        seed=seed,
        refine_probe=refine_probe,
        quiet=quiet,
        **kwargs,
    )
    metadata = dict(recon.metadata) if recon is not None else {"source": scan.source}
    metadata.update(
        {
            "refine_epochs": epochs,
            "refine_epochs_run": len(result.losses),
            "refine_losses": list(map(float, result.losses)),
            "refine_seconds": result.seconds,
            "refine_probe": bool(refine_probe),
            "method": (metadata.get("method", "flat start") + " + physics refinement"),
        }
    )
    if refine_probe:
        metadata["probe_change"] = probe_change(scan.probe, result.probe)
        get_logger("refinement").info(
            "probe retrieved: moved %.1f%% from the guess (relative L2 after a global complex "
            "scale)",
            100 * metadata["probe_change"],
        )
    positions = scan.positions_px
    if result.positions_px is not None:
        positions = result.positions_px
        moved = positions - scan.positions_px
        metadata["position_correction_rms_px"] = float(np.sqrt((moved**2).sum(1).mean()))
        metadata["positions_corrected"] = True
        get_logger("refinement").info(
            "positions corrected: moved %.2f px rms", metadata["position_correction_rms_px"]
        )
    base = recon or Reconstruction(
        object=result.object,
        offset_px=np.asarray(result.offset_px),
        positions_px=positions,
        illumination=result.illumination,
        probe=result.probe,
    )
    return replace(
        base,
        object=result.object,
        offset_px=np.asarray(result.offset_px),
        illumination=result.illumination,
        probe=result.probe,
        positions_px=positions,
        metadata=metadata,
    )


def self_supervised_reconstruction(
    scan: ScanData,
    output_dir: str | Path | None,
    *,
    model_config=None,
    data_config=None,
    training_config=None,
    execution_config=None,
    refine_epochs: int = 0,
    overwrite: bool = False,
    refine_kwargs: dict | None = None,
    device: str = "cpu",
):
    """Train on the scan itself (no labels), reconstruct it, optionally refine.

    Returns (Reconstruction, TrainResult). The bundle is written to ``output_dir`` when given;
    the single pass runs on ``device`` (training on the execution config's accelerator).
    """
    from ptychopinn.config import (
        DataConfig,
        ExecutionConfig,
        ModelConfig,
        TrainingConfig,
    )
    from ptychopinn.inference import reconstruct
    from ptychopinn.training.fit import fit

    execution_config = execution_config or ExecutionConfig()
    result = fit(
        [scan],
        None,
        model_config=model_config or ModelConfig(),
        data_config=data_config or DataConfig(),
        training_config=training_config or TrainingConfig(),
        execution_config=execution_config,
        output_dir=output_dir,
        overwrite=overwrite,
    )
    batch = execution_config.inference_batch_size or INFERENCE_BATCH_SIZE
    recon = reconstruct(
        result.bundle,
        scan,
        batch_size=batch,
        seed=execution_config.seed,
        quiet=execution_config.quiet,
        device=device,
    )
    recon.metadata["method"] = "ptychopinn self-supervised network"
    if refine_epochs:
        recon = refine_reconstruction(
            recon,
            scan,
            refine_epochs,
            quiet=execution_config.quiet,
            seed=execution_config.seed,
            **(refine_kwargs or {}),
        )
    return recon, result


def evaluate_against_truth(recon: Reconstruction, scan: ScanData):
    """Align ``recon`` to the scan's ground truth (ambiguities removed) and measure it.

    Returns (metrics dict, AlignedPair) so callers can plot the aligned arrays.
    """
    from ptychopinn.evaluation import align_to_truth, evaluate_aligned

    if scan.object_truth is None:
        raise DataError(scan.source, "objectGuess", "no ground truth to evaluate against")
    pair = align_to_truth(
        recon.object,
        scan.object_truth,
        offset_px=recon.offset_px,
        illumination=recon.illumination,
        positions_px=scan.positions_px,
        probe=scan.probe,
    )
    return evaluate_aligned(pair), pair


# --------------------------------------------------------------------------------------------
# demo

from dataclasses import dataclass, field  # noqa: E402


@dataclass(frozen=True)
class DemoSettings:
    """Embedded defaults of ``ptychopinn demo`` (a problem that converges on a laptop CPU)."""

    patch_size: int = 32
    n_positions: int = 400
    n_train_scans: int = 2
    test_positions: int = 196
    photons: float = 1e6
    max_epochs: int = 5
    refine_epochs: int = 20
    gridsize: int = 2
    physics_iterations: int = 20
    n_filters_scale: int = 1
    batch_size: int = 16
    seed: int = 0
    quiet: bool = False
    #: torch device of the network pass and refinement ("cpu", "cuda", "mps"); training then runs
    #: on the matching Lightning accelerator, one device. None: training on Lightning's "auto",
    #: the network pass and refinement on the CPU
    device: str | None = None


@dataclass
class DemoResult:
    output_dir: Path
    metrics: dict
    pictures: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def table(self) -> str:
        cols = [
            ("phase_ssim", "phase SSIM", "{:.3f}"),
            ("phase_psnr", "phase PSNR", "{:.1f}"),
            ("amplitude_ssim", "amp SSIM", "{:.3f}"),
            ("amplitude_psnr", "amp PSNR", "{:.1f}"),
            ("complex_nrmse", "NRMSE", "{:.4f}"),
            ("frc_resolution_px", "FRC res (px)", "{:.2f}"),
        ]
        head = f"{'held-out scan':<26}" + "".join(f"{c[1]:>13}" for c in cols) + f"{'time (s)':>10}"
        lines = [head, "-" * len(head)]
        for name, m in self.metrics.items():
            cells = []
            for key, _, fmt in cols:
                v = m.get(key)
                cells.append(f"{(fmt.format(v) if isinstance(v, (int, float)) else '-'):>13}")
            t = self.seconds.get(name)
            lines.append(
                f"{name:<26}" + "".join(cells) + f"{(f'{t:.1f}' if t is not None else '-'):>10}"
            )
        return "\n".join(lines)


def simulate_train_test(
    patch_size: int,
    n_positions: int,
    n_train_scans: int,
    test_positions: int,
    photons: float,
    seed: int = 0,
):
    """Seeded training scans (natural images from the training pool) and one held-out test scan
    whose amplitude and phase come from test images the training never sees (demo, benchmarks)."""
    from ptychopinn.data.simulate import SimulationConfig, simulate_scan

    sim = dict(patch_size=patch_size, object_kind="natural", photons=photons)
    train = [
        simulate_scan(SimulationConfig(n_positions=n_positions, seed=seed + 100 + i, **sim))
        for i in range(n_train_scans)
    ]
    test = simulate_scan(
        SimulationConfig(n_positions=test_positions, test_split=True, seed=seed + 999, **sim)
    )
    return train, test


def run_demo(
    output_dir: str | Path, settings: DemoSettings = DemoSettings(), overwrite: bool = False
) -> DemoResult:
    """Simulate -> train -> reconstruct a held-out scan -> refine -> evaluate.

    Everything is written to a temporary sibling directory that is renamed to ``output_dir`` only
    when the whole run succeeded, so a failed demo leaves nothing that looks complete.
    """
    import json
    import time

    from ptychopinn.config import (
        DataConfig,
        ExecutionConfig,
        ModelConfig,
        TrainingConfig,
    )
    from ptychopinn.data.npz import write_npz
    from ptychopinn.evaluation import save_comparison_png, save_frc_metrics_png
    from ptychopinn.inference import reconstruct
    from ptychopinn.io.atomic import atomic_dir
    from ptychopinn.log import get_logger
    from ptychopinn.training.fit import fit

    log = get_logger("demo")
    s = settings
    final = Path(output_dir)
    seconds, metrics, pictures = {}, {}, []
    with atomic_dir(final, overwrite=overwrite) as out:
        t0 = time.perf_counter()
        train, test = simulate_train_test(
            s.patch_size, s.n_positions, s.n_train_scans, s.test_positions, s.photons, s.seed
        )
        for i, scan in enumerate(train):
            write_npz(scan, out / f"train_{i}.npz")
        write_npz(test, out / "test.npz")
        seconds["simulate"] = time.perf_counter() - t0
        log.info(
            "simulated %d training scans of %d patterns and a held-out scan of %d (N=%d)",
            len(train),
            s.n_positions,
            s.test_positions,
            s.patch_size,
        )

        t0 = time.perf_counter()
        result = fit(
            train,
            None,
            model_config=ModelConfig(
                gridsize=s.gridsize,
                n_filters_scale=s.n_filters_scale,
                physics_iterations=s.physics_iterations,
                skip_connections=True,
            ),
            data_config=DataConfig(val_fraction=0.1),
            training_config=TrainingConfig(max_epochs=s.max_epochs, batch_size=s.batch_size),
            execution_config=ExecutionConfig(
                seed=s.seed,
                quiet=s.quiet,
                early_stopping=False,
                accelerator=(s.device or "auto").split(":")[0],
                devices=1,
            ),
            output_dir=out / "model",
        )
        seconds["train"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        net = reconstruct(
            result.bundle, test, batch_size=64, seed=s.seed, quiet=s.quiet, device=s.device or "cpu"
        )
        seconds["network"] = time.perf_counter() - t0
        write_reconstruction_outputs(net, out / "network", title="network (single pass)")
        recons = {"network (single pass)": net}
        if s.refine_epochs:
            t0 = time.perf_counter()
            refined = refine_reconstruction(
                net, test, s.refine_epochs, quiet=s.quiet, seed=s.seed, device=s.device or "cpu"
            )
            seconds["network + refinement"] = seconds["network"] + time.perf_counter() - t0
            write_reconstruction_outputs(refined, out / "refined", title="network + refinement")
            recons["network + refinement"] = refined
            # the iterative baseline users know, given the same wall time (shown, not hidden)
            t0 = time.perf_counter()
            recons["refinement from flat"] = refine_reconstruction(
                None,
                test,
                10_000,
                quiet=s.quiet,
                seed=s.seed,
                time_limit_s=seconds["network + refinement"],
                device=s.device or "cpu",
            )
            seconds["refinement from flat"] = time.perf_counter() - t0
        seconds["network (single pass)"] = seconds.pop("network")

        for name, recon in recons.items():
            m, pair = evaluate_against_truth(recon, test)
            if not metrics:
                metrics["flat object (baseline)"] = m["baseline_flat"]
            metrics[name] = m
            tag = {"network (single pass)": "network", "network + refinement": "refined"}.get(name)
            if tag is None:
                continue  # baseline: metrics only
            pictures.append(
                save_comparison_png(
                    pair.recon,
                    pair.truth,
                    out / f"comparison_{tag}.png",
                    mask=pair.mask,
                    title=name,
                )
            )
            pictures.append(save_frc_metrics_png(m, out / f"frc_{tag}.png", title=f"FRC: {name}"))
        summary = {
            "settings": {k: getattr(s, k) for k in s.__dataclass_fields__},
            "seconds": seconds,
            "metrics": metrics,
        }
        (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    pictures = [final / Path(p).name for p in pictures]
    return DemoResult(output_dir=final, metrics=metrics, pictures=pictures, seconds=seconds)
