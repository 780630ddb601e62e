"""Every plug-in registry (ptychopinn.registry.Registry): the registry's own rules, the copies of
its names that torch-free modules keep (config validation, CLI choices) agree with it, and a
contract each entry must pass."""

import math

import numpy as np
import pytest
import torch

from ptychopinn import config
from ptychopinn.data.objects import OBJECT_KINDS, PATTERNS
from ptychopinn.data.readers import READERS, formats
from ptychopinn.data.simulate import SCAN_PATTERNS
from ptychopinn.errors import ConfigError
from ptychopinn.models.registry import GENERATORS, build_generator
from ptychopinn.physics.losses import LOSSES
from ptychopinn.physics.probe import PROBES
from ptychopinn.registry import Registry
from ptychopinn.training.optim import OPTIMIZERS, SCHEDULERS, build_scheduler
from ptychopinn.training.trainer import LOGGERS, build_logger, mlflow_environment


def test_registry_refuses_duplicates_and_lists_names_for_an_unknown_one():
    reg = Registry("widget")

    @reg.register("a")
    def a():
        return 1

    reg.add("b", 2)
    assert reg["a"] is a and reg["b"] == 2 and list(reg) == ["a", "b"] and "a" in reg
    with pytest.raises(ValueError, match="widget 'a' registered twice"):
        reg.add("a", 3)
    with pytest.raises(
        ConfigError, match=r"widget: unknown name 'c'; expected one of \['a', 'b'\]"
    ):
        reg["c"]


def test_registry_imports_its_builtins_on_first_lookup():
    reg = Registry("codec", builtins="json")
    reg.add("x", 1)
    import sys

    assert "json" in sys.modules  # (already imported; the import itself must not fail)
    assert reg.names() == ["x"] and reg._builtins is None


def _cli_choices(command: str, flag: str) -> list:
    from ptychopinn.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    action = next(a for a in sub.choices[command]._actions if flag in a.option_strings)
    return list(action.choices)


def test_torch_free_copies_of_the_names_agree_with_the_registries():
    """config.py and the CLI parser must not import torch, so they keep the names; these must be
    exactly the registries' (a new entry registered without them would be refused by config)."""
    assert list(config.LOSS_NAMES) == LOSSES.names()
    assert list(config.OPTIMIZER_NAMES) == OPTIMIZERS.names()
    assert list(config.SCHEDULER_NAMES) == SCHEDULERS.names()
    assert list(config.LOGGER_NAMES) == LOGGERS.names()
    assert sorted(_cli_choices("simulate", "--probe")) == sorted(PROBES.names())
    assert _cli_choices("simulate", "--scan") == SCAN_PATTERNS.names()
    assert set(PATTERNS.names()) <= set(OBJECT_KINDS)
    assert _cli_choices("infer", "--data-format") == list(formats())
    assert formats() == ("auto", *READERS.names())


