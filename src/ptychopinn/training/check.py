"""The end-of-training check: is the network better than its own input and than a flat object?

On the validation groups whose scans carry ground truth, three patch sets are compared with the
true patches by ``patch_nrmse`` (probe-weighted complex NRMSE after removing each patch's global
phase and amplitude scale): the network's output, the physics estimate it was given as input
(``model.physics_iterations`` > 0) and a flat object. A network that does not beat its input adds
nothing but time; ``fit`` warns and records the numbers in the bundle. Before the check,
:func:`select_correction` chooses how much of the learned correction of the estimate the bundled
network applies (1: as trained ... 0: the estimate itself), by the same criterion: on the
validation patterns the bundled network is never worse than its input.
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


#: the strengths of the learned correction tried by :func:`select_correction`, strongest first
CORRECTION_FACTORS = (1.0, 0.75, 0.5, 0.25, 0.0)


def select_correction(module, val_set, batch_size: int, factors=CORRECTION_FACTORS) -> dict | None:
    """Choose how much of the learned correction of the estimate to keep: the network's output is
    its input corrected by the head's output, which is linear in the head's weights, so scaling
    them by a factor in ``factors`` (1: as trained, 0: the estimate itself) gives a family of
    networks between the input and the trained one. Each is judged as :func:`network_check`
    judges the network (validation patch NRMSE against the truth) and the generator is left with
    the best factor (ties keep the stronger). ``{"factor", "patch_nrmse": {factor: value}}``;
    None when there is nothing to choose (no ground truth, or a generator without an estimate
    input)."""
    gen = module.generator
    if not getattr(gen, "estimate_input", False) or not hasattr(gen, "scale_correction"):
        return None
    trained = {k: v.detach().clone() for k, v in gen.state_dict().items()}
    scores = {}
    for f in factors:
        gen.load_state_dict(trained)
        gen.scale_correction(f)
        check = network_check(module, val_set, batch_size)
        if check is None:
            gen.load_state_dict(trained)
            return None
        scores[float(f)] = check["network"]
    best = min(scores, key=lambda f: (scores[f], -f))
    gen.load_state_dict(trained)
    gen.scale_correction(best)
    return {"factor": best, "patch_nrmse": {str(f): v for f, v in scores.items()}}


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
    factor = check.get("correction_scale")
    log.info(
        "validation patch NRMSE (%d groups): network %.4f%s, physics estimate %s, flat %.4f",
        check["groups"],
        check["network"],
        "" if factor is None else f" (correction at {factor:g}x)",
        "n/a" if est is None else f"{est:.4f}",
        check["flat"],
    )
    if factor is not None and factor < 1:
        log.warning(
            "the learned correction at full strength made the validation patches worse: the "
            "bundled network applies %s of it%s",
            f"{factor:g}x",
            " (0: it returns its physics-estimate input unchanged; train longer or on more "
            "varied data, or reconstruct by refinement: ptychopinn reconstruct)"
            if factor == 0
            else "",
        )
        if factor == 0:
            return
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
