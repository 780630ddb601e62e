"""ScanData validation, NPZ reading/writing and position grouping."""

import json
import logging

import numpy as np
import pytest

from ptychopinn.data import load_scan
from ptychopinn.data.grouping import group_positions, nearest_neighbors
from ptychopinn.data.npz import read_npz, write_npz
from ptychopinn.data.scan import ScanData
from ptychopinn.errors import DataError, PtychoPINNError

M, N = 6, 8


def valid_fields(**override):
    rng = np.random.default_rng(0)
    fields = dict(
        diffraction=rng.poisson(5.0, (M, N, N)).astype(np.float32),
        positions_px=rng.uniform(10, 20, (M, 2)),
        probe=(rng.standard_normal((N, N)) + 1j * rng.standard_normal((N, N))).astype(np.complex64),
        object_truth=np.ones((30, 30), np.complex64),
        bad_pixels=np.zeros((N, N), bool),
        scan_index=np.arange(M),
        metadata={"photons": 1e3},
        source="scan.npz",
    )
    fields.update(override)
    return fields


# ----------------------------------------------------------------------------- ScanData


def test_valid_scan_is_normalised():
    scan = ScanData(
        **valid_fields(
            probe=valid_fields()["probe"].astype(np.complex128),
            diffraction=valid_fields()["diffraction"].astype(np.int64),
            bad_pixels=np.zeros((N, N), np.uint8),
        )
    )
    assert scan.diffraction.dtype == np.float32 and scan.diffraction.shape == (M, N, N)
    assert scan.probe.dtype == np.complex64 and scan.probe.shape == (1, N, N)
    assert scan.positions_px.dtype == np.float64
    assert scan.bad_pixels.dtype == bool
    assert scan.scan_index.dtype == np.int64
    assert scan.n_patterns == M and scan.patch_size == N and scan.n_modes == 1


