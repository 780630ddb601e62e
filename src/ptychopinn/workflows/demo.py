"""``ptychopinn demo``: simulate -> train -> reconstruct a held-out scan -> refine -> evaluate,
on embedded defaults (the package's recipe, ``ModelConfig()``, at a laptop's size)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ptychopinn.config import ModelConfig, TrainingConfig
from ptychopinn.workflows.outputs import write_reconstruction_outputs
from ptychopinn.workflows.reconstruct import evaluate_against_truth, refine_reconstruction


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
    #: the network: the package's recipe (ModelConfig / TrainingConfig defaults)
    gridsize: int = ModelConfig().gridsize
    physics_iterations: int = ModelConfig().physics_iterations
    n_filters_scale: int = ModelConfig().n_filters_scale
    batch_size: int = TrainingConfig().batch_size
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

    from ptychopinn.config import DataConfig, ExecutionConfig, inference_batch_size
    from ptychopinn.data.npz import write_npz
    from ptychopinn.evaluation import save_comparison_png, save_frc_metrics_png
    from ptychopinn.io.atomic import atomic_dir
    from ptychopinn.log import get_logger
    from ptychopinn.reconstruction.network import reconstruct
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
            result.bundle,
            test,
            batch_size=inference_batch_size(result.bundle.execution.get("inference_batch_size")),
            seed=s.seed,
            quiet=s.quiet,
            device=s.device or "cpu",
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
