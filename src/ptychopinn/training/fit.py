"""``fit``: the one training entry point used by the CLI, the demo and the Ptychodus adapter."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerStatus

from ptychopinn.config import (
    DataConfig,
    ExecutionConfig,
    ModelConfig,
    TrainingConfig,
    inference_batch_size,
)
from ptychopinn.config_factory import (
    SOURCE_DATA,
    SOURCE_DEFAULT,
    RunConfig,
    check_run,
    run_config_from_objects,
    write_audit,
)
from ptychopinn.data.scan import ScanData
from ptychopinn.errors import (
    PtychoPINNError,
    TrainingDivergedError,
    TrainingInterrupted,
)
from ptychopinn.io.bundle import BUNDLE_NAME, ModelBundle, save_bundle
from ptychopinn.io.lock import output_lock
from ptychopinn.log import get_logger
from ptychopinn.physics.forward import init_gain
from ptychopinn.training.check import (
    BEST_WEIGHTS_METRIC,
    BestWeights,
    network_check,
    report,
)
from ptychopinn.training.data import PtychoDataModule
from ptychopinn.training.module import PtychoPINN
from ptychopinn.training.trainer import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    batches_per_epoch,
    build_trainer,
    check_logger_available,
    default_mlflow_uri,
    launch_rank,
    mlflow_environment,
    resolve_accelerator,
    resolve_devices,
    resolve_monitor,
    resolve_resume,
    run_context,
)

log = get_logger("training")


@dataclass
class TrainResult:
    """What ``fit`` returns. ``runtime`` holds the values resolved at run time (accelerator,
    devices, monitor, effective batch size, ...) as written to the audit file."""

    bundle: ModelBundle
    bundle_path: Path | None
    module: PtychoPINN
    trainer: L.Trainer
    monitor: str
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0
    train_groups: int = 0
    run_config: RunConfig | None = None
    runtime: dict = field(default_factory=dict)
    audit_path: Path | None = None
    #: the end-of-training check (``training.check.network_check``): network vs its physics-
    #: estimate input vs a flat object on the validation groups; None without ground truth
    network_check: dict | None = None


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
            raise PtychoPINNError(
                f"{s.source}: diffraction: patterns are {s.patch_size}x{s.patch_size}, "
                f"expected {n}x{n} like the other inputs/model"
            )
    return n


def _accumulation_limit(
    n_groups: int, batch_size: int, accumulate: int, world_size: int
) -> int | None:
    """``limit_train_batches`` that makes every optimiser step average exactly ``accumulate``
    full batches (None when no limit is needed).

    Lightning divides each micro-batch loss by K and steps at the end of an epoch even when fewer
    than K micro-batches were accumulated, so a trailing partial group would take a smaller step.
    Dropping it is the accumulation analogue of ``drop_last``: with the same seed, batch ``b`` and
    K steps sees exactly the samples and updates of batch ``b*K`` without accumulation.
    """
    if accumulate == 1:
        return None
    batches = batches_per_epoch(n_groups, batch_size, world_size)
    if batches < accumulate:
        raise PtychoPINNError(
            f"accumulate_grad_batches: invalid value {accumulate}; expected at most the {batches} "
            f"training batch(es) per epoch and process ({n_groups} groups, "
            f"batch_size {batch_size}, "
            f"{world_size} process(es)); lower it or the batch size"
        )
    if batches % accumulate:
        return batches - batches % accumulate
    return None


def fit(
    train_scans: list[ScanData],
    test_scan: ScanData | None = None,
    *,
    run_config: RunConfig | None = None,
    model_config: ModelConfig | None = None,
    data_config: DataConfig | None = None,
    training_config: TrainingConfig | None = None,
    execution_config: ExecutionConfig | None = None,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    callbacks: list | None = None,
    trainer_overrides: dict | None = None,
) -> TrainResult:
    """Train the PINN on ``train_scans`` and write ``output_dir/model.ptpinn``.

    Configuration: either ``run_config`` (from ``ptychopinn.config_factory.build_run_config``,
    which records where each value came from) or the individual dataclasses (missing ones are
    defaults); not both. N comes from the data (``model.n`` is replaced). One seed
    (``execution.seed``) controls grouping, the validation split, weight initialisation and batch
    order.

    With ``output_dir``: writes ``config.resolved.yaml`` (every value and its source, plus the
    runtime resolution) before training, Lightning checkpoints under ``checkpoints/``, logs under
    ``lightning_logs/`` (csv, tensorboard) or ``mlruns/`` (mlflow), and the bundle at the end.
    ``callbacks`` are added to the Trainer's; ``trainer_overrides`` go to ``L.Trainer`` last.
    """
    if not train_scans:
        raise PtychoPINNError("train: no training data given")
    if run_config is not None and any(
        c is not None for c in (model_config, data_config, training_config, execution_config)
    ):
        raise TypeError("fit: pass either run_config or the individual configs, not both")
    rc = run_config or run_config_from_objects(
        model_config, data_config, training_config, execution_config
    )
    n = check_patch_sizes(train_scans + ([test_scan] if test_scan else []))
    if rc.model.n != n and rc.sources.get("model.n", SOURCE_DEFAULT) != SOURCE_DEFAULT:
        log.warning(
            "model.n = %d (%s) ignored: the data's patterns are %dx%d",
            rc.model.n,
            rc.sources["model.n"],
            n,
            n,
        )
    rc = rc.with_values(SOURCE_DATA, **{"model.n": n})
    for message in check_run(rc):
        log.warning("%s", message)
    e = rc.execution
    check_logger_available(e.logger)
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        if (out / BUNDLE_NAME).exists() and not overwrite:
            raise PtychoPINNError(
                f"{out / BUNDLE_NAME}: output already exists; choose another "
                "--output-dir or pass --overwrite"
            )
        out.mkdir(parents=True, exist_ok=True)
    resume = resolve_resume(e.resume_from, out)
    accelerator = resolve_accelerator(e.accelerator)
    devices = resolve_devices(accelerator, e.devices)
    # one run per output directory; processes started by a DDP launcher belong to rank 0's run
    lock = (
        output_lock(out, "train")
        if out is not None and launch_rank(devices) == 0
        else contextlib.nullcontext()
    )
    with lock, run_context(), mlflow_environment(e, out):
        if out is not None and (out / BUNDLE_NAME).exists() and not overwrite:  # won the race?
            raise PtychoPINNError(
                f"{out / BUNDLE_NAME}: output already exists; choose another "
                "--output-dir or pass --overwrite"
            )
        return _fit(
            train_scans,
            test_scan,
            rc,
            out,
            overwrite,
            resume,
            accelerator,
            devices,
            callbacks,
            trainer_overrides or {},
        )


@contextlib.contextmanager
def _sigint_restored():
    """Lightning ignores SIGINT after catching the first Ctrl-C; give the caller its handler
    back (the main thread only: signals cannot be handled elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run_trainer(trainer: L.Trainer, module, dm, resume: Path | None, out: Path | None) -> None:
    """``trainer.fit`` with our failure semantics: an interrupt raises TrainingInterrupted (the
    CLI exits 130; Lightning itself would exit the process with status 1), a checkpoint that
    does not fit the model is a one-line error."""
    try:
        with _sigint_restored(), torch.random.fork_rng(devices=[]):
            trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    except (SystemExit, KeyboardInterrupt) as exc:
        if trainer.state.status != TrainerStatus.INTERRUPTED and not isinstance(
            exc, KeyboardInterrupt
        ):
            raise
        last = out / CHECKPOINT_DIR / LAST_CHECKPOINT if out is not None else None
        hint = (
            f"resume with --resume-from last ({last})"
            if last is not None and last.exists()
            else "no checkpoint to resume from yet"
        )
        epoch = trainer.current_epoch
        raise TrainingInterrupted(
            f"training interrupted at epoch {epoch}; no model bundle written; {hint}",
            last if last is not None and last.exists() else None,
        ) from None
    except RuntimeError as exc:
        if resume and "state_dict" in str(exc):
            first = str(exc).strip().splitlines()[0]
            raise PtychoPINNError(
                f"{resume}: checkpoint does not match this model's settings ({first}); "
                "resume with the run's own --config OUTPUT_DIR/config.resolved.yaml"
            ) from None
        raise


def _fit(
    train_scans,
    test_scan,
    rc: RunConfig,
    out: Path | None,
    overwrite: bool,
    resume: Path | None,
    accelerator: str,
    devices: int,
    callbacks,
    trainer_overrides,
) -> TrainResult:
    m, d, t, e = rc.model, rc.data, rc.training, rc.execution
    scans = train_scans + ([test_scan] if test_scan is not None else [])
    dm = PtychoDataModule(
        train_scans,
        test_scan,
        gridsize=m.gridsize,
        neighbors=d.neighbors,
        n_groups=d.n_groups,
        val_fraction=d.val_fraction,
        batch_size=t.batch_size,
        seed=e.seed,
        num_workers=e.num_workers,
        pin_memory=e.pin_memory,
        persistent_workers=e.persistent_workers,
        prefetch_factor=e.prefetch_factor,
        with_truth=any(s.object_truth is not None for s in scans),
        physics_iterations=m.physics_iterations,
    )
    probes = _stack_probes(scans)
    # unit object -> measured mean counts (or --nphotons) per pattern (PHYSICS.md section 2)
    gains = [
        init_gain(t.nphotons if t.nphotons is not None else s.mean_counts, s.probe) for s in scans
    ]
    eps = 1e-6 * float(np.mean([s.mean_counts for s in train_scans])) / m.n**2
    # weights initialised from the seed on a forked CPU generator: the caller's global RNG state
    # is left as it was (the batch order has its own seeded sampler, grouping its own generator)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(e.seed)
        module = PtychoPINN(m, t, e, probes, gains, eps)
    with_truth = any(s.object_truth is not None for s in scans)
    logged = [
        name for name in module.logged_metric_names if with_truth or name != "val_patch_nrmse"
    ]
    monitor = resolve_monitor(
        e.checkpoint_monitor,
        module.train_loss_name,
        module.val_loss_name,
        logged,
        dm.has_validation,
    )
    module.monitor = monitor

    world_size = devices * e.num_nodes
    overrides = dict(trainer_overrides)
    limit = _accumulation_limit(
        len(dm.train_set), t.batch_size, e.accumulate_grad_batches, world_size
    )
    if limit is not None and "limit_train_batches" not in overrides:
        overrides["limit_train_batches"] = limit
        log.info(
            "gradient accumulation: using %d of %d batches per epoch so every optimiser step "
            "averages %d full batches",
            limit,
            batches_per_epoch(len(dm.train_set), t.batch_size, world_size),
            e.accumulate_grad_batches,
        )
    if not dm.has_validation:
        overrides.setdefault("limit_val_batches", 0)  # no empty validation loop (and its warning)
    best = None
    if with_truth and dm.has_validation:  # select the bundled weights on real-space quality
        best = BestWeights()
        callbacks = [*(callbacks or []), best]
    trainer = build_trainer(e, monitor, out, t.max_epochs, callbacks=callbacks, **overrides)
    effective = t.batch_size * e.accumulate_grad_batches * trainer.num_devices * trainer.num_nodes
    runtime = {
        "patch_size_n": m.n,
        "accelerator": accelerator,
        "devices": trainer.num_devices,
        "num_nodes": trainer.num_nodes,
        "strategy": type(trainer.strategy).__name__,
        "precision": str(trainer.precision),
        "monitor": monitor,
        "has_validation": dm.has_validation,
        "train_groups": len(dm.train_set),
        "val_groups": len(dm.val_set) if dm.val_set is not None else 0,
        "effective_batch_size": effective,
        "limit_train_batches": overrides.get("limit_train_batches"),
        "inference_batch_size": inference_batch_size(rc.infer.inference_batch_size),
        "resume_checkpoint": str(resume) if resume else None,
        "log_dir": str(Path(trainer.logger.log_dir).resolve())
        if getattr(trainer.logger, "log_dir", None)
        else None,
        "mlflow_tracking_uri": (e.mlflow_tracking_uri or default_mlflow_uri(out))
        if e.logger == "mlflow" and out is not None
        else None,
        "output_dir": str(out.resolve()) if out is not None else None,
    }
    audit_path = None
    if launch_rank(trainer.num_devices) == 0:
        if out is not None:
            audit_path = write_audit(rc, out, runtime)
            log.info("wrote %s", audit_path)
        changed = rc.non_defaults()
        if changed:
            log.info(
                "settings that differ from the defaults: %s",
                ", ".join(f"{k}={v!r} ({s})" for k, v, s in changed),
            )
        else:
            log.info("all settings at their defaults")
    if trainer.logger:
        hparams = rc.as_dict()
        hparams["runtime"] = {k: v for k, v in runtime.items() if v is not None}
        trainer.logger.log_hyperparams(hparams)
    log.info(
        "training on %d groups (gridsize %d, N=%d) on %s; effective batch size %d = batch %d "
        "x accumulation %d x devices %d x nodes %d; monitor %s",
        len(dm.train_set),
        m.gridsize,
        m.n,
        accelerator,
        effective,
        t.batch_size,
        e.accumulate_grad_batches,
        trainer.num_devices,
        trainer.num_nodes,
        monitor,
    )
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.perf_counter()
    _run_trainer(trainer, module, dm, resume, out)
    seconds = time.perf_counter() - t0
    metrics = {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if torch.is_tensor(v) and v.numel() == 1
    }

    bad = [
        k
        for k, v in module.generator.state_dict().items()
        if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise TrainingDivergedError(
            f"training diverged: non-finite weights ({', '.join(bad[:3])}) "
            "at the end of training; no model bundle written"
        )
    bundled = {"weights": "last epoch", "epoch": int(trainer.current_epoch) - 1}
    if best is not None and best.state is not None:
        module.generator.load_state_dict(best.state)
        bundled = {
            "weights": f"best {BEST_WEIGHTS_METRIC}",
            "epoch": best.epoch,
            BEST_WEIGHTS_METRIC: best.best,
        }
        log.info(
            "bundling the weights of epoch %d (lowest %s %.4f), not the last epoch's",
            best.epoch,
            BEST_WEIGHTS_METRIC,
            best.best,
        )
    check = network_check(module, dm.val_set, t.batch_size) if with_truth else None
    if launch_rank(trainer.num_devices) == 0:
        report(check)
    a0s = [s.amplitude_scale() for s in train_scans]
    bundle = ModelBundle(
        model_config=m,
        data_config=d,
        training_config=t,
        # float32 whatever the training precision (64-true trains in float64): bundles do not
        # depend on how they were trained
        state_dict={
            k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()).clone()
            for k, v in module.generator.state_dict().items()
        },
        probe=train_scans[0].probe,
        normalisation={
            "a0": a0s[0],
            "scan_a0": a0s,
            "eps": eps,
            "gains": [float(g) for g in module.log_gain.detach().exp().cpu()],
            # learned / initial gain of the first scan: inference scales a new scan's
            # data-initialised gain by it (the physics estimate needs absolute scale)
            "gain_ratio": float(module.log_gain.detach()[0].exp()) / gains[0],
            "input_normalisation": "per-scan mean pattern energy (N/2)^2",
        },
        # the execution and inference settings of the run (inference_batch_size is read back),
        # and the refinement settings it was run with (reconstruct --network refines after it)
        execution={
            **asdict(e),
            **asdict(rc.infer),
            "refine": asdict(rc.refine),
            "validation_check": check,
            "bundled_weights": bundled,
        },
    )
    bundle_path = None
    if out is not None and trainer.is_global_zero:
        bundle_path = save_bundle(bundle, out / BUNDLE_NAME, overwrite=overwrite)
        log.info("wrote model bundle %s", bundle_path)
    return TrainResult(
        bundle=bundle,
        bundle_path=bundle_path,
        module=module,
        trainer=trainer,
        monitor=monitor,
        metrics=metrics,
        seconds=seconds,
        train_groups=len(dm.train_set),
        run_config=rc,
        runtime=runtime,
        audit_path=audit_path,
        network_check=check,
    )