BAD_INPUTS = {
    "not 3-D": ("diffraction", dict(diffraction=np.zeros((N, N), np.float32)), "3-D"),
    "empty scan": (
        "diffraction",
        dict(
            diffraction=np.zeros((0, N, N), np.float32),
            positions_px=np.zeros((0, 2)),
            scan_index=None,
        ),
        "empty",
    ),
    "non-square": ("diffraction", dict(diffraction=np.zeros((M, N, N + 2), np.float32)), "square"),
    "complex counts": ("diffraction", dict(diffraction=np.zeros((M, N, N), np.complex64)), "real"),
    "NaN counts": ("diffraction", dict(diffraction=np.full((M, N, N), np.nan, np.float32)), "NaN"),
    "inf counts": (
        "diffraction",
        dict(diffraction=np.full((M, N, N), np.inf, np.float32)),
        "NaN/inf",
    ),
    "negative counts": (
        "diffraction",
        dict(diffraction=-np.ones((M, N, N), np.float32)),
        "negative",
    ),
    "positions not (M, 2)": ("positions", dict(positions_px=np.zeros((M, 3))), "(M, 2)"),
    "positions 1-D": ("positions", dict(positions_px=np.zeros(M)), "(M, 2)"),
    "positions count": ("positions", dict(positions_px=np.zeros((M + 1, 2))), f"{M + 1} positions"),
    "positions NaN": ("positions", dict(positions_px=np.full((M, 2), np.nan)), "NaN"),
    "probe not complex": ("probe", dict(probe=np.ones((N, N), np.float32)), "complex"),
    "probe size": ("probe", dict(probe=np.ones((N + 1, N + 1), np.complex64)), f"N={N}"),
    "probe 4-D": ("probe", dict(probe=np.ones((1, 1, N, N), np.complex64)), "(K, N, N)"),
    "probe NaN": ("probe", dict(probe=np.full((N, N), np.nan, np.complex64)), "NaN"),
    "probe zero": ("probe", dict(probe=np.zeros((N, N), np.complex64)), "zero"),
    "object 3-D": ("object", dict(object_truth=np.ones((2, 30, 30), np.complex64)), "2-D"),
    "object NaN": ("object", dict(object_truth=np.full((30, 30), np.nan, np.complex64)), "NaN"),
    "bad_pixels shape": ("bad_pixels", dict(bad_pixels=np.zeros((N, N + 1), bool)), f"({N}, {N})"),
    "bad_pixels all": ("bad_pixels", dict(bad_pixels=np.ones((N, N), bool)), "every pixel"),
    "scan_index shape": ("scan_index", dict(scan_index=np.arange(M + 1)), f"({M},)"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_scandata_validation_names_the_key(case):
    key, override, expected = BAD_INPUTS[case]
    with pytest.raises(DataError) as info:
        ScanData(**valid_fields(**override))
    err = info.value
    assert err.key == key
    assert err.source == "scan.npz"
    message = str(err)
    assert message.startswith(f"scan.npz: {key}: ")
    assert expected in message
    assert "\n" not in message
    assert isinstance(err, PtychoPINNError) and isinstance(err, ValueError)


# ----------------------------------------------------------------------------- NPZ


def test_npz_round_trip_identical(tmp_path):
    fields = valid_fields(
        probe=np.stack([valid_fields()["probe"]] * 2),
        bad_pixels=np.eye(N, dtype=bool),
        scan_index=np.array([0, 0, 1, 1, 2, 2]),
        object_truth=(np.ones((30, 30)) * np.exp(0.3j)).astype(np.complex64),
        metadata={"photons": 1e3, "note": "x", "nested": {"a": [1, 2]}},
    )
    scan = ScanData(**fields)
    path = write_npz(scan, tmp_path / "scan.npz")
    back = read_npz(path)
    np.testing.assert_array_equal(back.diffraction, scan.diffraction)
    np.testing.assert_array_equal(back.positions_px, scan.positions_px)
    np.testing.assert_array_equal(back.probe, scan.probe)
    np.testing.assert_array_equal(back.object_truth, scan.object_truth)
    np.testing.assert_array_equal(back.bad_pixels, scan.bad_pixels)
    np.testing.assert_array_equal(back.scan_index, scan.scan_index)
    assert back.diffraction.dtype == scan.diffraction.dtype
    assert back.probe.dtype == np.complex64 and back.object_truth.dtype == np.complex64
    # metadata comes back unchanged; the reader only adds how it read the units
    assert back.metadata == {**scan.metadata, "diffraction_units_read": "counts"}
    assert back.source == str(path)
    with np.load(path) as z:
        assert str(z["diffraction_units"]) == "counts"  # our writer records units explicitly
        assert z["probeGuess"].shape == (2, N, N)


def test_npz_round_trip_single_mode_and_no_optionals(tmp_path):
    scan = ScanData(
        **valid_fields(object_truth=None, bad_pixels=None, scan_index=None, metadata={})
    )
    back = read_npz(write_npz(scan, tmp_path / "s.npz"))
    assert back.object_truth is None and back.bad_pixels is None and back.scan_index is None
    np.testing.assert_array_equal(back.probe, scan.probe)
    with np.load(tmp_path / "s.npz") as z:
        assert z["probeGuess"].shape == (N, N)  # one mode is written in the classic 2-D layout


def test_npz_write_refuses_to_overwrite(tmp_path):
    scan = ScanData(**valid_fields())
    path = write_npz(scan, tmp_path / "s.npz")
    with pytest.raises(PtychoPINNError, match="already exists"):
        write_npz(scan, path)
    write_npz(scan, path, overwrite=True)


def raw_npz(path, **arrays):
    """Write an NPZ the way other tools do (no units entry unless given)."""
    f = valid_fields()
    base = dict(
        diff3d=f["diffraction"],
        xcoords=f["positions_px"][:, 0],
        ycoords=f["positions_px"][:, 1],
        probeGuess=f["probe"],
    )
    base.update(arrays)
    base = {k: v for k, v in base.items() if v is not None}
    np.savez(path, **base)
    return path


def test_npz_diffraction_key_alias(tmp_path):
    counts = valid_fields()["diffraction"]
    scan = read_npz(raw_npz(tmp_path / "a.npz", diff3d=None, diffraction=counts))
    np.testing.assert_array_equal(scan.diffraction, counts)


@pytest.mark.parametrize("flag", ["amplitude", "AMPLITUDE"])
def test_npz_amplitudes_with_explicit_units_entry(tmp_path, flag):
    counts = valid_fields()["diffraction"]  # integer-valued, would be detected as counts
    amp = np.sqrt(counts * 4).astype(np.float32)
    scan = read_npz(raw_npz(tmp_path / "a.npz", diff3d=amp, diffraction_units=np.array(flag)))
    np.testing.assert_allclose(scan.diffraction, amp.astype(np.float64) ** 2, rtol=1e-6)
    assert scan.metadata["diffraction_units_read"] == "amplitude"


def test_npz_amplitudes_detected_and_logged(tmp_path, log_records):
    amp = np.sqrt(valid_fields()["diffraction"] + 0.37).astype(np.float32)
    scan = read_npz(raw_npz(tmp_path / "a.npz", diff3d=amp))
    np.testing.assert_allclose(scan.diffraction, amp.astype(np.float64) ** 2, rtol=1e-6)
    assert scan.metadata["diffraction_units_read"] == "amplitude"
    assert any("detected as 'amplitude'" in r.getMessage() for r in log_records)


def test_npz_counts_detected(tmp_path, log_records):
    counts = valid_fields()["diffraction"]
    scan = read_npz(raw_npz(tmp_path / "c.npz", diff3d=counts))
    np.testing.assert_array_equal(scan.diffraction, counts)
    assert any("detected as 'counts'" in r.getMessage() for r in log_records)
    scan = read_npz(raw_npz(tmp_path / "i.npz", diff3d=counts.astype(np.uint16)))
    np.testing.assert_array_equal(scan.diffraction, counts)


def test_npz_units_override(tmp_path):
    counts = valid_fields()["diffraction"]
    # the file says amplitude, the user says counts: the user wins
    path = raw_npz(tmp_path / "a.npz", diff3d=counts, diffraction_units=np.array("amplitude"))
    np.testing.assert_array_equal(read_npz(path, diffraction_units="counts").diffraction, counts)
    np.testing.assert_array_equal(read_npz(path).diffraction, counts.astype(np.float64) ** 2)
    # integer-valued data forced to amplitudes
    path = raw_npz(tmp_path / "b.npz", diff3d=counts)
    np.testing.assert_array_equal(
        read_npz(path, diffraction_units="amplitude").diffraction, counts.astype(np.float64) ** 2
    )
    np.testing.assert_array_equal(
        load_scan(path, diffraction_units="amplitude").diffraction, counts.astype(np.float64) ** 2
    )
    with pytest.raises(DataError, match="diffraction_units"):
        read_npz(path, diffraction_units="photons")


def test_npz_legacy_layout_transposed_with_warning(tmp_path, log_records):
    counts = valid_fields()["diffraction"]  # (M, N, N) with M=6 != N=8
    legacy = np.ascontiguousarray(np.moveaxis(counts, 0, 2))  # (N, N, M)
    scan = read_npz(raw_npz(tmp_path / "legacy.npz", diff3d=legacy))
    np.testing.assert_array_equal(scan.diffraction, counts)
    warnings = [r for r in log_records if r.levelno == logging.WARNING]
    assert any("legacy" in r.getMessage() and "legacy.npz" in r.getMessage() for r in warnings)


def test_npz_probe_modes(tmp_path):
    probe = np.stack([valid_fields()["probe"]] * 3)
    scan = read_npz(raw_npz(tmp_path / "p.npz", probeGuess=probe))
    assert scan.n_modes == 3
    np.testing.assert_array_equal(scan.probe, probe)


NPZ_ERRORS = {
    "missing diffraction": (dict(diff3d=None), "diff3d", "missing"),
    "missing xcoords": (dict(xcoords=None), "xcoords", "missing"),
    "missing ycoords": (dict(ycoords=None), "ycoords", "missing"),
    "missing probe": (dict(probeGuess=None), "probeGuess", "missing"),
    "coords differ": (dict(ycoords=np.zeros(M + 1)), "ycoords", "xcoords"),
    "not 3-D": (dict(diff3d=np.zeros((M, N * N), np.float32)), "diff3d", "3-D"),
    "count mismatch": (
        dict(xcoords=np.zeros(M + 1), ycoords=np.zeros(M + 1)),
        "diff3d",
        "positions",
    ),
    "non-square": (dict(diff3d=np.zeros((M, N, N + 1), np.float32)), "diff3d", "square"),
    "NaN": (dict(diff3d=np.full((M, N, N), np.nan, np.float32)), "diff3d", "NaN"),
    "negative counts": (dict(diff3d=-np.ones((M, N, N), np.float32)), "diff3d", "negative"),
    "negative counts detected": (
        dict(
            diff3d=np.full((M, N, N), 5.0, np.float32) * np.sign(np.arange(M) - 2.5)[:, None, None]
        ),
        "diff3d",
        "negative",
    ),
    "negative amplitudes": (
        dict(diff3d=-np.ones((M, N, N), np.float32) / 3, diffraction_units=np.array("amplitude")),
        "diff3d",
        "negative",
    ),
    "bad units entry": (
        dict(diffraction_units=np.array("photons")),
        "diffraction_units",
        "photons",
    ),
    "probe real": (dict(probeGuess=np.ones((N, N), np.float32)), "probeGuess", "complex"),
    "probe size": (dict(probeGuess=np.ones((N - 2, N - 2), np.complex64)), "probeGuess", f"N={N}"),
    "probe NaN": (dict(probeGuess=np.full((N, N), np.nan, np.complex64)), "probeGuess", "NaN"),
    "object 1-D": (dict(objectGuess=np.ones(30, np.complex64)), "objectGuess", "2-D"),
    "object inf": (
        dict(objectGuess=np.full((30, 30), np.inf, np.complex64)),
        "objectGuess",
        "NaN/inf",
    ),
    "bad_pixels shape": (
        dict(bad_pixels=np.zeros((N + 1, N), bool)),
        "bad_pixels",
        "expected shape",
    ),
    "scan_index shape": (dict(scan_index=np.zeros((M, 2), int)), "scan_index", "expected shape"),
    "metadata not JSON": (dict(metadata=np.array("{not json")), "metadata", "JSON"),
}


@pytest.mark.parametrize("case", sorted(NPZ_ERRORS))
def test_npz_errors_name_file_and_key(tmp_path, case):
    arrays, key, expected = NPZ_ERRORS[case]
    path = raw_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as info:
        read_npz(path)
    err = info.value
    assert (err.source, err.key) == (str(path), key)
    assert str(err).startswith(f"{path}: {key}: ")
    assert expected in str(err)
    assert "\n" not in str(err)


def _good_npz_bytes(tmp_path):
    path = raw_npz(tmp_path / "good.npz")
    with open(path, "rb") as fh:
        return fh.read()


def _compressed_npz_bytes(tmp_path):
    f = valid_fields()
    np.savez_compressed(
        tmp_path / "z.npz",
        diff3d=np.random.default_rng(1).random((M, 64, 64)),
        xcoords=f["positions_px"][:, 0],
        ycoords=f["positions_px"][:, 1],
        probeGuess=f["probe"],
    )
    return (tmp_path / "z.npz").read_bytes()


@pytest.mark.parametrize("content", ["truncated", "flipped", "text", "empty", "npy", "pickle"])
def test_npz_unreadable_files(tmp_path, content):
    path = tmp_path / "broken.npz"
    if content == "truncated":
        path.write_bytes(_good_npz_bytes(tmp_path)[:300])
    elif content == "flipped":  # corrupt the deflate stream of a compressed member
        data = bytearray(_compressed_npz_bytes(tmp_path))
        for i in range(200, 2200):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif content == "text":
        path.write_text("x,y\n1,2\n")
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "npy":
        with open(path, "wb") as fh:
            np.save(fh, np.zeros((M, N, N)))
    else:
        np.savez(
            path,
            diff3d=np.array([{"a": 1}], dtype=object),
            xcoords=np.zeros(1),
            ycoords=np.zeros(1),
            probeGuess=np.ones((N, N), np.complex64),
        )
    with pytest.raises(DataError) as info:
        read_npz(path)
    assert info.value.source == str(path)
    assert info.value.key in ("file", "diff3d")
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file") as info:
        read_npz(tmp_path / "nope.npz")
    assert info.value.key == "file"


# ----------------------------------------------------------------------------- grouping


def grid_positions(side=8, step=3.0, seed=0):
    rng = np.random.default_rng(seed)
    iy, ix = np.divmod(np.arange(side * side), side)
    return np.stack([ix, iy], axis=1) * step + rng.uniform(-0.3, 0.3, (side * side, 2))


def test_grouping_deterministic_for_a_seed():
    pos = grid_positions()
    a = group_positions(pos, gridsize=2, neighbors=6, n_groups=40, seed=3)
    b = group_positions(pos, gridsize=2, neighbors=6, n_groups=40, seed=3)
    c = group_positions(pos, gridsize=2, neighbors=6, n_groups=40, seed=4)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.offsets_px, b.offsets_px)
    assert not np.array_equal(a.indices, c.indices)


def test_grouping_members_among_k_nearest_neighbours():
    pos = grid_positions()
    k = 7
    groups = group_positions(pos, gridsize=2, neighbors=k, n_groups=64, seed=0)
    assert groups.indices.shape == (64, 4) and groups.group_size == 4 and len(groups) == 64
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    for row in groups.indices:
        seed = row[0]
        kth = np.sort(d2[seed])[k - 1]  # distance of the k-th nearest (the seed itself is first)
        assert len(set(row.tolist())) == 4  # distinct members
        assert all(d2[seed, j] <= kth + 1e-12 for j in row)
    # the KD-tree neighbour list agrees with a brute-force full sort
    nn = nearest_neighbors(pos, k)
    assert (nn[:, 0] == np.arange(len(pos))).all()
    for i in range(len(pos)):
        np.testing.assert_allclose(np.sort(d2[i, nn[i]]), np.sort(d2[i])[:k])


def test_kdtree_neighbours_equal_brute_force_on_random_and_duplicate_positions():
    from ptychopinn.data.grouping import nearest_neighbor_spacing

    rng = np.random.default_rng(4)
    pos = rng.uniform(0, 200, (700, 2))
    pos[10] = pos[11]  # a duplicate: each keeps itself first
    k = 9
    nn = nearest_neighbors(pos, k)
    d = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))  # brute force, small M only
    assert (nn[:, 0] == np.arange(len(pos))).all()
    assert nn[10, 1] == 11 and nn[11, 1] == 10
    np.testing.assert_allclose(np.take_along_axis(d, nn, axis=1), np.sort(d, axis=1)[:, :k])
    off_diag = d + np.diag(np.full(len(pos), np.inf))
    assert nearest_neighbor_spacing(pos) == pytest.approx(np.median(off_diag.min(axis=1)))
    assert nearest_neighbors(pos[:3], 5).shape == (3, 3)  # k larger than the scan


