"""Group neighbouring scan positions for the overlap constraint (PHYSICS.md section 3)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptychopinn.errors import ConfigError


@dataclass(frozen=True)
class PatchGroups:
    """Groups of C = gridsize^2 scan positions.

    indices: (G, C) int64 pattern indices; offsets_px: (G, C, 2) float32 positions relative to
    each group's centroid, (x, y); centers_px: (G, 2) float64 group centroids.
    """

    indices: np.ndarray
    offsets_px: np.ndarray
    centers_px: np.ndarray

    def __len__(self) -> int:
        return self.indices.shape[0]

    @property
    def group_size(self) -> int:
        return self.indices.shape[1]

    def subset(self, rows) -> "PatchGroups":
        rows = np.asarray(rows)
        return PatchGroups(self.indices[rows], self.offsets_px[rows], self.centers_px[rows])


def nearest_neighbors(positions: np.ndarray, k: int) -> np.ndarray:
    """(M, k) indices of the k nearest positions of each position, itself first, nearest next.

    A KD-tree (scipy's cKDTree): O(M log M) time and O(M k) memory, never an M x M array.
    Among positions at equal distance the order is the tree's; a duplicate of a position never
    displaces the position itself from column 0.
    """
    from scipy.spatial import cKDTree

    pos = np.asarray(positions, dtype=np.float64)
    m = pos.shape[0]
    k = min(int(k), m)
    _, idx = cKDTree(pos).query(pos, k=k)
    idx = np.asarray(idx, dtype=np.int64).reshape(m, k)
    own = np.arange(m)
    misplaced = idx[:, 0] != own
    if misplaced.any():  # a duplicate position came first: swap the position itself to column 0
        rows = np.flatnonzero(misplaced)
        for r in rows:
            hit = np.flatnonzero(idx[r] == r)
            if hit.size:
                idx[r, hit[0]] = idx[r, 0]
            else:
                idx[r, -1] = idx[r, 0]
            idx[r, 0] = r
    return idx


def nearest_neighbor_spacing(positions: np.ndarray) -> float:
    """Median distance from each position to its nearest other position (KD-tree, O(M log M))."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.shape[0] < 2:
        return 0.0
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(pos).query(pos, k=2)
    return float(np.median(dist[:, 1]))


def group_positions(
    positions: np.ndarray,
    gridsize: int = 1,
    neighbors: int = 4,
    n_groups: int | None = None,
    seed: int = 0,
    rng: np.random.Generator | None = None,
) -> PatchGroups:
    """Draw groups of C = gridsize^2 positions among the ``neighbors`` nearest of a seed position.

    Deterministic for a given ``seed``. ``n_groups`` defaults to one group per position; seed
    positions are drawn without replacement while there are enough, then with replacement.
    Gridsize 1 gives one position per group, in seed order.
    """
    pos = np.asarray(positions, dtype=np.float64)
    m = pos.shape[0]
    c = gridsize * gridsize
    if gridsize < 1:
        raise ConfigError(f"gridsize: {gridsize} must be >= 1")
    if m == 0:
        raise ConfigError("positions: empty scan, nothing to group")
    if c > 1 and neighbors < c:
        raise ConfigError(f"neighbors: {neighbors} must be >= gridsize^2 = {c}")
    if c > m:
        raise ConfigError(f"gridsize: groups of {c} need at least {c} positions, the scan has {m}")
    n_groups = m if n_groups is None else int(n_groups)
    if n_groups < 1:
        raise ConfigError(f"n_groups: {n_groups} must be >= 1")
    rng = rng or np.random.default_rng(seed)
    if n_groups <= m:
        seeds = rng.permutation(m)[:n_groups]
    else:
        seeds = np.concatenate([rng.permutation(m), rng.integers(0, m, n_groups - m)])
    if c == 1:
        idx = seeds[:, None]
    else:
        k = min(neighbors, m)
        nn = nearest_neighbors(pos, k)[seeds]  # (G, k), seed first
        others = np.argsort(rng.random((n_groups, k - 1)), axis=1)[:, : c - 1] + 1
        idx = np.concatenate([nn[:, :1], np.take_along_axis(nn, others, axis=1)], axis=1)
    idx = idx.astype(np.int64)
    group_pos = pos[idx]  # (G, C, 2)
    centers = group_pos.mean(axis=1)
    offsets = (group_pos - centers[:, None, :]).astype(np.float32)
    return PatchGroups(indices=idx, offsets_px=offsets, centers_px=centers)
