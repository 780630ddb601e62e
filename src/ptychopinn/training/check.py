"""The end-of-training check: is the network better than its own input and than a flat object?

On the validation groups whose scans carry ground truth, three patch sets are compared with the
true patches by ``patch_nrmse`` (probe-weighted complex NRMSE after removing each patch's global
phase and amplitude scale): the network's output, the physics estimate it was given as input
(``model.physics_iterations`` > 0) and a flat object. A network that does not beat its input adds
nothing but time; ``fit`` warns and records the numbers in the bundle.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from ptychopinn.log import get_logger
from ptychopinn.training.module import patch_nrmse

log = get_logger("training")


def network_check(module, val_set, batch_size: int) -> dict | None:
    """``{"network", "estimate", "flat", "groups"}`` mean patch NRMSE over the validation groups
    (``estimate`` None without a physics estimate); None when there is no validation set or its
    groups carry no ground truth."""
    first = val_set[0] if val_set is not None and len(val_set) else {}
    if "truth" not in first:
        return None
    has_estimate = "estimate" in first
    device = module.device
    real = next(module.generator.parameters()).dtype  # float64 after 64-true training
    sums = {"network": 0.0, "estimate": 0.0, "flat": 0.0}
    groups = 0
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            # its own generator: iterating must not draw from the global RNG
            loader = DataLoader(
                val_set,
                batch_size=batch_size,
                shuffle=False,
                generator=torch.Generator().manual_seed(0),
            )
            for batch in loader:
                batch = {k: _like(v.to(device), real) for k, v in batch.items()}
                truth = batch["truth"]
                w = module.weights[batch["scan"]][:, None]
                b = truth.shape[0]
                patches = module(
                    batch["counts"],
                    batch["offsets"],
                    batch["scan"],
                    batch["a0"],
                    batch.get("estimate"),
                )
                sums["network"] += float(patch_nrmse(patches.to(truth.dtype), truth, w)) * b
                if has_estimate:
                    sums["estimate"] += float(patch_nrmse(batch["estimate"], truth, w)) * b
                sums["flat"] += float(patch_nrmse(torch.ones_like(truth), truth, w)) * b
                groups += b
    finally:
        module.train(was_training)
    return {
        "network": sums["network"] / groups,
        "estimate": sums["estimate"] / groups if has_estimate else None,
        "flat": sums["flat"] / groups,
        "groups": groups,
        "criterion": "patch NRMSE on validation groups (global phase and scale removed)",
    }


def _like(t: torch.Tensor, real: torch.dtype) -> torch.Tensor:
    """Floating tensors in the module's precision (complex ones in the matching complex type)."""
    if t.is_complex():
        return t.to(torch.complex128 if real == torch.float64 else torch.complex64)
    return t.to(real) if t.is_floating_point() else t


def report(check: dict | None) -> None:
    """Log the check; warn when the network is worse than its input or than a flat object."""
    if check is None:
        return
    est = check["estimate"]
    log.info(
        "validation patch NRMSE (%d groups): network %.4f, physics estimate %s, flat %.4f",
        check["groups"],
        check["network"],
        "n/a" if est is None else f"{est:.4f}",
        check["flat"],
    )
    if est is not None and check["network"] > est:
        log.warning(
            "the network is WORSE than its own physics-estimate input on the validation "
            "patterns (patch NRMSE %.4f > %.4f): it adds time, not quality; train longer or "
            "on more varied data, or reconstruct by refinement (ptychopinn reconstruct)",
            check["network"],
            est,
        )
    elif check["network"] > check["flat"]:
        log.warning(
            "the network is WORSE than a flat object on the validation patterns (patch "
            "NRMSE %.4f > %.4f)",
            check["network"],
            check["flat"],
        )


#: The real-space criterion that selects the bundled weights when validation has ground truth.
BEST_WEIGHTS_METRIC = "val_patch_nrmse"


class BestWeights(L.Callback):
    """A Lightning callback keeping a CPU copy of the generator's weights at the epoch with the
    lowest ``metric`` (validation patch NRMSE against ground truth; ``state``, ``epoch``,
    ``best``): ``fit`` bundles those weights, not the last epoch's. Its state is kept in
    Lightning checkpoints, so a resumed run remembers its best epoch."""

    def __init__(self, metric: str = BEST_WEIGHTS_METRIC):
        self.metric = metric
        self.best = None
        self.epoch = None
        self.state = None

    def state_dict(self):
        return {"best": self.best, "epoch": self.epoch, "state": self.state}

    def load_state_dict(self, state_dict):
        self.best, self.epoch, self.state = (
            state_dict["best"],
            state_dict["epoch"],
            state_dict["state"],
        )

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None or not bool(torch.isfinite(value)):
            return
        value = float(value)
        if self.best is None or value < self.best:
            self.best, self.epoch = value, int(trainer.current_epoch)
            self.state = {
                k: v.detach().cpu().clone() for k, v in pl_module.generator.state_dict().items()
            }