def test_grouping_offsets_relative_to_centroid():
    pos = grid_positions()
    groups = group_positions(pos, gridsize=3, neighbors=12, n_groups=20, seed=1)
    assert groups.offsets_px.shape == (20, 9, 2) and groups.offsets_px.dtype == np.float32
    np.testing.assert_allclose(groups.offsets_px.sum(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(
        groups.centers_px[:, None, :] + groups.offsets_px, pos[groups.indices], atol=1e-4
    )
    # neighbours really are neighbours: offsets of a few steps, not across the scan
    assert np.abs(groups.offsets_px).max() < 3 * 3.0 * 1.5


def test_grouping_gridsize_one():
    pos = grid_positions()
    groups = group_positions(pos, gridsize=1, seed=0)
    assert groups.indices.shape == (64, 1)
    assert sorted(groups.indices[:, 0].tolist()) == list(range(64))  # each position once
    np.testing.assert_array_equal(groups.offsets_px, 0)
    np.testing.assert_allclose(groups.centers_px, pos[groups.indices[:, 0]])


def test_grouping_more_groups_than_positions():
    pos = grid_positions(side=4)
    groups = group_positions(pos, gridsize=2, neighbors=4, n_groups=50, seed=0)
    assert groups.indices.shape == (50, 4)
    assert set(groups.indices[:16, 0].tolist()) == set(range(16))  # every position seeds first
    sub = groups.subset([0, 5, 7])
    np.testing.assert_array_equal(sub.indices, groups.indices[[0, 5, 7]])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(gridsize=2, neighbors=3), "neighbors"),
        (dict(gridsize=0), "gridsize"),
        (dict(gridsize=2, n_groups=0), "n_groups"),
        (dict(gridsize=5, neighbors=30), "gridsize"),  # 25 > 16 positions
    ],
)
def test_grouping_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_positions(grid_positions(side=4), **kwargs)


