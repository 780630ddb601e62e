"""Physics refinement: gradient steps on one scan's own Poisson likelihood (PHYSICS.md section 7).

Starting from the network's stitched object, or from a flat object (then this is a plain
automatic-differentiation iterative reconstruction), the object canvas is fitted to the scan's
measured counts with the package's forward model:

    lambda_m = g * sum_k |F(O(x_m + j) P_k(j))|^2          (PHYSICS.md section 2)

Speed comes from one exact rewrite. Position ``x_m = x0 + f`` (integer corner ``x0``, fraction
``f``). Shifting the exit wave by ``f`` only multiplies its Fourier transform by a phase ramp, so

    |F(O(x0 + f + j) P(j))| == |F(O(x0 + k) P(k - f))|

and the sub-pixel part can be folded into a shifted copy of the probe once at set-up: every
optimiser step is then an integer window gather, a product and an FFT. (The two sides agree to the
accuracy of Fourier interpolation, ~1e-4 relative for the package's probes; see the tests.)

Each step: a seeded, shuffled minibatch of patterns, the gain ``g`` in closed form (the Poisson
maximum-likelihood gain for the current object, ``sum I / sum S``), the Poisson NLL
(``ptychopinn.physics.losses.poisson_nll``, bad pixels excluded) and an update of the object by
Adam on its real and imaginary parts or by a preconditioned gradient step (the gradient divided by
the minibatch's probe illumination, like (r)PIE); without a prior both touch only the pixels of the
minibatch's windows (``LocalAdam``, ``_local_pgd_step``), so an epoch costs O(M). The probe can
be refined too (after a couple of epochs, by a step preconditioned by the object's intensity,
like ePIE, or Adam; after every epoch the two ambiguities of joint retrieval, a phase ramp and a
translation traded between object and probe, are pinned without changing any modelled
intensity). Scan positions can be corrected too (``correct_positions``: each pattern's shift is
differentiated through the Fourier-shifted probe; affine first, then per pattern; errors of
several pixels first by a coarse grid search of each pattern's likelihood, ``position_search_px``).
Optionally a Gaussian prior centred on the start turns the fit into a MAP estimate that keeps a
good start where the data are noisy. Pixels lit below ~1% of the peak illumination are reset to
their starting values before returning, because nothing constrains them.

Pure torch; no Lightning. ``refine`` is the one entry point; ``Refiner`` exposes the per-epoch loop
for benchmarks that watch quality over time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ptychopinn.config import (
    POSITION_AFFINE_EPOCHS,
    POSITION_GROW_BLOCK,
    POSITION_GROW_EPOCHS,
    POSITION_GROW_SEED,
    POSITION_GROW_STAGES,
    POSITION_RESCUE_CYCLES,
    POSITION_RESCUE_INTERVAL,
    POSITION_SEARCH_INTERVAL,
    POSITION_SEARCH_MODES,
    POSITION_SEARCH_ROUNDS,
    POSITION_START_EPOCH,
    POSITION_STEP_PX,
    REFINE_OPTIMIZERS,
    REFINE_SCHEDULES,
)
from ptychopinn.errors import PtychoPINNError
from ptychopinn.log import get_logger
from ptychopinn.physics.forward import diffraction_intensity, intensity
from ptychopinn.physics.losses import poisson_nll
from ptychopinn.physics.shifts import canvas_geometry, fourier_shift
from ptychopinn.reconstruction.engine import ENGINES

log = get_logger("refinement")

OPTIMIZERS = REFINE_OPTIMIZERS
#: "plateau": halve the object step when the epoch loss has not improved on its best for
#: ``patience`` epochs (a constant Adam step leaves the object noisy and the loss rising again,
#: measured); "constant": never change it.
SCHEDULES = REFINE_SCHEDULES
#: Default optimiser: from a flat start the preconditioned gradient step (Adam's per-pixel
#: normalisation slows the low spatial frequencies of the phase: on an independently simulated
#: Gaussian-probe scan it stalled at phase SSIM 0.82 where PGD reached 0.92, measured); from a
#: given object (the network's) Adam with a small step (measured in benchmarks/quality.py).
DEFAULT_OPTIMIZER = {"flat": "pgd", "object": "adam"}
#: Plateau-test window (epochs) by start: long from flat (slow low-frequency convergence hides
#: in minibatch noise over short windows), short from a good start.
DEFAULT_PATIENCE = {"flat": 20, "object": 3}
#: Shortest window (epochs) of the plateau test.
PLATEAU_MIN_WINDOW = 3
#: ``refine`` stops early once the plateau schedule has cut the step below this fraction of its
#: start (about 6 halvings: quality had stopped changing by then in every benchmark case).
CONVERGED_LR_FRACTION = 0.02
#: Default step per optimiser from a flat start: Adam lr on real/imag parts (object ~1), or the
#: preconditioned gradient step (1 = move each pixel to the illumination-weighted mean of the
#: minibatch's modulus-projection corrections). Measured on 441-pattern N=64 scans.
DEFAULT_LR = {"adam": 3e-2, "pgd": 0.5}
#: Defaults from a given starting object (e.g. the network's): Adam's first steps move every
#: pixel by about lr whatever its gradient, so a good start is damaged by 3e-2 (measured).
DEFAULT_LR_FROM_OBJECT = {"adam": 1e-2, "pgd": 0.5}
#: Probe step per probe optimiser (Adam lr for a probe of peak amplitude 1, or the PGD step).
DEFAULT_PROBE_LR = {"adam": 3e-3, "pgd": 1.0}
#: Pixels lit below this fraction of the peak illumination are reset before returning.
LIT_FRACTION = 0.01
# Position-correction defaults live in ptychopinn.config (the CLI reads them without torch).
#: Folded probes are cached for the whole scan when they take at most this many bytes;
#: otherwise they are recomputed per minibatch (one extra FFT per pattern).
FOLD_CACHE_BYTES = 512 * 2**20
#: The coarse position search tries at most (2 * this + 1)^2 grid shifts per pattern, then every
#: whole-pixel shift between the grid points around the best; and it evaluates about this many
#: bytes of candidate exit waves at a time.
SEARCH_GRID_HALF = 6
SEARCH_BYTES = 64 * 2**20
#: Lost patterns (``Refiner.flag_outliers``): the deviance of a pattern's fit above the scan's
#: median by more than this many robust standard deviations (1.4826 MAD). Measured on an
#: independently simulated scan after correcting 10 px rms errors: 57 flagged, 52 of the 53
#: patterns then more than 2 px off, and none of the 447 within 2 px.
OUTLIER_MADS = 5.0
#: A lost pattern is searched again around its position as given within this factor times the
#: search radius, and around its current position within the radius.
OUTLIER_RADIUS_FACTOR = 1.5
#: Mode "grow": a joining pattern starts from the mean correction of this many nearest placed
#: patterns.
GROW_NEIGHBOURS = 4


@dataclass
class RefineResult:
    """Outcome of ``refine``.

    Attributes:
        object: (H, W) complex64 object on the canvas; canvas pixel = object pixel + offset_px.
        offset_px: (2,) float64 (x, y) offset of the canvas from the scan's position frame.
        probe: (K, N, N) complex64 probe (refined if asked, else the scan's).
        gain: intensity gain g with ``counts = g * sum_k |F(O P_k)|^2`` for this object and probe.
        losses: mean Poisson NLL (per good pixel, constant lgamma(I+1) dropped) of each epoch.
        illumination: (H, W) float32 sum over positions of the probe intensity sum_k |P_k|^2
            (the scanned-region map; with the probe scale of ``probe``).
        seconds: wall time of the optimisation (set-up included).
        epoch_seconds: cumulative wall time at the end of each epoch.
        positions_px: (M, 2) corrected positions (x, y) in the scan's frame when positions were
            corrected, else None (the scan's own).
    """

    object: np.ndarray
    offset_px: np.ndarray
    probe: np.ndarray
    gain: float
    losses: list = field(default_factory=list)
    illumination: np.ndarray | None = None
    seconds: float = 0.0
    epoch_seconds: list = field(default_factory=list)
    positions_px: np.ndarray | None = None

    @property
    def lit_mask(self) -> np.ndarray:
        """(H, W) bool: pixels lit at >= 1% of the peak illumination (the trusted region)."""
        return self.illumination >= LIT_FRACTION * float(self.illumination.max())


@dataclass(frozen=True)
class PositionSearchPlan:
    """The epochs (counting from 0; an event happens before that epoch's pass) of the
    position-finding phase: ``search`` maps each search round's epoch to its radius (halved each
    round); ``grow`` (mode "grow") maps the epoch at which each block of patterns joins the
    object to the block's index, and at ``grow_end`` every pattern takes part again; at each
    ``flag`` epoch the patterns that the object does not explain are left out of it, and at the
    next ``rescue`` epoch they are searched again; the gradient correction starts at
    ``gradient_start``; at ``phase_epochs`` the object restarts from the found positions (0: no
    phase)."""

    search: dict
    flag: list
    rescue: list
    phase_epochs: int
    grow: dict = field(default_factory=dict)
    grow_end: int = 0
    gradient_start: int = 0


def grow_blocks(n_patterns: int) -> tuple[int, int]:
    """(seed size, number of blocks) of the "grow" search mode for a scan of ``n_patterns``: a
    seed of POSITION_GROW_SEED patterns (more when the blocks would otherwise exceed
    POSITION_GROW_STAGES), the rest in blocks of about POSITION_GROW_BLOCK patterns, at most
    POSITION_GROW_STAGES of them (so the phase's cost stays a fixed number of epochs)."""
    m = int(n_patterns)
    seed = min(m, max(POSITION_GROW_SEED, m // (POSITION_GROW_STAGES + 1)))
    blocks = min(POSITION_GROW_STAGES, math.ceil((m - seed) / POSITION_GROW_BLOCK))
    return seed, blocks


def position_search_plan(
    correct_positions: bool,
    search_px: float,
    rounds: int = POSITION_SEARCH_ROUNDS,
    start_epoch: int = POSITION_START_EPOCH,
    mode: str = "global",
    n_patterns: int = 0,
) -> PositionSearchPlan:
    """The position-finding phase of ``refine``'s position settings (none without
    ``correct_positions`` or with a search radius ``search_px`` of 0): ``rounds``
    searches POSITION_SEARCH_INTERVAL epochs apart (of every pattern, or in mode "grow" of the
    seed's), in mode "grow" then the seed's POSITION_SEARCH_INTERVAL epochs and one block of
    ``n_patterns`` (``grow_blocks``) every POSITION_GROW_EPOCHS epochs, the gradient correction
    ``start_epoch`` epochs after the last search (or the last block's epochs),
    POSITION_RESCUE_CYCLES rescue cycles of POSITION_RESCUE_INTERVAL epochs, then the restart
    (earlier, at the first cycle that finds no lost pattern: the phase's length here is its
    longest). ``refine`` runs its ``epochs`` after this phase."""
    _check_choice("position_search_mode", mode, POSITION_SEARCH_MODES)
    if not (correct_positions and search_px > 0):
        return PositionSearchPlan({}, [], [], 0)
    search = {
        POSITION_SEARCH_INTERVAL * (r + 1): max(1.0, search_px / 2**r) for r in range(int(rounds))
    }
    placed = POSITION_SEARCH_INTERVAL * int(rounds)  # the last search (and restart)
    grow, grow_end = {}, 0
    if mode == "grow":
        first = placed + POSITION_SEARCH_INTERVAL  # the seed's object, rebuilt from its search
        grow = {first + POSITION_GROW_EPOCHS * b: b for b in range(grow_blocks(n_patterns)[1])}
        grow_end = placed = first + POSITION_GROW_EPOCHS * len(grow)
    start = placed + int(start_epoch)
    half = POSITION_RESCUE_INTERVAL // 2
    flag = [start + half + POSITION_RESCUE_INTERVAL * c for c in range(POSITION_RESCUE_CYCLES)]
    rescue = [e + half for e in flag]
    end = rescue[-1] if rescue else start
    return PositionSearchPlan(search, flag, rescue, end, grow, grow_end, start)


def _check_choice(name, value, choices):
    if value not in choices:
        raise PtychoPINNError(f"{name}: unknown value {value!r}; expected one of {list(choices)}")


def _canvas_from_initial(initial_object, offset_px, positions, n: int):
    """Canvas (complex128 numpy) and offset for a given starting object, padded with 1 if the
    scan reaches beyond it."""
    obj = np.asarray(initial_object)
    if obj.ndim != 2:
        raise PtychoPINNError(f"initial_object: expected a 2-D (H, W) array, got shape {obj.shape}")
    if not np.isfinite(obj).all():
        raise PtychoPINNError("initial_object: contains NaN/inf values")
    offset = np.zeros(2) if offset_px is None else np.asarray(offset_px, np.float64).reshape(-1)
    if offset.shape != (2,) or not np.isfinite(offset).all():
        raise PtychoPINNError(f"offset_px: expected two finite numbers (x, y), got {offset_px!r}")
    canvas = obj.astype(np.complex128)
    corner = np.floor(positions + offset) - n // 2  # (M, 2) x, y of each window's first pixel
    h, w = canvas.shape
    left = int(max(0, -corner[:, 0].min()))
    top = int(max(0, -corner[:, 1].min()))
    right = int(max(0, corner[:, 0].max() + n - w))
    bottom = int(max(0, corner[:, 1].max() + n - h))
    if left or top or right or bottom:
        canvas = np.pad(canvas, ((top, bottom), (left, right)), constant_values=1.0)
        offset = offset + np.array([left, top], dtype=np.float64)
    return canvas, offset


def intensity_centroid_xy(probe: torch.Tensor) -> torch.Tensor:
    """(x, y) pixel centroid of the total intensity of a (K, N, N) probe."""
    inten = probe.abs().square().sum(0)
    ar = torch.arange(inten.shape[-1], device=inten.device, dtype=inten.dtype)
    return torch.stack([(inten.sum(0) * ar).sum(), (inten.sum(1) * ar).sum()]) / inten.sum()


class PixelSums:
    """Per-pixel sums over the distinct canvas pixels that a minibatch's windows cover, in
    O(batch): no sort (``torch.unique`` costs 8 ms at 65k entries) and no canvas-wide pass.
    Holds canvas-sized scratch (one int32 per pixel, and one zero buffer per value dtype)."""

    def __init__(self, size: int, device):
        self.size = size
        self.device = device
        self.owner = torch.zeros(size, dtype=torch.int32, device=device)
        self._zero: dict[torch.dtype, torch.Tensor] = {}  # zero between calls

    def distinct(self, flat: torch.Tensor) -> torch.Tensor:
        """The distinct entries of ``flat``: each pixel records one of the elements that name
        it, and the elements it recorded are the pixel's representatives."""
        element = torch.arange(len(flat), dtype=torch.int32, device=flat.device)
        self.owner[flat] = element
        return flat[self.owner[flat] == element]

    def sums(self, flat: torch.Tensor, values: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """(len(pixels),) sums of ``values`` (one per entry of ``flat``) at each of ``pixels``
        (``distinct(flat)``)."""
        buf = self._zero.get(values.dtype)
        if buf is None:
            buf = self._zero[values.dtype] = torch.zeros(
                self.size, dtype=values.dtype, device=self.device
            )
        buf.index_add_(0, flat, values.reshape(-1))
        out = buf[pixels]
        buf[pixels] = 0
        return out


class LocalAdam:
    """Adam on the pixels a minibatch's windows cover (the "lazy" form of Adam): the first and
    second moments and the bias correction advance only where the minibatch's gradient is, each
    pixel with its own step count, so a step costs the minibatch's pixels, not the canvas's
    (measured on a 3,615^2 canvas, 64 windows of 64^2, one thread: 65 ms per step against 734 ms
    for ``torch.optim.Adam``).

    Dense ``torch.optim.Adam`` differs for pixels outside the minibatch: it decays their moments
    and keeps moving them by the decaying momentum; each pixel here is an Adam of its own visits.
    The moments of the real and imaginary parts are separate, as ``torch.optim.Adam`` keeps them
    for a complex parameter. ``param_groups`` mirrors torch's so the schedule can set ``lr``.
    ``pixels``: the ``PixelSums`` to use (its scratch shared with the caller), default its own.
    """

    def __init__(
        self,
        obj: torch.Tensor,
        lr: float,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        pixels: PixelSums | None = None,
    ):
        self.obj = obj
        self.param_groups = [{"lr": float(lr)}]
        self.betas = betas
        self.eps = eps
        size, dev = obj.numel(), obj.device
        # per pixel: first moment (re, im), second moment (re^2, im^2), step count; one gather
        # and one scatter per step
        self.state = torch.zeros(size, 5, device=dev)
        self.pixels = pixels or PixelSums(size, dev)

    def zero_grad(self, set_to_none: bool = True):
        self.obj.grad = None

    def step_windows(self, window_grad: torch.Tensor, win_idx: torch.Tensor):
        """One step from ``window_grad`` (B, N, N), the gradient of the windows at the flat canvas
        indices ``win_idx`` (B, N, N); overlapping windows' gradients are summed per pixel."""
        b1, b2 = self.betas
        flat = win_idx.reshape(-1)
        uniq = self.pixels.distinct(flat)
        g = torch.view_as_real(self.pixels.sums(flat, window_grad, uniq))  # (U, 2)
        st = self.state[uniq]
        m, v, t = st[:, 0:2], st[:, 2:4], st[:, 4:5]
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        t.add_(1)
        self.state[uniq] = st
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        delta = m_hat.div_(v_hat.sqrt_().add_(self.eps)).mul_(-self.param_groups[0]["lr"])
        self.obj.view(-1).index_add_(0, uniq, torch.view_as_complex(delta))


class Refiner:
    """The refinement loop, one epoch at a time (``refine`` wraps it).

    Args as for ``refine``. ``run_epoch()`` performs one pass over the scan and returns its mean
    Poisson NLL; ``current_object()`` returns the canvas as it stands (no masking);
    ``result()`` builds the ``RefineResult``.
    """

    def __init__(
        self,
        scan,
        initial_object=None,
        offset_px=None,
        *,
        batch_size: int = 64,
        optimizer: str | None = None,
        lr: float | None = None,
        refine_probe: bool = False,
        probe_start_epoch: int = 2,
        probe_optimizer: str = "pgd",
        probe_lr: float | None = None,
        pgd_regularization: float = 0.05,
        schedule: str = "plateau",
        patience: int | None = None,
        decay: float = 0.5,
        prior_sigma: float | None = None,
        seed: int = 0,
        device="cpu",
        fix_gauge: bool = True,
        correct_positions: bool = False,
        position_start_epoch: int = POSITION_START_EPOCH,
        position_step_px: float = POSITION_STEP_PX,
        position_affine_epochs: int = POSITION_AFFINE_EPOCHS,
        position_search_px: float = 0.0,
        position_search_rounds: int = POSITION_SEARCH_ROUNDS,
        position_search_mode: str = "global",
        object_start_epoch: int = 0,
    ):
        t0 = time.perf_counter()
        flat = initial_object is None
        if optimizer is None:
            optimizer = DEFAULT_OPTIMIZER["flat" if flat else "object"]
        if patience is None:
            patience = DEFAULT_PATIENCE["flat" if flat else "object"]
        _check_choice("optimizer", optimizer, OPTIMIZERS)
        _check_choice("schedule", schedule, SCHEDULES)
        if int(patience) < 1:
            raise PtychoPINNError(f"patience: {patience!r} must be >= 1 epoch")
        if int(batch_size) < 1:
            raise PtychoPINNError(f"batch_size: {batch_size!r} must be >= 1")
        if lr is not None and not (lr > 0 and math.isfinite(lr)):
            raise PtychoPINNError(f"lr: {lr!r} must be a finite number > 0")
        _check_choice("probe_optimizer", probe_optimizer, OPTIMIZERS)
        if probe_lr is None:
            probe_lr = DEFAULT_PROBE_LR[probe_optimizer]
        if not (probe_lr > 0 and math.isfinite(probe_lr)):
            raise PtychoPINNError(f"probe_lr: {probe_lr!r} must be a finite number > 0")
        self.probe_optimizer = probe_optimizer
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.optimizer_name = optimizer
        defaults = DEFAULT_LR if initial_object is None else DEFAULT_LR_FROM_OBJECT
        self.lr = float(lr) if lr is not None else defaults[optimizer]
        self.refine_probe = bool(refine_probe)
        self.probe_start_epoch = int(probe_start_epoch)
        if int(object_start_epoch) < 0:
            raise PtychoPINNError(f"object_start_epoch: {object_start_epoch!r} must be >= 0")
        self.object_start_epoch = int(object_start_epoch)
        self.held_translation = np.zeros(2)  # mean correction found against a held object
        self.probe_lr = float(probe_lr)
        self.pgd_regularization = float(pgd_regularization)
        self.schedule = schedule
        self.patience = int(patience)
        self.decay = float(decay)
        self.window_start = 0
        self.lr0 = self.lr
        if prior_sigma is not None and not (prior_sigma > 0 and math.isfinite(prior_sigma)):
            raise PtychoPINNError(f"prior_sigma: {prior_sigma!r} must be a finite number > 0")
        self.prior_sigma = prior_sigma
        self.generator = torch.Generator().manual_seed(int(seed))
        self.epoch = 0
        self.losses: list[float] = []
        self.epoch_seconds: list[float] = []

        n = scan.patch_size
        self.n = n
        self.m = scan.n_patterns
        positions = np.asarray(scan.positions_px, dtype=np.float64)
        if not (position_search_px >= 0 and math.isfinite(position_search_px)):
            raise PtychoPINNError(
                f"position_search_px: {position_search_px!r} must be a finite number >= 0"
            )
        if int(position_search_rounds) < 1:
            raise PtychoPINNError(
                f"position_search_rounds: {position_search_rounds!r} must be >= 1"
            )
        # searched positions may leave the scanned area by up to the radius: room on the canvas
        search_margin = int(math.ceil(position_search_px)) if correct_positions else 0
        if initial_object is None:
            truth_shape = None if scan.object_truth is None else scan.object_truth.shape
            shape, offset = canvas_geometry(
                positions, n, object_shape=truth_shape, margin=search_margin
            )
            canvas = np.ones(shape, dtype=np.complex128)
        else:
            canvas, offset = _canvas_from_initial(initial_object, offset_px, positions, n)
        self.offset_px = np.asarray(offset, dtype=np.float64)
        self.shape = canvas.shape
        dev = self.device
        self.initial = torch.as_tensor(canvas, dtype=torch.complex64, device=dev)
        self.obj = self.initial.clone().requires_grad_(True)

        # Integer window corners and sub-pixel fractions in canvas pixels.
        h, w = self.shape
        ar = torch.arange(n, device=dev)
        self.grid = ar[:, None] * w + ar[None, :]
        self.nominal_c = positions + self.offset_px  # (M, 2) canvas positions as given
        self._set_positions(self.nominal_c)
        if int(position_start_epoch) < 0 or int(position_affine_epochs) < 0:
            raise PtychoPINNError("position_start_epoch and position_affine_epochs must be >= 0")
        if not (position_step_px > 0 and math.isfinite(position_step_px)):
            raise PtychoPINNError(
                f"position_step_px: {position_step_px!r} must be a finite number > 0"
            )
        self.correct_positions = bool(correct_positions)
        self.position_start_epoch = int(position_start_epoch)
        self.position_step_px = float(position_step_px)
        self.position_affine_epochs = int(position_affine_epochs)
        self.position_search_px = float(position_search_px)
        _check_choice("position_search_mode", position_search_mode, POSITION_SEARCH_MODES)
        self.position_search_mode = position_search_mode
        self.positions_active = False
        self.delta = None  # (M, 2) (x, y) correction within the current epoch
        self.excluded = None  # (M,) bool: patterns left out of the object's updates
        self._schedule_positions(int(position_search_rounds))

        # Probe normalised to peak total intensity 1; its scale lives in the gain.
        self.scan_probe = np.asarray(scan.probe, dtype=np.complex64)
        probe = torch.as_tensor(self.scan_probe, device=dev)
        self.probe_scale = float(probe.abs().square().sum(0).max().sqrt())
        self.probe = (probe / self.probe_scale).clone()
        self.probe_energy = float(self.probe.abs().square().sum())
        self.fix_gauge = bool(fix_gauge)
        self._lit = None
        self.probe_centroid = intensity_centroid_xy(self.probe)
        self.k = self.probe.shape[0]
        fold_bytes = self.m * self.k * n * n * 8
        self.folded = None
        if not self.refine_probe and fold_bytes <= FOLD_CACHE_BYTES:
            self.folded = torch.empty((self.m, self.k, n, n), dtype=torch.complex64, device=dev)
            self._fill_folded()

        # The scan's counts as they are (centred; no copy on the CPU), shifted to FFT order one
        # minibatch at a time; bad pixels in FFT order once.
        self.counts = torch.as_tensor(np.asarray(scan.diffraction), dtype=torch.float32, device=dev)
        self.bad = None
        if scan.bad_pixels is not None and bool(np.any(scan.bad_pixels)):
            bad = torch.as_tensor(np.asarray(scan.bad_pixels), dtype=torch.bool, device=dev)
            self.bad = torch.fft.ifftshift(bad, dim=(-2, -1)).contiguous()
        good = torch.ones(n, n, device=dev) if self.bad is None else (~self.bad).float()
        self.good = good
        self.n_good = float(good.sum())
        # PHYSICS.md eps: 1e-6 of the mean count over good pixels (a hot pixel must not set it)
        # (M,) good-pixel totals, a chunk at a time (no masked copy of the scan)
        good_centred = torch.fft.fftshift(good, dim=(-2, -1))
        self.pattern_counts = torch.cat(
            [(c * good_centred).sum(dim=(-2, -1)) for c in self.counts.split(4096)]
        )
        mean_good = float(self.pattern_counts.sum()) / (self.n_good * self.m)
        self.eps = max(1e-6 * mean_good, 1e-12)
        self.gain = None  # internal gain for the normalised probe

        self._pixels = None  # PixelSums of the local steps, made on first use
        self.opt = None  # created on the first epoch (importing torch.optim costs seconds once)
        self.probe_opt = None
        self.probe_active = False
        self.setup_seconds = time.perf_counter() - t0
        self.elapsed = self.setup_seconds

    # ----------------------------------------------------------------------------------------
    def _set_positions(self, pos_c: np.ndarray) -> None:
        """Integer window corners and sub-pixel fractions for canvas positions ``pos_c`` (M, 2),
        (x, y); positions are kept where their windows fit on the canvas."""
        n = self.n
        h, w = self.shape
        pos_c = np.asarray(pos_c, dtype=np.float64).copy()
        # window corner floor(p) - n//2 must lie in [0, size - n]
        pos_c[:, 0] = np.clip(pos_c[:, 0], n // 2, w - n + n // 2 + 1 - 1e-9)
        pos_c[:, 1] = np.clip(pos_c[:, 1], n // 2, h - n + n // 2 + 1 - 1e-9)
        self.positions_c = pos_c
        floor = np.floor(pos_c)
        frac = pos_c - floor
        self.corner_xy = floor.astype(np.int64) - n // 2  # (M, 2) first pixel of each window
        base = self.corner_xy[:, 1] * w + self.corner_xy[:, 0]
        self.base = torch.as_tensor(base, device=self.device)
        # shifting the probe by +f makes the window start at the integer corner
        self.frac_xy = torch.as_tensor(frac, dtype=torch.float32, device=self.device)

    def _fold(self, probe: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(B, K, N, N) probes shifted by each pattern's sub-pixel fraction (plus, while positions
        are corrected, the pattern's correction within the current epoch, differentiably)."""
        shift = self.frac_xy[idx]
        if self.positions_active:
            shift = shift + self.delta[idx]
        return fourier_shift(probe[None], shift[:, None, :])

    def _fill_folded(self) -> None:
        """Fold the cached probes for the current positions, a piece at a time (the Fourier
        shift's temporaries stay a piece's size)."""
        for s in range(0, self.m, 4096):
            idx = torch.arange(s, min(s + 4096, self.m), device=self.device)
            self.folded[s : s + 4096] = self._fold(self.probe, idx)

    def _probes(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, K, N, N) folded probes of the patterns ``idx`` (cached, or folded now)."""
        return self.folded[idx] if self.folded is not None else self._fold(self.probe, idx)

    def _windows(self, idx: torch.Tensor) -> torch.Tensor:
        return self.base[idx][:, None, None] + self.grid  # (B, N, N) flat canvas indices

    def _intensity(self, obj_windows: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
        """The forward model's fast path: integer windows (B, N, N) x folded probes (B, K, N, N)
        -> (B, N, N) intensity with the zero frequency at pixel 0 (counts are ifftshifted to
        match)."""
        return diffraction_intensity(obj_windows, probes, centred=False)

    def _good_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values.sum() if self.bad is None else (values * self.good).sum()

    def _closed_form_gain(self, idx, intensity) -> torch.Tensor:
        """Poisson ML gain for the minibatch ``idx``: sum of counts / sum of model intensity."""
        return self.pattern_counts[idx].sum() / self._good_sum(intensity.detach()).clamp_min(1e-30)

    def illumination(self) -> torch.Tensor:
        """(H, W) sum over positions of the (normalised) probe intensity, from the folded probes."""
        h, w = self.shape
        total = torch.zeros(h * w, device=self.device)
        with torch.no_grad():
            for s in range(0, self.m, 256):
                idx = torch.arange(s, min(s + 256, self.m), device=self.device)
                probes = self._probes(idx)
                inten = probes.abs().square().sum(1)
                total.index_add_(0, self._windows(idx).reshape(-1), inten.reshape(-1))
        return total.reshape(h, w)

    def _prior_term(self) -> torch.Tensor:
        """Negative log of a Gaussian prior centred on the start (standard deviation ``sigma`` per
        real and imaginary part of each pixel), ``sum |O - O_start|^2 / (2 sigma^2)``, in the
        units of the minibatch's mean NLL (divided by good pixels per pattern times M): its weight
        against the data does not depend on the batch size, and the data win as photons grow."""
        diff = torch.view_as_real(self.obj - self.initial)
        return diff.square().sum() / (2.0 * self.prior_sigma**2 * self.n_good * self.m)

    def _start_probe_refinement(self):
        self.probe = self.probe.detach().clone().requires_grad_(True)
        self.probe_active = True
        if self.probe_optimizer == "adam":
            self.probe_opt = torch.optim.Adam([self.probe], lr=self.probe_lr)
        self.folded = None

    def run_epoch(self) -> float:
        """One pass over the scan in seeded shuffled minibatches; returns the mean Poisson NLL."""
        t0 = time.perf_counter()
        if self.optimizer_name == "adam" and self.opt is None:
            # without a prior the gradient lives on the minibatch's windows: Adam's moments are
            # updated there only (per-pixel step counts); a prior's gradient is canvas-wide
            self.opt = (
                torch.optim.Adam([self.obj], lr=self.lr)
                if self.prior_sigma is not None
                else LocalAdam(self.obj, lr=self.lr, pixels=self.pixels)
            )
        if self.refine_probe and not self.probe_active and self.epoch >= self.probe_start_epoch:
            self._start_probe_refinement()
        self._position_events()
        if (
            self.correct_positions
            and self.epoch >= self.gradient_start_epoch
            and self.epoch >= self.position_hold_until
        ):
            self.positions_active = True
            self.folded = None
            self.delta = torch.zeros(self.m, 2, device=self.device, requires_grad=True)
        order = torch.randperm(self.m, generator=self.generator)
        if self.excluded is not None:
            order = order[~torch.as_tensor(self.excluded)[order]]
        order = order.to(self.device)
        # Without a prior, PGD and Adam touch only the pixels of each minibatch's windows: cost
        # per step is the minibatch's, not the canvas's (a canvas-wide step made an epoch
        # O(M^2): measured t(64k) / t(16k) = 16 for 5 epochs of PGD at N = 32).
        local = self.prior_sigma is None
        move_object = self.epoch >= self.object_start_epoch
        # accumulated on the device: one host sync per epoch, not per step
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        total, count_sum, inten_sum = zero.clone(), zero.clone(), zero.clone()
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            counts = torch.fft.ifftshift(self.counts[idx], dim=(-2, -1))
            probes = self._probes(idx)
            win_idx = self._windows(idx)
            if local:  # the gradient of the minibatch's own windows, not of the whole canvas
                windows = torch.take(self.obj.detach(), win_idx).requires_grad_(True)
            else:
                windows = torch.take(self.obj, win_idx)
            intensity = self._intensity(windows, probes)
            gain = self._closed_form_gain(idx, intensity)
            loss = poisson_nll(counts, gain * intensity, bad_pixels=self.bad, eps=self.eps)
            objective = loss
            if self.prior_sigma is not None:
                objective = loss + self._prior_term()
            if self.opt is not None:
                self.opt.zero_grad(set_to_none=True)
            else:
                self.obj.grad = None
            if self.probe_opt is not None:
                self.probe_opt.zero_grad(set_to_none=True)
            elif self.probe_active:
                self.probe.grad = None
            if self.positions_active:
                self.delta.grad = None
            objective.backward()
            with torch.no_grad():
                if not move_object:
                    pass  # the object held (object_start_epoch): probe and positions only
                elif local and self.opt is not None:
                    self.opt.step_windows(windows.grad, win_idx)
                elif self.opt is not None:
                    self.opt.step()
                elif local:
                    self._local_pgd_step(windows.grad, probes, win_idx, gain, len(idx))
                else:
                    self._pgd_step(idx, probes, win_idx, gain, len(idx))
                if self.probe_active:
                    if self.probe_opt is not None:
                        self.probe_opt.step()
                    else:
                        self._probe_pgd_step(windows.detach(), gain, len(idx))
                    self.probe.mul_(torch.sqrt(self.probe_energy / self.probe.abs().square().sum()))
                if self.positions_active:
                    self._position_step(idx)
            total += loss.detach() * len(idx)
            count_sum += self.pattern_counts[idx].sum()
            inten_sum += self._good_sum(intensity.detach())
        self.gain = float(count_sum) / max(float(inten_sum), 1e-30)
        mean_loss = float(total) / len(order)
        if self.positions_active:
            self._absorb_position_corrections()
        if self.probe_active and self.fix_gauge:
            self._fix_gauge()
        self.epoch += 1
        self.losses.append(mean_loss)
        self._schedule_step(mean_loss)
        self.elapsed += time.perf_counter() - t0
        self.epoch_seconds.append(self.elapsed)
        return mean_loss

    @property
    def converged(self) -> bool:
        """True once the plateau schedule has cut the step below CONVERGED_LR_FRACTION of its
        start and no position search is still to come."""
        pending = self.search_phase_epochs >= self.epoch
        return not pending and self.lr < CONVERGED_LR_FRACTION * self.lr0

    def _schedule_step(self, loss: float):
        """Windowed plateau test, robust to minibatch noise: after each window of ``patience``
        epochs (at least PLATEAU_MIN_WINDOW), cut the step only if the window's mean loss is not
        lower than the previous window's by more than its own noise (standard error of the
        epoch losses). A best-so-far test cut the step on noise while the low-frequency phase
        was still converging (measured: phase SSIM stalled at 0.777 where a constant step
        reached 0.92 on an independently simulated Gaussian-probe scan)."""
        if self.schedule != "plateau":
            return
        w = max(self.patience, PLATEAU_MIN_WINDOW)
        since = len(self.losses) - self.window_start
        if since < 2 * w:
            return
        recent = np.asarray(self.losses[-w:])
        before = np.asarray(self.losses[-2 * w : -w])
        noise = float(np.std(recent, ddof=1) / math.sqrt(w)) + 1e-12 * abs(float(recent.mean()))
        if float(before.mean() - recent.mean()) > noise:
            self.window_start = len(self.losses) - w  # still improving: slide by one window
            return
        self.lr *= self.decay
        self.probe_lr *= self.decay
        if self.probe_opt is not None:
            for group in self.probe_opt.param_groups:
                group["lr"] = self.probe_lr
        if self.opt is not None:
            for group in self.opt.param_groups:
                group["lr"] = self.lr
        self.window_start = len(self.losses)  # judge the new step on fresh epochs only

    def _position_step(self, idx):
        """Move each pattern of the minibatch against its position gradient by about
        ``position_step_px`` (the gradient over its minibatch RMS), at most twice that per axis:
        every pattern is visited once per epoch, so that bounds its move per epoch. The step
        decays with the object's (plateau schedule), so the positions settle."""
        g = self.delta.grad[idx]
        rms = g.square().sum(-1).mean().sqrt().clamp_min(1e-30)
        size = self.position_step_px * self.lr / self.lr0
        self.delta[idx] += (-size * g / rms).clamp(-2 * size, 2 * size)

    def _absorb_position_corrections(self):
        """Fold the epoch's corrections into the positions. For the first
        ``position_affine_epochs`` epochs of correction the positions are constrained to an affine
        map of the nominal ones (scale, rotation, shear: the global errors of a scan stage);
        afterwards each pattern moves freely. The mean correction (a global translation, which
        object and positions can share without changing any intensity) is removed while the
        object moves; while it is held (``object_start_epoch``) the translation is measured
        against it and kept, and the mean stays there afterwards."""
        new = self.positions_c + self.delta.detach().cpu().numpy().astype(np.float64)
        nominal = self.nominal_c
        if self.epoch < self.position_start_epoch + self.position_affine_epochs:
            design = np.concatenate([nominal, np.ones((self.m, 1))], axis=1)
            coef, *_ = np.linalg.lstsq(design, new, rcond=None)
            new = design @ coef
        if self.epoch < self.object_start_epoch:  # the held object fixes the translation
            self.held_translation = (new - nominal).mean(axis=0)
        else:
            new = new - (new - nominal).mean(axis=0) + self.held_translation
        self._set_positions(new)
        self.delta = torch.zeros(self.m, 2, device=self.device, requires_grad=True)
        self._lit = None

    def _schedule_positions(self, rounds: int) -> None:
        """The epochs of the position-finding phase (``position_search_plan``) when a search is
        asked, and the epoch at which the gradient correction starts. In mode "grow" the
        patterns are ordered by distance from the scan's centre and all but the seed's are left
        out of the object until their block joins it."""
        plan = position_search_plan(
            self.correct_positions,
            self.position_search_px,
            rounds,
            self.position_start_epoch,
            self.position_search_mode,
            self.m,
        )
        self.search_epochs = plan.search
        self.grow_epochs = plan.grow
        self.grow_end = plan.grow_end
        self.flag_epochs = plan.flag
        self.rescue_epochs = plan.rescue
        self.search_phase_epochs = plan.phase_epochs
        self.position_hold_until = 0
        self.gradient_start_epoch = plan.gradient_start if plan.phase_epochs else 0
        self.search_rows = np.arange(self.m)
        self.grow_order = []
        if self.grow_epochs:
            centre = self.nominal_c.mean(axis=0)
            order = np.argsort(np.linalg.norm(self.nominal_c - centre, axis=1), kind="stable")
            seed, blocks = grow_blocks(self.m)
            self.search_rows = np.sort(order[:seed])
            self.grow_order = np.array_split(order[seed:], blocks)
            self.excluded = np.ones(self.m, dtype=bool)
            self.excluded[self.search_rows] = False

    def _position_events(self) -> None:
        """The position-finding phase's events due at the start of this epoch."""
        e = self.epoch
        if e in self.search_epochs:
            self.search_positions(self.search_epochs[e])
            self.restart_object()
        if e in self.grow_epochs:
            self.grow_positions(self.grow_order[self.grow_epochs[e]])
        if self.grow_epochs and e == self.grow_end:
            self.excluded = None
        if e in self.flag_epochs:
            flagged = self.flag_outliers()
            if flagged.any():  # the object heals without them before they are searched again
                self.excluded = flagged
            else:  # nothing lost: the phase ends now
                self.flag_epochs = [f for f in self.flag_epochs if f < e]
                self.rescue_epochs = [r for r in self.rescue_epochs if r < e]
                self.search_phase_epochs = e
        if e in self.rescue_epochs:
            if self.excluded is not None:
                self.rescue_outliers(np.flatnonzero(self.excluded))
            self.excluded = None
        if e == self.search_phase_epochs and e > 0:
            # the object rebuilt from the found positions, not one that absorbed the old errors
            self.restart_object()
            self.positions_active = False
            self.folded = None
            self.position_hold_until = e + self.position_start_epoch

    def search_positions(self, radius_px: float) -> None:
        """Move every pattern (mode "grow": every pattern of the seed) to the whole-pixel shift
        within ``radius_px`` (per axis) of its current position that minimises its Poisson NLL
        against the current object and probe (gain in closed form per candidate): first on a
        grid of at most (2 SEARCH_GRID_HALF + 1)^2 shifts, then every whole-pixel shift between
        the grid points around the best. Windows that would leave the canvas are not candidates.
        The mean move (a global translation) is removed, as in the gradient correction. This
        reaches errors that the gradient cannot (its signal vanishes beyond about the object's
        feature size); its accuracy is then limited by the object, which is rebuilt between
        rounds."""
        r = int(math.floor(radius_px))
        if r < 1:
            return
        rows = self.search_rows
        best, _ = self._search_rows(rows, r)
        moved = self._move(rows, best, recentre=len(rows) == self.m)
        log.info("position search within %d px: moved %.2f px rms", r, moved)

    def grow_positions(self, rows: np.ndarray) -> None:
        """Mode "grow": the block ``rows`` joins the object. Each of its patterns is searched
        within the search radius around its position as given plus the mean correction of its
        GROW_NEIGHBOURS nearest placed patterns (a smooth error is continued outwards), against
        the object of the patterns already placed, which is what it must agree with."""
        from scipy.spatial import cKDTree

        placed = np.flatnonzero(~self.excluded)
        k = min(GROW_NEIGHBOURS, len(placed))
        _, near = cKDTree(self.nominal_c[placed]).query(self.nominal_c[rows], k=k)
        near = np.asarray(near).reshape(len(rows), k)
        correction = (self.positions_c - self.nominal_c)[placed][near].mean(axis=1)
        start = np.round(self.nominal_c[rows] + correction - self.positions_c[rows])
        radius = int(math.floor(self.position_search_px))
        best, _ = self._search_rows(rows, radius, start.astype(np.int64))
        self._move(rows, best, recentre=False)
        moved = float(np.sqrt((best.astype(np.float64) ** 2).sum(1).mean()))
        self.excluded[rows] = False
        log.info(
            "positions: %d more patterns placed (%d of %d), moved %.2f px rms",
            len(rows),
            int((~self.excluded).sum()),
            self.m,
            moved,
        )

    def flag_outliers(self) -> np.ndarray:
        """(M,) bool: patterns that the current object and probe do not explain at their
        positions (deviance per good pixel above the median by OUTLIER_MADS robust standard
        deviations). After a search most patterns sit within a pixel and agree on an object; a
        pattern that the search left at a wrong place fits it far worse than its noise."""
        zero = np.zeros((self.m, 1, 2), dtype=np.int64)
        _, dev = self._best_shifts(np.arange(self.m), zero)
        med = float(np.median(dev))
        spread = 1.4826 * float(np.median(np.abs(dev - med)))
        flagged = dev > med + OUTLIER_MADS * spread
        log.info(
            "positions: %d patterns fit far worse than the scan (deviance > %.3g, median %.3g)",
            int(flagged.sum()),
            med + OUTLIER_MADS * spread,
            med,
        )
        return flagged

    def rescue_outliers(self, rows: np.ndarray) -> None:
        """Search the patterns ``rows`` again against an object rebuilt without them: around
        their current positions within the search radius and around their positions as given
        within OUTLIER_RADIUS_FACTOR times it; each keeps the better fit."""
        r = int(math.floor(self.position_search_px))
        if r < 1 or len(rows) == 0:
            return
        b1, d1 = self._search_rows(rows, r)
        back = np.round(self.nominal_c[rows] - self.positions_c[rows]).astype(np.int64)
        b2, d2 = self._search_rows(rows, int(math.floor(OUTLIER_RADIUS_FACTOR * r)), start=back)
        best = np.where((d2 < d1)[:, None], b2, b1)
        moved = self._move(rows, best, recentre=False)  # the object stays
        log.info("positions: %d lost patterns searched again, moved %.2f px rms", len(rows), moved)

    def _move(self, rows: np.ndarray, shifts: np.ndarray, recentre: bool = True) -> float:
        """Move the patterns ``rows`` by whole-pixel ``shifts`` (len(rows), 2) and, with
        ``recentre`` (before the object restarts), remove the mean move (a global translation);
        returns the rms move over the scan."""
        new = self.positions_c.copy()
        new[rows] += shifts
        if recentre:
            new = new - (new - self.nominal_c).mean(axis=0)
        moved = float(np.sqrt(((new - self.positions_c) ** 2).sum(1).mean()))
        self._set_positions(new)
        if self.folded is not None:  # fractions unchanged except where a window was clipped
            self._fill_folded()
        self._lit = None
        return moved

    def _search_rows(self, rows: np.ndarray, r: int, start: np.ndarray | None = None):
        """Best whole-pixel shifts (len(rows), 2) within ``r`` px per axis of ``start`` (integer
        shifts from the current positions; default 0) for the patterns ``rows``, coarse grid then
        fine, and the deviance of each best fit (``_best_shifts``)."""
        step = max(1, math.ceil(r / SEARCH_GRID_HALF))
        grid = np.arange(-(r // step) * step, r + 1, step)
        coarse = np.stack(np.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2)
        centre = np.zeros((len(rows), 2), np.int64) if start is None else start
        best, dev = self._best_shifts(rows, centre[:, None, :] + coarse[None])
        if step > 1:
            fine = np.arange(-(step - 1), step)
            local = np.stack(np.meshgrid(fine, fine, indexing="xy"), -1).reshape(-1, 2)
            best, dev = self._best_shifts(rows, best[:, None, :] + local[None])
        return best, dev

    def _best_shifts(self, rows: np.ndarray, shifts: np.ndarray):
        """For each pattern of ``rows``, the shift (x, y) among its candidates ``shifts``
        (len(rows), S, 2) of least Poisson NLL, and that fit's Poisson deviance per good pixel
        (about 1 for a pattern that the model explains to its noise)."""
        n, (h, w) = self.n, self.shape
        s_count = shifts.shape[1]
        chunk = max(1, SEARCH_BYTES // (s_count * self.k * n * n * 8))
        best = np.zeros((len(rows), 2), dtype=np.int64)
        deviance = np.zeros(len(rows))
        obj = self.obj.detach()
        # every N x N window of the canvas as a view: a candidate is a (row, column) pick
        all_windows = obj.as_strided((h - n + 1, w - n + 1, n, n), (w, 1, w, 1))
        good = None if self.bad is None else self.good
        with torch.no_grad():
            for s in range(0, len(rows), chunk):
                part = np.arange(s, min(s + chunk, len(rows)))
                corner = self.corner_xy[rows[part]][:, None, :] + shifts[part]  # (B, S, 2)
                valid = (
                    (corner[..., 0] >= 0)
                    & (corner[..., 0] <= w - n)
                    & (corner[..., 1] >= 0)
                    & (corner[..., 1] <= h - n)
                )
                cx = torch.as_tensor(np.where(valid, corner[..., 0], 0), device=self.device)
                cy = torch.as_tensor(np.where(valid, corner[..., 1], 0), device=self.device)
                idx = torch.as_tensor(rows[part], device=self.device)
                windows = all_windows[cy, cx]  # (B, S, N, N)
                # (B, S, K, N, N) exit waves -> (B, S, N, N) intensity, no per-candidate probe copy
                inten = intensity(
                    torch.fft.fft2(windows.unsqueeze(2) * self._probes(idx)[:, None], norm="ortho")
                )
                counts = torch.fft.ifftshift(self.counts[idx], dim=(-2, -1))  # (B, N, N)
                if good is not None:
                    inten = inten * good
                    counts = counts * good
                total = self.pattern_counts[idx].double()  # (B,) C = sum of good counts
                gain = total[:, None] / inten.sum(dim=(-2, -1)).double().clamp_min(1e-30)
                # with the closed-form gain, sum(g lambda) = C, so the NLL over good pixels is
                # C - sum I log(g lambda + eps) = C - C log g - sum I log(lambda + eps / g)
                logs = torch.log(inten + (self.eps / gain).float()[..., None, None])
                fit = torch.einsum("bsp,bp->bs", logs.flatten(2), counts.flatten(1)).double()
                nll = total[:, None] * (1 - torch.log(gain)) - fit
                nll = torch.where(torch.as_tensor(valid, device=self.device), nll, torch.inf)
                low, pick = nll.min(dim=1)
                best[part] = shifts[part, pick.cpu().numpy()]
                # deviance = 2 sum(lambda - I + I log(I / lambda)) = 2 (NLL + sum(I log I - I))
                const = (torch.xlogy(counts, counts) - counts).sum(dim=(-2, -1)).double()
                deviance[part] = (2 * (low + const) / self.n_good).cpu().numpy()
        return best, deviance

    def restart_object(self) -> None:
        """Back to the starting object, step and schedule (the probe and positions are kept): the
        object rebuilt from better positions, not one that has absorbed the old errors."""
        with torch.no_grad():
            self.obj.copy_(self.initial)
        self.opt = None
        self.lr = self.lr0
        self.window_start = len(self.losses)

    def corrected_positions(self) -> np.ndarray:
        """(M, 2) current positions (x, y) in the scan's own frame."""
        return self.positions_c - self.offset_px

    def _lit_weight(self) -> torch.Tensor:
        if self._lit is None:
            illum = self.illumination()
            self._lit = (illum >= 0.1 * illum.max()).float()
        return self._lit

    def object_phase_gradient(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(gx, gy) rad/px: the object's mean phase gradient over the region lit above 10% of the
        peak (the angle of the lit-weighted sum of neighbour products along x and along y)."""
        with torch.no_grad():
            obj, lit = self.obj.detach(), self._lit_weight()
            gx = torch.angle((obj[:, 1:] * obj[:, :-1].conj() * lit[:, 1:] * lit[:, :-1]).sum())
            gy = torch.angle((obj[1:, :] * obj[:-1, :].conj() * lit[1:, :] * lit[:-1, :]).sum())
        return gx, gy

    def _fix_gauge(self):
        """Remove the two ambiguities joint object + probe refinement leaves free, without
        changing any modelled intensity (PHYSICS.md section 5):

        - a linear phase ramp ``exp(i g.r)`` on the object with the opposite ramp on the probe
          (each exit wave changes by a constant phase only): the object's mean phase gradient over
          the well-lit region is moved into the probe, so the object carries no global ramp;
        - a translation of object and probe together (each exit wave moves inside its window, the
          far-field intensity does not change): when the probe's intensity centroid has drifted
          by a whole pixel or more from the guess's, both are rolled back by whole pixels.

        Without this the retrieved probe drifted along both, and an object that matched the truth
        after removing a ramp and shift did not without (measured: phase SSIM after a global
        complex scale only 0.49 on independently simulated scans)."""
        with torch.no_grad():
            obj = self.obj.data
            gx, gy = self.object_phase_gradient()
            h, w = self.shape
            yy = torch.arange(h, device=self.device, dtype=torch.float32)[:, None]
            xx = torch.arange(w, device=self.device, dtype=torch.float32)[None, :]
            obj.mul_(torch.polar(torch.ones((), device=self.device), -(gx * xx + gy * yy)))
            n = self.n
            ar = torch.arange(n, device=self.device, dtype=torch.float32)
            self.probe.data.mul_(
                torch.polar(torch.ones((), device=self.device), gx * ar[None, :] + gy * ar[:, None])
            )
            drift = intensity_centroid_xy(self.probe.data) - self.probe_centroid
            dx, dy = (int(v) for v in torch.round(drift).tolist())
            if dx or dy:
                self.probe.data.copy_(torch.roll(self.probe.data, shifts=(-dy, -dx), dims=(-2, -1)))
                obj.copy_(torch.roll(obj, shifts=(-dy, -dx), dims=(0, 1)))

    def _pgd_step(self, idx, probes, win_idx, gain, b):
        """O -= step * grad_sum / (4 g (illum_batch + alpha * max illum_batch)).

        ``grad_sum`` is the gradient of the summed NLL (torch reports 2 dL/dO*); near the optimum
        the Poisson gradient is twice the modulus-projection residual, hence the 4.
        """
        h, w = self.shape
        illum = torch.zeros(h * w, device=self.device)
        illum.index_add_(0, win_idx.reshape(-1), probes.abs().square().sum(1).reshape(-1))
        self.obj.add_(self._pgd_delta(self.obj.grad, illum.reshape(h, w), gain, b))

    def _pgd_delta(self, grad, illum, gain, b) -> torch.Tensor:
        """The PGD change of the object where ``grad`` (of the mean NLL over the minibatch's ``b``
        patterns) and the minibatch illumination ``illum`` are given (same shape)."""
        denom = 4.0 * gain * (illum + self.pgd_regularization * illum.max())
        return -(self.lr * self.n_good * b) * grad / denom

    @property
    def pixels(self) -> PixelSums:
        """Scratch for the per-window steps (PGD and LocalAdam share it)."""
        if self._pixels is None:
            self._pixels = PixelSums(self.obj.numel(), self.device)
        return self._pixels

    def _local_pgd_step(self, window_grad, probes, win_idx, gain, b):
        """``_pgd_step`` on the pixels the minibatch's windows cover only (the same update: the
        gradient and the batch illumination are zero elsewhere, and the illumination's maximum
        is reached on them). ``window_grad``: (B, N, N) gradient of the windows."""
        flat = win_idx.reshape(-1)
        uniq = self.pixels.distinct(flat)
        grad = self.pixels.sums(flat, window_grad, uniq)
        illum = self.pixels.sums(flat, probes.abs().square().sum(1), uniq)
        self.obj.view(-1).index_add_(0, uniq, self._pgd_delta(grad, illum, gain, b))

    def predicted_intensity(self, indices=None) -> np.ndarray:
        """(B, N, N) float32 ``sum_k |F(O P_k)|^2`` of the current object and probe at the
        patterns ``indices`` (default all), detector order (zero frequency at the centre), with the
        scan's probe scale and without the gain: directly comparable with
        ``ptychopinn.physics.forward.diffraction_intensity`` of ``extract_patches``."""
        idx = torch.arange(self.m) if indices is None else torch.as_tensor(indices).reshape(-1)
        idx = idx.to(self.device)
        with torch.no_grad():
            probes = self._probes(idx)
            inten = self._intensity(torch.take(self.obj, self._windows(idx)), probes)
            inten = torch.fft.fftshift(inten, dim=(-2, -1)) * self.probe_scale**2
        return inten.cpu().numpy().astype(np.float32)

    def _probe_pgd_step(self, windows, gain, b):
        """P -= step * grad_sum / (4 g (sum_batch |O_window|^2 + alpha * max)) (ePIE-like)."""
        n_terms = self.n_good * b
        weight = windows.abs().square().sum(0)
        denom = 4.0 * gain * (weight + self.pgd_regularization * weight.max())
        self.probe.sub_(self.probe_lr * self.probe.grad * n_terms / denom)

    def current_object(self) -> np.ndarray:
        """(H, W) complex64 canvas as it stands (no reset of barely lit pixels)."""
        return self.obj.detach().cpu().numpy().astype(np.complex64)

    def result(self) -> RefineResult:
        illum = self.illumination()
        lit = illum >= LIT_FRACTION * illum.max()
        with torch.no_grad():
            obj = torch.where(lit, self.obj.detach(), self.initial)
        scale2 = self.probe_scale**2
        if self.gain is None:
            gain = None
            with torch.no_grad():
                idx = torch.arange(min(self.m, 256), device=self.device)
                probes = self._probes(idx)
                inten = self._intensity(torch.take(self.obj, self._windows(idx)), probes)
                gain = float(self._closed_form_gain(idx, inten))
        else:
            gain = self.gain
        return RefineResult(
            object=obj.cpu().numpy().astype(np.complex64),
            offset_px=self.offset_px.copy(),
            probe=(
                self.scan_probe.copy()
                if not self.probe_active
                else (self.probe.detach() * self.probe_scale).cpu().numpy().astype(np.complex64)
            ),
            gain=float(gain) / scale2,
            losses=list(self.losses),
            illumination=(illum * scale2).cpu().numpy().astype(np.float32),
            seconds=self.elapsed,
            epoch_seconds=list(self.epoch_seconds),
            positions_px=self.corrected_positions() if self.correct_positions else None,
        )


def refine(
    scan,
    initial_object: np.ndarray | None = None,
    offset_px=None,
    *,
    epochs: int = 60,
    batch_size: int = 64,
    optimizer: str | None = None,
    lr: float | None = None,
    schedule: str = "plateau",
    patience: int | None = None,
    refine_probe: bool = False,
    probe_start_epoch: int = 2,
    probe_optimizer: str = "pgd",
    probe_lr: float | None = None,
    prior_sigma: float | None = None,
    seed: int = 0,
    progress=None,
    quiet: bool = False,
    device="cpu",
    time_limit_s: float | None = None,
    stop_when_converged: bool = True,
    fix_gauge: bool = True,
    correct_positions: bool = False,
    position_start_epoch: int = POSITION_START_EPOCH,
    position_step_px: float = POSITION_STEP_PX,
    position_affine_epochs: int = POSITION_AFFINE_EPOCHS,
    position_search_px: float = 0.0,
    position_search_rounds: int = POSITION_SEARCH_ROUNDS,
    position_search_mode: str = "global",
    object_start_epoch: int = 0,
    stop=None,
) -> RefineResult:
    """Refine an object (and optionally the probe) on one scan's own Poisson likelihood.

    Args:
        scan: ``ScanData`` (counts (M, N, N), positions_px (M, 2) (x, y), probe (K, N, N),
            optional bad_pixels (N, N) excluded from the loss, optional object_truth whose frame
            the canvas adopts when the scan fits inside it).
        initial_object: (H, W) complex start (e.g. the network's stitched object), or None for a
            flat start (object = 1: a plain automatic-differentiation reconstruction).
        offset_px: (x, y) canvas offset of ``initial_object`` (canvas pixel = position-frame
            pixel + offset, as returned with a stitched object); None means 0 (the object is in
            the positions' own frame, like ``object_truth``). The canvas is padded with 1 where
            the scan reaches beyond ``initial_object``.
        epochs: at most this many passes over the scan (a flat start converged in 40-80 on
            441-pattern scans, measured). batch_size: patterns per step (64 measured best).
        optimizer: ``"adam"`` (Adam on real/imag parts) or ``"pgd"`` (gradient preconditioned by
            the minibatch's probe illumination); None: ``DEFAULT_OPTIMIZER`` (pgd from a flat
            start, adam from a given object). lr: Adam learning rate or PGD step (defaults in
            ``DEFAULT_LR``).
        schedule: ``"plateau"`` halves the step when the mean loss of the last ``patience``
            epochs (at least 3) is not lower than that of the window before by more than its
            noise; ``"constant"`` keeps it. patience: None = ``DEFAULT_PATIENCE`` (20 from a flat
            start, 3 from a given object).
        refine_probe: also refine the probe from epoch ``probe_start_epoch`` on (epochs count
            from 0), by ``probe_optimizer`` ``"pgd"`` (gradient preconditioned by the object
            windows' intensity, like ePIE; step ``probe_lr``) or ``"adam"`` (lr ``probe_lr`` for a
            probe of peak amplitude 1); defaults in ``DEFAULT_PROBE_LR``. The probe's total power
            stays fixed (the gain absorbs the flux); its step decays with the object's.
        prior_sigma: if given, add a Gaussian prior centred on the starting object (standard
            deviation ``prior_sigma`` per real/imaginary part of each pixel): a maximum a
            posteriori refinement that keeps a good start (the network's) where the data are
            noisy instead of fitting the noise. None: maximum likelihood.
        seed: seeds the minibatch order (the result is deterministic for a seed on one device).
        progress: callable(epoch, loss) called after every epoch (epoch counts from 1).
        quiet: no per-epoch log lines. device: torch device for the computation.
        time_limit_s: stop after the first epoch that ends past this wall time (seconds).
        stop_when_converged: stop once the plateau schedule has cut the step below 1/50 of its
            start.
        fix_gauge: with ``refine_probe``, after every epoch move the object's global phase ramp
            into the probe and undo whole-pixel drifts of object and probe together (the two
            ambiguities of joint retrieval; no modelled intensity changes; ``Refiner._fix_gauge``).
        correct_positions: also correct each pattern's position (sub-pixel, by its gradient through
            the Fourier-shifted probe) from epoch ``position_start_epoch``, by about
            ``position_step_px`` per epoch (at most twice that per axis); for the first
            ``position_affine_epochs`` epochs of it only an affine map of the nominal positions
            (scale, rotation, shear), then freely; the mean correction is removed. The corrected
            positions are ``RefineResult.positions_px``.
        position_search_px: with ``correct_positions``, errors up to this many pixels (per axis)
            are found first, in a phase of its own before the ``epochs``
            (``position_search_plan``): after each of ``position_search_rounds`` intervals of
            POSITION_SEARCH_INTERVAL epochs every position moves to its best whole-pixel shift
            within the radius (halved each round; ``Refiner.search_positions``) and the object
            restarts; the gradient correction starts ``position_start_epoch`` epochs after the
            last search; then POSITION_RESCUE_CYCLES times, the patterns that the object does
            not explain (``Refiner.flag_outliers``) are left out of it for half a cycle and
            searched again (``Refiner.rescue_outliers``; the cycles end at the first that finds
            none); finally the object restarts from the found positions and ``epochs`` epochs
            follow (positions still corrected by the gradient from ``position_start_epoch``
            epochs on). 0 (default): no search. position_search_mode: ``"global"`` (every
            pattern against one object of all) or ``"grow"`` (from the scan's centre outwards,
            ``Refiner.grow_positions``).
        object_start_epoch: the object stays as it starts until this epoch (from 0): only the
            probe and the positions move before it (positions against a given object, e.g. the
            network's, with ``position_start_epoch=0``), then all jointly. Against the held
            object the positions' global translation is observable: it is kept, not removed.
        stop: callable polled after every epoch; True ends the refinement there (the engine
            protocol's stop request, ``reconstruction.engine``).

    Returns a ``RefineResult``; pixels lit below 1% of the peak illumination keep their starting
    values.
    """
    if int(epochs) < 0:
        raise PtychoPINNError(f"epochs: {epochs!r} must be >= 0")
    if time_limit_s is not None and not time_limit_s > 0:
        raise PtychoPINNError(f"time_limit_s: {time_limit_s!r} must be > 0 seconds")
    refiner = Refiner(
        scan,
        initial_object,
        offset_px,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        schedule=schedule,
        patience=patience,
        refine_probe=refine_probe,
        probe_start_epoch=probe_start_epoch,
        probe_optimizer=probe_optimizer,
        probe_lr=probe_lr,
        prior_sigma=prior_sigma,
        seed=seed,
        device=device,
        fix_gauge=fix_gauge,
        correct_positions=correct_positions,
        position_start_epoch=position_start_epoch,
        position_step_px=position_step_px,
        position_affine_epochs=position_affine_epochs,
        position_search_px=position_search_px,
        position_search_rounds=position_search_rounds,
        position_search_mode=position_search_mode,
        object_start_epoch=object_start_epoch,
    )
    # a position search's phase comes first (it ends early when no pattern is lost)
    while refiner.epoch < int(epochs) + refiner.search_phase_epochs:
        total = int(epochs) + refiner.search_phase_epochs
        loss = refiner.run_epoch()
        epoch = refiner.epoch
        if not math.isfinite(loss):
            raise PtychoPINNError(
                f"refinement diverged at epoch {epoch} (loss {loss}); lower lr (now {refiner.lr:g})"
            )
        if not quiet:
            log.info(
                "refine epoch %d/%d  poisson_nll %.8g  (%.1f s)",
                epoch,
                total,
                loss,
                refiner.elapsed,
            )
        if progress is not None:
            progress(epoch, loss)
        if time_limit_s is not None and refiner.elapsed >= time_limit_s:
            break
        if stop is not None and stop():
            break
        if stop_when_converged and refiner.converged:
            if not quiet:
                log.info("refine: converged after %d epochs (step cut to %.3g)", epoch, refiner.lr)
            break
    return refiner.result()


def probe_change(start: np.ndarray, end: np.ndarray) -> float:
    """Relative L2 distance between two probes after removing a global complex scale (the
    ambiguity the gain absorbs): ``min_c ||c end - start|| / ||start||``."""
    a, b = np.asarray(start).reshape(-1), np.asarray(end).reshape(-1)
    if a.size != b.size:
        return float("nan")
    c = np.vdot(b, a) / max(float(np.vdot(b, b).real), 1e-30)
    return float(np.linalg.norm(c * b - a) / max(float(np.linalg.norm(a)), 1e-30))


@ENGINES.register("gradient")
class GradientEngine:
    """Gradient refinement (``refine``) as an engine: from the start's object (or a flat one),
    with probe retrieval and position correction as its settings ask.

    ``refine_probe``: True/False, or ``"auto"``/``"on"``/``"off"`` (auto: unless the scan's probe
    is known to be the true one, ``probe_is_known``). Other keyword arguments are ``refine``'s.
    The result's metadata records the epochs, losses (``history``), time, how far the probe moved
    (``probe_change``) and, with position correction, how far the positions moved.
    """

    name = "gradient"

    def __init__(self, *, epochs: int = 60, refine_probe: bool | str = False, **refine_kwargs):
        self.epochs = int(epochs)
        self.refine_probe = refine_probe
        self.kwargs = refine_kwargs

    @classmethod
    def from_config(cls, config, *, epochs: int | None = None, **extra) -> GradientEngine:
        """The engine of a ``config.RefineConfig`` (``epochs``: instead of its
        ``refine_epochs``); ``extra``: ``refine`` arguments outside the config (seed, device,
        quiet)."""
        return cls(
            epochs=config.refine_epochs if epochs is None else epochs,
            refine_probe=config.refine_probe,
            **config.refine_kwargs(),
            **extra,
        )

    def run(self, scan, start=None, *, progress=None, stop=None):
        from dataclasses import replace

        from ptychopinn.data.scan import resolve_probe_refinement
        from ptychopinn.reconstruction.result import Reconstruction

        refine_probe = self.refine_probe
        if isinstance(refine_probe, str):
            refine_probe = resolve_probe_refinement(refine_probe, scan)

        plan = position_search_plan(
            self.kwargs.get("correct_positions", False),
            self.kwargs.get("position_search_px", 0.0),
            self.kwargs.get("position_search_rounds", POSITION_SEARCH_ROUNDS),
            self.kwargs.get("position_start_epoch", POSITION_START_EPOCH),
            self.kwargs.get("position_search_mode", "global"),
            scan.n_patterns,
        )
        total = self.epochs + plan.phase_epochs

        def report(epoch, loss):
            if progress is not None:
                progress(epoch, total, {"loss": float(loss)})

        initial, offset = (None, None) if start is None else (start.object, start.offset_px)
        result = refine(
            scan,
            initial,
            offset,
            epochs=self.epochs,
            refine_probe=refine_probe,
            progress=report,
            stop=stop,
            **self.kwargs,
        )
        losses = list(map(float, result.losses))
        metadata = dict(start.metadata) if start is not None else {"source": scan.source}
        metadata.update(
            {
                "refine_epochs": self.epochs,
                "refine_epochs_run": len(losses),
                "refine_losses": losses,
                "refine_seconds": result.seconds,
                "refine_probe": bool(refine_probe),
                "method": (metadata.get("method", "flat start") + " + physics refinement"),
                "history": [{"step": i, "loss": v} for i, v in enumerate(losses, start=1)],
            }
        )
        if refine_probe:
            metadata["probe_change"] = probe_change(scan.probe, result.probe)
            log.info(
                "probe retrieved: moved %.1f%% from the guess (relative L2 after a global "
                "complex scale)",
                100 * metadata["probe_change"],
            )
        positions = scan.positions_px
        if result.positions_px is not None:
            positions = result.positions_px
            moved = positions - scan.positions_px
            metadata["position_correction_rms_px"] = float(np.sqrt((moved**2).sum(1).mean()))
            metadata["positions_corrected"] = True
            log.info(
                "positions corrected: moved %.2f px rms", metadata["position_correction_rms_px"]
            )
        fields_ = dict(
            object=result.object,
            offset_px=np.asarray(result.offset_px),
            illumination=result.illumination,
            probe=result.probe,
            positions_px=positions,
            metadata=metadata,
        )
        return replace(start, **fields_) if start is not None else Reconstruction(**fields_)