@pytest.mark.parametrize("name", GENERATORS.names())
def test_generator_contract(name):
    """(B, C, N, N) amplitudes -> (B, C, N, N) complex64 patches, differentiable, seeded."""
    torch.manual_seed(0)
    net = build_generator(name, n=16, channels=4)
    x = torch.rand(2, 4, 16, 16)
    out = net(x)
    assert out.shape == (2, 4, 16, 16) and out.dtype == torch.complex64
    out.abs().sum().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    torch.manual_seed(0)
    again = build_generator(name, n=16, channels=4)
    assert all(
        torch.equal(a, b)
        for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_contract(name):
    """A scalar that is lowest when the prediction equals the measurement (against half and
    twice it), with a finite gradient that vanishes there for the likelihood."""
    rng = np.random.default_rng(1)
    measured = torch.as_tensor(rng.poisson(20.0, size=(3, 8, 8)).astype(np.float32))
    loss = LOSSES[name]
    at = measured.clone().requires_grad_(True)
    value = loss(measured, at)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(at.grad).all()
    assert value < loss(measured, 2 * measured) and value < loss(measured, 0.5 * measured)
    if name == "poisson":  # d/dl (l - I log l) = 1 - I / l = 0 at l = I
        assert at.grad.abs().max() < 1e-5
    bad = torch.zeros(8, 8, dtype=torch.bool)
    bad[0, 0] = True
    masked = measured.clone()
    masked[:, 0, 0] = 1e6  # a hot pixel the mask excludes changes nothing
    assert torch.allclose(
        loss(masked, measured, bad_pixels=bad), loss(measured, measured, bad_pixels=bad)
    )


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_contract(name):
    """Built from the execution settings at their learning rate; steps lower a quadratic."""
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    e = config.ExecutionConfig(optimizer=name, learning_rate=0.1)
    opt = OPTIMIZERS[name]([w], e)
    assert isinstance(opt, torch.optim.Optimizer) and opt.param_groups[0]["lr"] == 0.1
    start = float((w.detach() ** 2).sum())
    for _ in range(5):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
    assert float((w.detach() ** 2).sum()) < start


@pytest.mark.parametrize("name", SCHEDULERS.names())
def test_scheduler_contract(name):
    """None (constant rate) or a torch scheduler whose rate stays finite, >= 0 (a cosine ends at
    its minimum, 0 by default) and at most the start over an epoch loop, and changes."""
    w = torch.nn.Parameter(torch.ones(1))
    extra = {"lr_milestones": (2, 4)} if name == "MultiStage" else {}
    e = config.ExecutionConfig(scheduler=name, learning_rate=0.01, **extra)
    opt = torch.optim.Adam([w], lr=0.01)
    sched = build_scheduler(name, opt, e, max_epochs=8)
    if sched is None:
        assert name == "Default"
        return
    rates = []
    for _ in range(8):
        opt.step()
        sched.step(1.0) if isinstance(
            sched, torch.optim.lr_scheduler.ReduceLROnPlateau
        ) else sched.step()
        lr = opt.param_groups[0]["lr"]
        assert math.isfinite(lr) and 0 <= lr <= 0.01 + 1e-12
        rates.append(lr)
    assert len(set(rates)) > 1 or name == "Adaptive"  # a plateau rule waits for its patience


@pytest.mark.parametrize("name", LOGGERS.names())
def test_logger_contract(name, tmp_path):
    """A Lightning logger writing under the output directory, or False for none."""
    from lightning.pytorch.loggers import Logger

    e = config.ExecutionConfig(logger=name)
    with mlflow_environment(e, tmp_path):
        logger = build_logger(e, tmp_path)
        if name == "none":
            assert logger is False
            return
        assert isinstance(logger, Logger)
        logger.log_metrics({"x": 1.0}, step=0)
        logger.finalize("success")
    assert any(p.is_file() for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("name", PROBES.names())
def test_probe_contract(name):
    """(N, N) complex64, finite, unit energy, the same for the same arguments."""
    p = PROBES[name](32, 12.0)
    assert p.shape == (32, 32) and p.dtype == np.complex64 and np.isfinite(p).all()
    assert float(np.sum(np.abs(p) ** 2)) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_array_equal(p, PROBES[name](32, 12.0))


@pytest.mark.parametrize("name", PATTERNS.names())
def test_object_pattern_contract(name):
    """An (H, W) map in [0, 1] with structure, reproducible from the generator's seed."""
    a = PATTERNS[name]((40, 48), np.random.default_rng(3))
    assert a.shape == (40, 48) and np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert a.std() > 0.05
    np.testing.assert_array_equal(a, PATTERNS[name]((40, 48), np.random.default_rng(3)))


@pytest.mark.parametrize("name", SCAN_PATTERNS.names())
def test_scan_pattern_contract(name):
    """(n, 2) positions whose typical neighbour spacing is the step, reproducible."""
    from scipy.spatial import cKDTree

    pos = SCAN_PATTERNS[name](200, 5.0, np.random.default_rng(4), 0.0)
    assert pos.shape == (200, 2) and np.isfinite(pos).all()
    d, _ = cKDTree(pos).query(pos, k=2)
    assert 0.3 * 5.0 < np.median(d[:, 1]) < 2.0 * 5.0
    np.testing.assert_array_equal(pos, SCAN_PATTERNS[name](200, 5.0, np.random.default_rng(4)))


@pytest.mark.parametrize("name", READERS.names())
def test_reader_contract(name, tmp_path):
    """A description for the help text; a text file is claimed by no reader (detection is by
    content: a wrong file gets the format list, not another reader's error)."""
    reader = READERS[name]
    assert reader.name == name and reader.description
    text = tmp_path / "notes.npz"
    text.write_text("not a scan")
    with open(text, "rb") as fh:
        head = fh.read(16)
    assert not reader.claims(text, head)


def _engine(name: str, scan):
    """An engine of each kind, set up for the tiny scan (the network: an untrained bundle, whose
    zero-initialised head returns its physics-estimate input)."""
    from ptychopinn.config import DataConfig, ModelConfig, TrainingConfig
    from ptychopinn.io.bundle import ModelBundle
    from ptychopinn.reconstruction.engine import ENGINES

    cls = ENGINES[name]
    if name == "network":
        mc = ModelConfig(n=scan.patch_size, gridsize=2, physics_iterations=10)
        torch.manual_seed(0)
        net = build_generator(mc.generator, **mc.generator_kwargs())
        bundle = ModelBundle(mc, DataConfig(), TrainingConfig(), net.state_dict(), scan.probe, {})
        return cls(bundle, batch_size=4)
    if name == "estimate":
        return cls(iterations=10, batch_size=4)
    return cls(epochs=6, refine_probe=False, stop_when_converged=False)


@pytest.mark.parametrize("name", ["network", "estimate", "gradient"])
def test_engine_contract(name, tiny_scan):
    """Every engine (reconstruction.engine.ENGINES): scan in, Reconstruction out (object on a
    canvas covering the scan, probe, positions, a history of its steps), progress reported after
    every step, a stop request honoured between steps, and an object closer to the truth than a
    flat one."""
    from ptychopinn.reconstruction.engine import ENGINES
    from ptychopinn.workflows import evaluate_against_truth

    assert set(ENGINES) == {"network", "estimate", "gradient"}
    steps = []
    recon = _engine(name, tiny_scan).run(tiny_scan, progress=lambda s, t, i: steps.append((s, t)))
    m, n = tiny_scan.n_patterns, tiny_scan.patch_size
    assert recon.object.dtype == np.complex64 and recon.object.ndim == 2
    assert min(recon.object.shape) >= n and recon.illumination.shape == recon.object.shape
    assert recon.positions_px.shape == (m, 2) and recon.probe.shape[-2:] == (n, n)
    history = recon.metadata["history"]
    assert [h["step"] for h in history] == [s for s, _ in steps] == list(range(1, len(steps) + 1))
    assert len(steps) >= 2 and all(t == steps[0][1] >= len(steps) for _, t in steps)
    metrics, _ = evaluate_against_truth(recon, tiny_scan)
    assert metrics["complex_nrmse"] < metrics["baseline_flat"]["complex_nrmse"]
    # stop is polled between steps: asking at once ends the run after one, with a usable result
    stopped = _engine(name, tiny_scan).run(tiny_scan, stop=lambda: True)
    assert len(stopped.metadata["history"]) == 1
    assert np.isfinite(stopped.object).all()
