"""``fit``: the one training entry point used by the CLI, the demo and the Ptychodus adapter."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch

from ptychopinn.config import DataConfig, ExecutionConfig, ModelConfig, TrainingConfig
from ptychopinn.data.scan import ScanData
from ptychopinn.errors import PtychoPINNError
from ptychopinn.io.bundle import BUNDLE_NAME, ModelBundle, save_bundle
from ptychopinn.log import get_logger
from ptychopinn.training.data import PtychoDataModule
from ptychopinn.training.module import PtychoPINN
from ptychopinn.training.trainer import build_trainer, resolve_monitor

log = get_logger("training")


@dataclass
class TrainResult:
    bundle: ModelBundle
    bundle_path: Path | None
    module: PtychoPINN
    trainer: L.Trainer
    monitor: str
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0
    train_groups: int = 0


def _stack_probes(scans: list[ScanData]) -> torch.Tensor:
    k = max(s.n_modes for s in scans)
    out = np.zeros((len(scans), k, scans[0].patch_size, scans[0].patch_size), dtype=np.complex64)
    for i, s in enumerate(scans):
        out[i, : s.n_modes] = s.probe
    return torch.as_tensor(out)


def check_patch_sizes(scans: list[ScanData], n: int | None = None) -> int:
    n = n or scans[0].patch_size
    for s in scans:
        if s.patch_size != n:
            raise PtychoPINNError(f"{s.source}: diffraction: patterns are {s.patch_size}x{s.patch_size}, "
                                  f"expected {n}x{n} like the other inputs/model")
    return n


def fit(train_scans: list[ScanData], test_scan: ScanData | None = None, *,
        model_config: ModelConfig | None = None, data_config: DataConfig = DataConfig(),
        training_config: TrainingConfig = TrainingConfig(),
        execution_config: ExecutionConfig = ExecutionConfig(),
        output_dir: str | Path | None = None, overwrite: bool = False,
        callbacks: list | None = None) -> TrainResult:
    """Train the PINN on ``train_scans`` and write ``output_dir/model.ptpinn``.

    N comes from the data (``model_config.n`` is replaced). One seed (``execution_config.seed``)
    controls grouping, the validation split, weight initialisation and batch order.
    """
    if not train_scans:
        raise PtychoPINNError("train: no training data given")
    n = check_patch_sizes(train_scans + ([test_scan] if test_scan else []))
    model_config = replace(model_config or ModelConfig(), n=n)
    e = execution_config
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        if (out / BUNDLE_NAME).exists() and not overwrite:
            raise PtychoPINNError(f"{out / BUNDLE_NAME}: output already exists; choose another "
                                  "--output-dir or pass --overwrite")
        out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(e.seed, workers=True, verbose=False)

    scans = train_scans + ([test_scan] if test_scan is not None else [])
    dm = PtychoDataModule(
        train_scans, test_scan, gridsize=model_config.gridsize, neighbors=data_config.neighbors,
        n_groups=data_config.n_groups, val_fraction=data_config.val_fraction,
        batch_size=training_config.batch_size, seed=e.seed, num_workers=e.num_workers,
        pin_memory=e.pin_memory, persistent_workers=e.persistent_workers,
        prefetch_factor=e.prefetch_factor,
        with_truth=any(s.object_truth is not None for s in scans))
    probes = _stack_probes(scans)
    gains = [PtychoPINN.initial_gain(s.mean_counts, s.probe, training_config.nphotons) for s in scans]
    eps = 1e-6 * float(np.mean([s.mean_counts for s in train_scans])) / n ** 2
    module = PtychoPINN(model_config, training_config, e, probes, gains, eps)  # init after seeding
    monitor = resolve_monitor(e.checkpoint_monitor, module.train_loss_name, module.val_loss_name,
                              module.logged_metric_names, dm.has_validation)
    module.monitor = monitor
    root = out if out is not None else Path.cwd()
    trainer = build_trainer(e, monitor, root, training_config.max_epochs,
                            **({"callbacks": callbacks} if callbacks else {}))
    if trainer.logger:
        trainer.logger.log_hyperparams({
            "model": asdict(model_config), "data": asdict(data_config),
            "training": asdict(training_config), "execution": asdict(e)})
    effective = training_config.batch_size * e.accumulate_grad_batches * trainer.num_devices * trainer.num_nodes
    log.info("training on %d groups (gridsize %d, N=%d); effective batch size %d = batch %d x "
             "accumulation %d x devices %d x nodes %d; monitor %s",
             len(dm.train_set), model_config.gridsize, n, effective, training_config.batch_size,
             e.accumulate_grad_batches, trainer.num_devices, trainer.num_nodes, monitor)
    t0 = time.perf_counter()
    ckpt = e.resume_from
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    seconds = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}

    a0s = [s.amplitude_scale() for s in train_scans]
    bundle = ModelBundle(
        model_config=model_config, data_config=data_config, training_config=training_config,
        state_dict={k: v.detach().cpu().clone() for k, v in module.generator.state_dict().items()},
        probe=train_scans[0].probe,
        normalisation={"a0": a0s[0], "scan_a0": a0s, "eps": eps,
                       "gains": [float(g) for g in module.log_gain.detach().exp().cpu()],
                       # learned / initial gain of the first scan: inference scales a new scan's
                       # data-initialised gain by it (the physics estimate needs absolute scale)
                       "gain_ratio": float(module.log_gain.detach()[0].exp()) / gains[0],
                       "input_normalisation": "per-scan mean pattern energy (N/2)^2"},
        execution=asdict(e),
    )
    bundle_path = None
    if out is not None and trainer.is_global_zero:
        bundle_path = save_bundle(bundle, out / BUNDLE_NAME, overwrite=overwrite)
        log.info("wrote model bundle %s", bundle_path)
    return TrainResult(bundle=bundle, bundle_path=bundle_path, module=module, trainer=trainer,
                       monitor=monitor, metrics=metrics, seconds=seconds, train_groups=len(dm.train_set))