def test_grouping_empty_scan():
    with pytest.raises(ValueError, match="empty"):
        group_positions(np.zeros((0, 2)))


def test_metadata_json_in_file(tmp_path):
    scan = ScanData(**valid_fields(metadata={"photons": 1e3, "step_px": 2.5}))
    path = write_npz(scan, tmp_path / "m.npz")
    with np.load(path) as z:
        assert json.loads(str(z["metadata"])) == {"photons": 1e3, "step_px": 2.5}


def test_scan_geometry_is_typed_held_once_and_survives_npz(tmp_path, tiny_scan):
    """ScanData.geometry (object grid, pixel size, what scan_index means): geometry keys in the
    metadata (older files, ``replace(scan, metadata=...)``) move into it; NPZ keeps it."""
    from dataclasses import replace

    from ptychopinn.data.geometry import ObjectGrid, ScanGeometry
    from ptychopinn.data.npz import read_npz, write_npz
    from ptychopinn.errors import DataError

    assert tiny_scan.geometry == ScanGeometry()  # a simulation: no physical grid
    legacy = replace(tiny_scan, metadata={**tiny_scan.metadata, "object_pixel_size_m": 2e-8})
    assert legacy.geometry.pixel_size_m == (2e-8, 2e-8)
    assert "object_pixel_size_m" not in legacy.metadata
    grid = ObjectGrid(tiny_scan.object_truth.shape, 1e-8, 3e-8, 1e-6, -2e-6)
    typed = replace(tiny_scan, geometry=ScanGeometry(grid, scan_index="position_index"))
    assert typed.geometry.pixel_size_m == (1e-8, 3e-8)  # the grid's
    write_npz(typed, tmp_path / "g.npz")
    back = read_npz(tmp_path / "g.npz")
    assert back.geometry == typed.geometry
    assert "object_grid" not in back.metadata
    with pytest.raises(DataError, match="scan_index 'frame'"):
        replace(tiny_scan, metadata={"scan_index_kind": "frame"})
