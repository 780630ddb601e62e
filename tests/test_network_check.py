"""The end-of-training check (issue 12): the network against its physics-estimate input and a flat
object on validation patterns with ground truth, logged, warned about and kept in the bundle."""

import json
import logging
import zipfile

import pytest
import torch

from ptychopinn.config import DataConfig, ExecutionConfig, ModelConfig, TrainingConfig
from ptychopinn.data.simulate import SimulationConfig, simulate_scan
from ptychopinn.io.bundle import load_bundle
from ptychopinn.training.check import report
from ptychopinn.training.fit import fit


def _fit(train, test, tmp_path, epochs, **model):
    return fit(
        [train],
        test,
        model_config=ModelConfig(n=train.patch_size, **model),
        data_config=DataConfig(),
        training_config=TrainingConfig(max_epochs=epochs),
        execution_config=ExecutionConfig(
            logger="none", quiet=True, accelerator="cpu", enable_checkpointing=False, seed=0
        ),
        output_dir=tmp_path / "model",
    )


def test_the_check_is_measured_and_kept_in_the_bundle(tmp_path, tiny_scan):
    result = _fit(tiny_scan, None, tmp_path, 1)
    check = result.network_check
    assert check["groups"] >= 1 and check["estimate"] is not None
    # the physics estimate (20 projections of the data) is far better than a flat object: the
    # check measures real patches, not constants
    assert check["estimate"] < 0.8 * check["flat"]
    with zipfile.ZipFile(result.bundle_path) as zf:
        stored = json.loads(zf.read("execution.json"))["validation_check"]
    assert stored["network"] == pytest.approx(check["network"])
    assert load_bundle(result.bundle_path).execution["validation_check"]["flat"] == pytest.approx(
        check["flat"]
    )


def test_no_ground_truth_no_check(tmp_path, tiny_scan):
    from dataclasses import replace

    result = _fit(replace(tiny_scan, object_truth=None), None, tmp_path, 1)
    assert result.network_check is None
    assert result.bundle.execution["validation_check"] is None


def test_a_network_worse_than_its_input_is_warned_about(log_records):
    report({"network": 0.30, "estimate": 0.20, "flat": 0.9, "groups": 5})
    warned = [r for r in log_records if r.levelno == logging.WARNING]
    assert (
        len(warned) == 1 and "WORSE than its own physics-estimate input" in warned[0].getMessage()
    )
    log_records.clear()
    report({"network": 0.10, "estimate": 0.20, "flat": 0.9, "groups": 5})
    assert not [r for r in log_records if r.levelno == logging.WARNING]
    assert any("network 0.1000, physics estimate 0.2000" in r.getMessage() for r in log_records)


@pytest.mark.slow
def test_trained_network_is_not_worse_than_its_input_on_a_held_out_scan(tmp_path, torch_threads):
    """A held-out scan (other object, same probe family, 1e6 photons, N = 32) that the choice of
    the bundled weights did not see (it uses validation patterns of the training scan):
    stitched, the network's single pass is at least as close to the truth (complex NRMSE) as its
    physics-estimate input."""
    from ptychopinn.evaluation import evaluate_reconstruction
    from ptychopinn.reconstruction.estimate import EstimateEngine
    from ptychopinn.reconstruction.network import reconstruct

    cfg = dict(patch_size=32, n_positions=400, object_kind="natural", photons=1e6)
    train = simulate_scan(SimulationConfig(**cfg, seed=11))
    test = simulate_scan(SimulationConfig(**{**cfg, "n_positions": 196}, seed=12))
    with torch_threads(2):
        result = _fit(train, None, tmp_path, 8)
        net = reconstruct(result.bundle_path, test)
        est = EstimateEngine.for_model(result.bundle).run(test)
    nrmse = {
        name: evaluate_reconstruction(
            r.object, test.object_truth, offset_px=r.offset_px, illumination=r.illumination
        )["complex_nrmse"]
        for name, r in (("network", net), ("estimate", est))
    }
    assert nrmse["network"] <= nrmse["estimate"], nrmse
    # and the estimate is a real reconstruction, far from a flat object
    flat = evaluate_reconstruction(
        est.object, test.object_truth, offset_px=est.offset_px, illumination=est.illumination
    )["baseline_flat"]["complex_nrmse"]
    assert nrmse["estimate"] < 0.5 * flat


def test_validation_patterns_are_never_training_patterns(tiny_scan):
    """The held-out fraction is of patterns: validation groups are formed among held-out
    patterns only, so no validation group shares a pattern with a training group (a group
    split let gridsize-2 validation groups reuse training patterns)."""
    import numpy as np

    from ptychopinn.training.data import PtychoDataModule

    dm = PtychoDataModule([tiny_scan], gridsize=2, neighbors=4, val_fraction=0.25, seed=3)
    train = {int(i) for d in dm.train_set.datasets for i in d.groups.indices.ravel()}
    val = {int(i) for d in dm.val_set.datasets for i in d.groups.indices.ravel()}
    assert val and train and not (train & val)
    assert len(val) == round(0.25 * tiny_scan.n_patterns)
    # a contiguous block: every held-out pattern's nearest held-out neighbour is close
    pos = tiny_scan.positions_px[sorted(val)]
    d = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1)) + np.eye(len(pos)) * 1e9
    step = np.sqrt(((tiny_scan.positions_px[1:] - tiny_scan.positions_px[:-1]) ** 2).sum(-1)).min()
    assert d.min(axis=1).max() < 3 * max(step, 1.0)


def test_at_a_zero_head_the_constrained_output_is_the_estimate(tmp_path, tiny_scan):
    """With overlap_constraint "correction" (the default) only the network's change of its input
    is averaged over the group, so an identity network returns the estimate exactly; averaging
    the output patches ("patches") blurs the already consistent estimate at sub-pixel offsets."""
    from dataclasses import replace

    result = _fit(tiny_scan, None, tmp_path, 1)
    module = result.module
    with torch.no_grad():  # an identity network: a zero head (as at initialisation)
        module.generator.head.weight.zero_()
        module.generator.head.bias.zero_()
    batch = next(iter(torch.utils.data.DataLoader(result.trainer.datamodule.val_set, 8)))
    args = (batch["counts"], batch["offsets"], batch["scan"], batch["a0"], batch["estimate"])
    with torch.no_grad():
        same = module(*args)
        module.model_config = replace(module.model_config, overlap_constraint="patches")
        blurred = module(*args)
    est = batch["estimate"]
    assert (same - est).abs().max() < 1e-3 * est.abs().max()
    assert (blurred - est).abs().max() > 1e-2 * est.abs().max()
