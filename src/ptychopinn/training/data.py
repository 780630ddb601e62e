"""Datasets of patch groups and the Lightning DataModule (tensors only)."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ptychopinn.data.grouping import PatchGroups, group_positions
from ptychopinn.data.scan import ScanData
from ptychopinn.io.scratch import MappedFile, portable
from ptychopinn.io.spill import SPILL_BYTES, SpillArray
from ptychopinn.physics.forward import init_gain, probe_weight, projection_estimate
from ptychopinn.physics.shifts import extract_patches


@dataclass
class ScanTensors:
    """One scan as tensors: counts (M, N, N) (the scan's own array, not a copy), positions (M, 2),
    a0, bad pixels, and the optional true object (H, W), whose patches items extract when asked
    (an (M, N, N) array of true patches would be 3.3 GB at 1e5 patterns of N = 64)."""

    counts: torch.Tensor
    positions: torch.Tensor
    a0: float
    bad_pixels: torch.Tensor | None
    truth: torch.Tensor | None
    #: the scan's counts array ``counts`` views; a memory map of a named file pickles as its
    #: file, offset and shape (a process started by ``ddp_spawn`` maps it again), not its bytes
    source: np.ndarray | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        ref = portable(self.source) if self.source is not None else None
        if isinstance(ref, MappedFile):
            state.update(counts=None, source=ref)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if isinstance(self.source, MappedFile):
            self.source = self.source.open(mode="c")  # private pages: the file is never written
            self.counts = torch.from_numpy(self.source)


def scan_tensors(scan: ScanData, a0: float | None = None, with_truth: bool = False) -> ScanTensors:
    truth = None
    if with_truth and scan.object_truth is not None:
        truth = torch.as_tensor(scan.object_truth)
    counts = torch.as_tensor(scan.diffraction)
    return ScanTensors(
        source=scan.diffraction,
        counts=counts,
        positions=torch.as_tensor(scan.positions_px, dtype=torch.float64),
        a0=scan.amplitude_scale() if a0 is None else a0,
        bad_pixels=None if scan.bad_pixels is None else torch.as_tensor(scan.bad_pixels),
        truth=truth,
    )


class GroupDataset(Dataset):
    """Items of one scan's groups. Each item is a dict:

    ``counts`` (C, N, N) float32; ``a0`` the scan's amplitude normalisation (network input is
    sqrt(counts) / a0);
    ``bad_pixels`` (1, N, N) bool (True = excluded from the loss; all False without a mask);
    ``offsets`` (C, 2) float32 relative positions (x, y); ``scan`` int index of the scan (selects
    the probe and gain); ``index`` (C,) pattern indices; ``truth`` (C, N, N) complex64 if known.
    """

    def __init__(
        self,
        tensors: ScanTensors,
        groups: PatchGroups,
        scan_id: int = 0,
        estimates: SpillArray | None = None,
    ):
        self.t, self.groups, self.scan_id = tensors, groups, scan_id
        self.estimates = estimates
        n = tensors.counts.shape[-1]
        bad = (
            tensors.bad_pixels
            if tensors.bad_pixels is not None
            else torch.zeros((n, n), dtype=torch.bool)
        )
        self.bad_pixels = bad.bool()[None]  # (1, N, N), broadcasts over the group

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict:
        idx = torch.as_tensor(self.groups.indices[i])
        counts = self.t.counts[idx]
        if (
            self.t.bad_pixels is not None
        ):  # bad pixels carry no information: not an input, not in the loss
            counts = counts.masked_fill(self.t.bad_pixels, 0.0)
        item = {
            "counts": counts,
            "bad_pixels": self.bad_pixels,
            "a0": torch.tensor(self.t.a0, dtype=torch.float32),
            "offsets": torch.as_tensor(self.groups.offsets_px[i]),
            "scan": torch.tensor(self.scan_id),
            "index": idx,
        }
        if self.t.truth is not None:
            with torch.no_grad():
                item["truth"] = extract_patches(
                    self.t.truth, self.t.positions[idx], self.t.counts.shape[-1]
                )
        if self.estimates is not None:
            item["estimate"] = self.estimates[i]
        return item


def group_estimates(
    scan: ScanData,
    groups: PatchGroups,
    iterations: int,
    chunk: int = 256,
    memory_bytes: float = SPILL_BYTES,
) -> SpillArray:
    """Physics estimates (G, C, N, N) complex64 of every group, computed once (they do not depend
    on learned parameters: the gain is the scan's data-initialised one, as at inference), in a
    ``SpillArray``: in memory up to ``memory_bytes``, else in a temporary file that data-loader
    and DDP workers map by path (13 GB for 1e5 groups of 4 at N = 64)."""
    probe = torch.as_tensor(scan.probe)
    weight = probe_weight(probe)
    gain = init_gain(scan.mean_counts, scan.probe)
    bad = None if scan.bad_pixels is None else torch.as_tensor(scan.bad_pixels)
    c, n = groups.indices.shape[1], scan.patch_size
    out = SpillArray((len(groups), c, n, n), np.complex64, memory_bytes=memory_bytes)
    with torch.no_grad():
        for s in range(0, len(groups), chunk):
            idx = groups.indices[s : s + chunk]
            offsets = torch.as_tensor(groups.offsets_px[s : s + chunk]) if c > 1 else None
            counts = torch.as_tensor(scan.diffraction[idx])
            out.write(
                slice(s, s + len(idx)),
                projection_estimate(counts, probe, gain, iterations, offsets, weight, bad),
            )
    return out


def split_patterns(
    positions: np.ndarray, val_fraction: float, seed: int, min_size: int = 1
) -> tuple[np.ndarray, np.ndarray | None]:
    """Seeded held-out patterns for validation: the ``val_fraction`` of the scan's patterns
    nearest a randomly drawn scan position (a contiguous block, so groups can be formed inside
    it), and the rest for training. Returns (train indices, validation indices), or (all, None)
    when the fraction is 0 or either part would hold fewer than ``min_size`` patterns (a group)."""
    m = len(positions)
    if val_fraction <= 0:
        return np.arange(m), None
    n_val = max(min_size, int(round(val_fraction * m)))
    if m - n_val < min_size:
        return np.arange(m), None
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed + 7919)
    centre = np.asarray(positions, dtype=np.float64)[rng.integers(m)]
    _, near = cKDTree(positions).query(centre, k=n_val)
    val = np.sort(np.atleast_1d(near).astype(np.int64))
    return np.setdiff1d(np.arange(m), val), val


def group_subset(
    positions: np.ndarray,
    indices: np.ndarray,
    gridsize: int,
    neighbors: int,
    n_groups: int | None,
    seed: int,
) -> PatchGroups:
    """``group_positions`` among the patterns ``indices`` only, as scan pattern indices."""
    g = group_positions(np.asarray(positions)[indices], gridsize, neighbors, n_groups, seed=seed)
    return PatchGroups(indices[g.indices], g.offsets_px, g.centers_px)


class PtychoDataModule(L.LightningDataModule):
    """Training groups from one or more scans; validation from a test scan or a held-out fraction.

    Every scan is normalised by its own a0 (PHYSICS.md section 4); the dataset-level constant
    stored in the bundle is the first training scan's a0.
    """

    def __init__(
        self,
        train_scans: list[ScanData],
        test_scan: ScanData | None = None,
        *,
        gridsize: int = 1,
        neighbors: int = 7,
        n_groups: int | None = None,
        val_fraction: float = 0.1,
        batch_size: int = 16,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        with_truth: bool = False,
        physics_iterations: int = 0,
    ):
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.loader_kwargs = dict(num_workers=num_workers, pin_memory=pin_memory)
        if num_workers > 0:
            self.loader_kwargs["persistent_workers"] = persistent_workers
            if prefetch_factor is not None:
                self.loader_kwargs["prefetch_factor"] = prefetch_factor
        self.seed = seed
        train_sets, val_sets = [], []
        per_scan = None if n_groups is None else max(1, n_groups // len(train_scans))
        for i, scan in enumerate(train_scans):
            t = scan_tensors(scan, with_truth=with_truth)
            tr_idx, va_idx = (
                split_patterns(scan.positions_px, val_fraction, seed + i, gridsize * gridsize)
                if test_scan is None
                else (np.arange(scan.n_patterns), None)
            )
            if va_idx is None:
                tr = group_positions(
                    scan.positions_px, gridsize, neighbors, per_scan, seed=seed + i
                )
                va = None
            else:  # validation groups share no pattern with training groups
                n_va = None if per_scan is None else max(1, int(round(val_fraction * per_scan)))
                n_tr = None if per_scan is None else max(1, per_scan - n_va)
                tr = group_subset(scan.positions_px, tr_idx, gridsize, neighbors, n_tr, seed + i)
                va = group_subset(scan.positions_px, va_idx, gridsize, neighbors, n_va, seed + i)
            est = (
                (lambda g, sc=scan: group_estimates(sc, g, physics_iterations))
                if physics_iterations
                else (lambda g: None)
            )
            train_sets.append(GroupDataset(t, tr, i, est(tr)))
            if va is not None:
                val_sets.append(GroupDataset(t, va, i, est(va)))
        if test_scan is not None:
            groups = group_positions(test_scan.positions_px, gridsize, neighbors, None, seed=seed)
            # a test scan uses probe/gain slot len(train_scans)
            est = (
                group_estimates(test_scan, groups, physics_iterations)
                if physics_iterations
                else None
            )
            val_sets = [
                GroupDataset(
                    scan_tensors(test_scan, with_truth=with_truth), groups, len(train_scans), est
                )
            ]
        self.train_set = torch.utils.data.ConcatDataset(train_sets)
        self.val_set = torch.utils.data.ConcatDataset(val_sets) if val_sets else None

    @property
    def has_validation(self) -> bool:
        return self.val_set is not None

    def train_dataloader(self):
        # the order of epoch e is a permutation drawn from (seed, e), whatever the number of
        # processes: the same on a rerun and after a resume (Lightning calls set_epoch; it keeps a
        # DistributedSampler as given). Each process takes its share, padded to equal length.
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        sampler = DistributedSampler(
            self.train_set,
            num_replicas=world,
            rank=rank,
            shuffle=True,
            seed=self.seed,
            drop_last=False,
        )
        # drop a ragged last batch only if every process still gets a full one
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=len(self.train_set) >= 2 * self.batch_size * world,
            generator=self._generator(),
            **self.loader_kwargs,
        )

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            shuffle=False,
            generator=self._generator(),
            **self.loader_kwargs,
        )

    def _generator(self) -> torch.Generator:
        """The loaders' own generator (worker base seeds): never the global RNG."""
        return torch.Generator().manual_seed(self.seed)
