"""The PtychoPINN LightningModule: generator + physics + Poisson likelihood, automatic
optimisation."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from ptychopinn.config import ExecutionConfig, ModelConfig, TrainingConfig
from ptychopinn.models.registry import build_generator
from ptychopinn.physics.forward import (
    expected_counts,
    phase_factors,
    probe_weight,
)
from ptychopinn.physics.losses import get_loss
from ptychopinn.reconstruction.network import predict_group_patches
from ptychopinn.training.optim import configure_optimization


def align_phase(
    patches: torch.Tensor, reference: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Rotate each patch by the global phase that best matches ``reference`` (weighted)."""
    return patches * phase_factors(patches, reference, weight)[..., None, None]


def align_scale(
    patches: torch.Tensor, reference: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Multiply each patch by the complex scalar (global phase and amplitude scale, the
    ambiguities of PHYSICS.md section 5) that best matches ``reference`` (weighted)."""
    num = (weight * reference * patches.conj()).sum(dim=(-2, -1), keepdim=True)
    den = (weight * patches.abs().square()).sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return patches * (num / den)


def patch_nrmse(patches: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Probe-weighted complex NRMSE per patch after removing each patch's global phase and
    amplitude scale (mean over patches)."""
    aligned = align_scale(patches, truth, weight)
    err = (weight * (aligned - truth).abs().square()).sum(dim=(-2, -1))
    ref = (weight * truth.abs().square()).sum(dim=(-2, -1)).clamp_min(1e-12)
    return (err / ref).sqrt().mean()


class PtychoPINN(L.LightningModule):
    """Generator (amplitudes -> complex patches) trained through the forward model.

    probes: (S, K, N, N) complex, one probe per scan slot (training scans, then the test scan);
    gains: (S,) initial gains; eps: Poisson epsilon in counts.
    Metric names: ``{loss}_train_loss`` / ``{loss}_val_loss`` (see ``train_loss_name``).
    """

    def __init__(
        self,
        model_config: ModelConfig,
        training_config: TrainingConfig,
        execution_config: ExecutionConfig,
        probes: torch.Tensor,
        gains,
        eps: float,
        monitor: str | None = None,
    ):
        super().__init__()
        self.model_config, self.training_config = model_config, training_config
        self.execution_config = execution_config
        self.generator = build_generator(model_config.generator, **model_config.generator_kwargs())
        probes = torch.as_tensor(probes).to(torch.complex64)
        self.register_buffer("probes", probes)
        self.register_buffer("weights", torch.stack([probe_weight(p) for p in probes]))
        self.register_buffer("init_gains", torch.as_tensor(gains, dtype=torch.float32))
        self.log_gain = nn.Parameter(
            torch.log(torch.as_tensor(gains, dtype=torch.float32)),
            requires_grad=model_config.trainable_gain,
        )
        self.eps = float(eps)
        self.loss_fn = get_loss(model_config.loss)
        self.monitor = monitor or self.val_loss_name

    # metric names -------------------------------------------------------------------------
    @property
    def train_loss_name(self) -> str:
        return f"{self.model_config.loss}_train_loss"

    @property
    def val_loss_name(self) -> str:
        return f"{self.model_config.loss}_val_loss"

    @property
    def logged_metric_names(self) -> list[str]:
        """Every metric this module logs (what a checkpoint monitor may name)."""
        names = [self.train_loss_name, self.val_loss_name, "val_patch_nrmse", "lr"]
        return names

    # model ------------------------------------------------------------------------------
    def forward(
        self,
        counts: torch.Tensor,
        offsets: torch.Tensor,
        scan: torch.Tensor,
        a0: torch.Tensor,
        estimate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, C, N, N) counts -> (B, C, N, N) complex patches (overlap-constrained)."""
        return predict_group_patches(
            self.generator,
            self.model_config,
            counts,
            a0.view(-1, 1, 1, 1),
            offsets,
            self.probes[scan][:, None],
            self.weights[scan][:, None],
            self.init_gains[scan],
            estimate,
        )

    def predicted_counts(self, patches: torch.Tensor, scan: torch.Tensor) -> torch.Tensor:
        probe = self.probes[scan][:, None]  # (B, 1, K, N, N)
        gain = self.log_gain.exp()[scan].view(-1, 1, 1, 1)
        return expected_counts(patches, probe, gain)

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        patches = self(
            batch["counts"], batch["offsets"], batch["scan"], batch["a0"], batch.get("estimate")
        )
        predicted = self.predicted_counts(patches, batch["scan"])
        bad = batch.get("bad_pixels")
        loss = self.loss_fn(
            batch["counts"],
            predicted,
            eps=self.eps,
            bad_pixels=bad if bad is not None and bool(bad.any()) else None,
        )
        name = self.train_loss_name if stage == "train" else self.val_loss_name
        bs = batch["counts"].shape[0]
        self.log(
            name, loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=bs, sync_dist=True
        )
        if "truth" in batch:
            w = self.weights[batch["scan"]][:, None]
            if stage == "train" and self.training_config.supervised_weight > 0:
                aligned = align_phase(patches, batch["truth"], w)
                sup = (w * (aligned - batch["truth"]).abs().square()).mean()
                loss = loss + self.training_config.supervised_weight * sup
            if stage == "val":
                with torch.no_grad():
                    err = patch_nrmse(patches, batch["truth"], w)
                self.log("val_patch_nrmse", err, on_epoch=True, batch_size=bs, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def on_train_epoch_start(self):
        opt = self.optimizers()
        opt = opt.optimizer if hasattr(opt, "optimizer") else opt
        self.log("lr", opt.param_groups[0]["lr"], on_step=False, on_epoch=True, sync_dist=True)

    def configure_optimizers(self):
        return configure_optimization(
            self.parameters(), self.execution_config, self.training_config.max_epochs, self.monitor
        )
