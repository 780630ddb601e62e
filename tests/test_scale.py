"""Scale: stitching in O(M) memory and time, patches that need not fit in RAM, and a memory
ceiling on a real ``infer`` run (issue 13)."""

import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from ptychopinn.data.simulate import SimulationConfig, simulate_scan
from ptychopinn.io.spill import SpillArray
from ptychopinn.physics.forward import AVERAGE_FLOOR, probe_weight
from ptychopinn.physics.shifts import canvas_geometry, extract_patches, place_patches
from ptychopinn.reconstruction.stitching import RING_REFERENCE_FLOOR, _rings, stitch


def _reference_stitch(patches, positions_px, probe, object_shape, iterations=10):
    """The stitching this package shipped before the O(M) rewrite: each ring aligned to the whole
    canvas divided by its coverage, patches rotated and kept (M, N, N), a new canvas per
    placement."""
    n = patches.shape[-1]
    shape, offset = canvas_geometry(positions_px, n, object_shape)
    pos = torch.as_tensor(positions_px + offset, dtype=torch.float64)
    w = probe_weight(torch.as_tensor(probe), floor=0.0).to(torch.float32)
    wc = w.to(torch.complex64)

    def rotate(p, ref):
        c = (w * ref * p.conj()).sum(dim=(-2, -1), keepdim=True)
        return p * torch.polar(torch.ones_like(c.real), torch.angle(c))

    den = place_patches(wc.expand(patches.shape), pos, shape, kernel="bilinear").real
    d = AVERAGE_FLOOR * den.max()  # the package's one place-and-average rule

    def average(placed):
        return (placed + d) / (den + d)

    patches = patches.clone()
    num = torch.zeros(shape, dtype=torch.complex64)
    cover = torch.zeros(shape)
    for ring in _rings(positions_px):
        idx = torch.as_tensor(ring)
        if cover.max() > 0:
            ref = extract_patches(
                num / (cover + RING_REFERENCE_FLOOR * cover.max()), pos[idx], n, kernel="bilinear"
            )
            patches[idx] = rotate(patches[idx], ref)
        num = num + place_patches(patches[idx] * wc, pos[idx], shape, kernel="bilinear")
        cover = (
            cover
            + place_patches(wc.expand(len(idx), n, n), pos[idx], shape, kernel="bilinear").real
        )
    for _ in range(iterations):
        canvas = average(place_patches(patches * wc, pos, shape, kernel="bilinear"))
        patches = rotate(patches, extract_patches(canvas, pos, n, kernel="bilinear"))
    canvas = average(place_patches(patches * wc, pos, shape, kernel="bilinear"))
    canvas = canvas * torch.polar(torch.ones(()), -torch.angle((den * canvas).sum()))
    return torch.where(den > 1e-2 * den.max(), canvas, torch.ones_like(canvas)).numpy()


@pytest.fixture(scope="module")
def dephased():
    """True object patches of a 144-pattern scan, and the same patches each with a random global
    phase (what the network's free phases look like to stitching)."""
    scan = simulate_scan(
        SimulationConfig(
            patch_size=32,
            n_positions=144,
            object_kind="natural",
            probe_kind="pinhole",
            photons=1e5,
            seed=3,
        )
    )
    truth = torch.as_tensor(scan.object_truth)
    patches = extract_patches(truth, torch.as_tensor(scan.positions_px), 32, kernel="bilinear")
    phases = torch.as_tensor(np.random.default_rng(0).uniform(-np.pi, np.pi, scan.n_patterns))
    turned = patches * torch.polar(torch.ones_like(phases), phases)[:, None, None]
    return scan, turned.to(torch.complex64), patches.to(torch.complex64)


def _phase_matched(a, b):
    c = np.vdot(a, b)
    return a * c / abs(c)


def test_linear_stitch_gives_the_object_of_the_whole_canvas_stitch(dephased):
    scan, patches, true_patches = dephased
    shape = scan.object_truth.shape
    new, illum, offset = stitch(patches, scan.positions_px, scan.probe, shape)
    old = _reference_stitch(patches, scan.positions_px, scan.probe, shape)
    lit = illum > 0.1 * illum.max()
    # the O(M) ring reference divides after extracting, the whole-canvas one before; they differ
    # where the coverage changes within a pixel (measured max 2.0e-3 of an amplitude ~1)
    assert np.abs(new - old)[lit].max() < 2.5e-3
    # the random patch phases are undone: the same object as stitching the undisturbed patches
    # (one global phase apart), while the scrambled patches averaged as they are are not it
    clean = stitch(true_patches, scan.positions_px, scan.probe, shape, phase_sync_iterations=0)[0][
        lit
    ]
    scale = np.abs(clean).mean()
    assert np.abs(_phase_matched(new[lit], clean) - clean).mean() < 0.01 * scale
    wc = probe_weight(torch.as_tensor(scan.probe), floor=0.0).to(torch.complex64)
    pos = torch.as_tensor(scan.positions_px + offset)
    unsynced = (
        place_patches(patches * wc, pos, shape, kernel="bilinear")
        / place_patches(wc.expand(patches.shape), pos, shape, kernel="bilinear")
    ).numpy()[lit]
    assert np.abs(_phase_matched(unsynced, clean) - clean).mean() > 0.1 * scale


def test_patches_in_a_temporary_file_stitch_like_patches_in_memory(dephased):
    scan, patches, _ = dephased
    m, n = patches.shape[0], patches.shape[-1]
    store = SpillArray((m, n, n), np.complex64, memory_bytes=0)  # forced to spill
    assert not store.in_memory
    order = np.random.default_rng(1).permutation(m)  # written in group order, not pattern order
    for s in range(0, m, 50):
        store.write(order[s : s + 50], patches[order[s : s + 50]])
    assert torch.equal(store.tensor(), patches)
    assert torch.equal(store.read(np.array([5, 2, 99])), patches[[5, 2, 99]])
    in_memory = stitch(patches, scan.positions_px, scan.probe, scan.object_truth.shape)[0]
    from_file = stitch(
        store, scan.positions_px, scan.probe, scan.object_truth.shape, chunk_size=17
    )[0]
    store.close()
    np.testing.assert_allclose(from_file, in_memory, atol=1e-5)


def test_place_patches_into_a_canvas_adds_in_place():
    rng = np.random.default_rng(2)
    p = torch.as_tensor(rng.normal(size=(6, 8, 8)) + 1j * rng.normal(size=(6, 8, 8))).to(
        torch.complex64
    )
    pos = torch.as_tensor(rng.uniform(8, 22, size=(6, 2)))
    for kernel in ("bilinear", "fourier"):
        whole = place_patches(p, pos, (30, 30), kernel=kernel)
        canvas = torch.zeros((30, 30), dtype=torch.complex64)
        place_patches(p[:4], pos[:4], (30, 30), kernel=kernel, out=canvas)
        assert place_patches(p[4:], pos[4:], (30, 30), kernel=kernel, out=canvas) is canvas
        torch.testing.assert_close(canvas, whole, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="out: expected a contiguous canvas"):
        place_patches(p, pos, (30, 30), out=torch.zeros((31, 30), dtype=torch.complex64))


def test_rings_partition_the_scan_by_distance_from_its_centre():
    pos = np.random.default_rng(4).uniform(0, 300, size=(2000, 2))
    rings = _rings(pos)
    flat = np.concatenate(rings)
    assert sorted(flat.tolist()) == list(range(2000))
    dist = np.linalg.norm(pos - pos.mean(axis=0), axis=1)
    assert len(rings[0]) == 1 and dist[rings[0][0]] == dist.min()
    for inner, outer in zip(rings, rings[1:], strict=False):
        assert dist[inner].max() <= dist[outer].min()


RSS = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], capture_output=True).returncode
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _peak_rss_mb(cmd) -> float:
    out = subprocess.run(
        [sys.executable, "-c", RSS, *cmd], capture_output=True, text=True, check=True
    )
    code, kb = out.stdout.split()
    assert code == "0", cmd
    return int(kb) / 1024


def test_infer_memory_grows_with_the_scan_not_its_square(tmp_path):
    """A subprocess ``infer`` of 6,000 patterns (N = 16) against one of 49: the peak RSS grows by
    less than 200 MB (measured ~95 MB: counts, patches and canvases). One M x M float64 array of
    distances or weights would add 288 MB."""
    from ptychopinn.config import (
        DataConfig,
        ExecutionConfig,
        ModelConfig,
        TrainingConfig,
    )
    from ptychopinn.data.npz import write_npz
    from ptychopinn.training.fit import fit

    small = simulate_scan(SimulationConfig(patch_size=16, n_positions=49, seed=1))
    large = simulate_scan(SimulationConfig(patch_size=16, n_positions=6000, seed=2))
    write_npz(small, tmp_path / "small.npz")
    write_npz(large, tmp_path / "large.npz")
    result = fit(
        [small],
        None,
        model_config=ModelConfig(n=16),
        data_config=DataConfig(),
        training_config=TrainingConfig(max_epochs=1),
        execution_config=ExecutionConfig(
            logger="none", quiet=True, accelerator="cpu", enable_checkpointing=False
        ),
        output_dir=tmp_path / "model",
    )
    exe = [
        sys.executable,
        "-m",
        "ptychopinn.cli.main",
        "infer",
        "--model",
        str(result.bundle_path),
        "--accelerator",
        "cpu",
        "--quiet",
    ]
    base = _peak_rss_mb(
        [*exe, "--data", str(tmp_path / "small.npz"), "--output-dir", str(tmp_path / "a")]
    )
    peak = _peak_rss_mb(
        [*exe, "--data", str(tmp_path / "large.npz"), "--output-dir", str(tmp_path / "b")]
    )
    assert (tmp_path / "b" / "reconstruction.npz").is_file()
    assert peak - base < 200, (
        f"infer of 6000 patterns peaked at {peak:.0f} MB vs {base:.0f} MB for 49"
    )


def test_a_spilled_array_pickles_by_reference_and_its_creator_removes_the_file(tmp_path):
    import os
    import pickle

    values = (
        torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2 * 3, 4, 4).to(torch.complex64)
    )
    spilled = SpillArray(values.shape, np.complex64, memory_bytes=0, directory=tmp_path)
    spilled.write(slice(None), values)
    blob = pickle.dumps(spilled)
    assert len(blob) < 1000  # the path, not the 768 bytes of data... nor 13 GB of them
    copy = pickle.loads(blob)
    assert torch.equal(copy[4], values[4]) and torch.equal(copy.tensor(), values)
    copy.close()  # a copy (a worker) never removes the creator's file
    assert os.path.exists(spilled.path)
    spilled.close()
    assert not os.path.exists(spilled.path)


def test_training_estimates_in_a_file_equal_estimates_in_memory(tiny_scan):
    from ptychopinn.data.grouping import group_positions
    from ptychopinn.training.data import group_estimates

    groups = group_positions(tiny_scan.positions_px, 2, 4, seed=0)
    ram = group_estimates(tiny_scan, groups, 3, chunk=10)
    disk = group_estimates(tiny_scan, groups, 3, chunk=10, memory_bytes=0)
    assert ram.in_memory and not disk.in_memory
    assert torch.equal(disk.tensor(), ram.tensor()) and torch.equal(disk[7], ram[7])
    flat = torch.ones_like(ram.tensor())
    assert (ram.tensor() - flat).abs().mean() > 0.01  # estimates, not the flat start
    disk.close()


def _memory_map_of(array):
    """The np.memmap an array is a view of (ScanData holds a plain ndarray view), else None."""
    while array is not None:
        if isinstance(array, np.memmap):
            return array
        array = getattr(array, "base", None)
    return None


def _file_backed(a) -> bool:
    return _memory_map_of(a) is not None


def test_a_memory_mapped_npz_scan_reads_like_a_full_read(tmp_path, monkeypatch):
    import ptychopinn.data.npz as npz

    scan = simulate_scan(SimulationConfig(patch_size=16, n_positions=300, seed=5))
    npz.write_npz(scan, tmp_path / "compressed.npz")
    with np.load(tmp_path / "compressed.npz") as f:  # the same members, stored uncompressed
        np.savez(tmp_path / "stored.npz", **{k: f[k] for k in f.files})
    full = npz.read_npz(tmp_path / "compressed.npz")
    assert not _file_backed(full.diffraction)  # a compressed member is read
    monkeypatch.setattr(npz, "MMAP_BYTES", 1)  # every stored member is mapped
    mapped = npz.read_npz(tmp_path / "stored.npz")
    assert _file_backed(mapped.diffraction)  # float32 counts: mapped, no copy made
    np.testing.assert_array_equal(mapped.diffraction, full.diffraction)
    np.testing.assert_array_equal(mapped.positions_px, full.positions_px)
    np.testing.assert_array_equal(mapped.probe, full.probe)
    assert mapped.mean_counts == pytest.approx(full.mean_counts, rel=1e-6)
    # copy-on-write: a change in memory never reaches the file
    mapped.diffraction[0, 0, 0] += 1
    assert npz.read_npz(tmp_path / "stored.npz").diffraction[0, 0, 0] == full.diffraction[0, 0, 0]
    # a compressed member that large is decompressed in pieces into a scratch file
    streamed = npz.read_npz(tmp_path / "compressed.npz")
    assert _file_backed(streamed.diffraction) and _memory_map_of(streamed.diffraction).mode == "r+"
    np.testing.assert_array_equal(streamed.diffraction, full.diffraction)
    np.testing.assert_array_equal(streamed.probe, full.probe)


def test_counts_conversion_goes_piece_by_piece_into_a_scratch_file(monkeypatch):
    """Integer counts or amplitudes of a scan at least MMAP_BYTES large convert piece by piece
    into a file-backed float32 array equal to a whole-array conversion; float32 counts are
    returned as they are; a negative amplitude is reported with its pattern."""
    import ptychopinn.data.npz as npz
    from ptychopinn.errors import DataError

    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(11, 8, 8)).astype(np.uint32)
    monkeypatch.setattr(npz, "MMAP_BYTES", 1)
    monkeypatch.setattr(npz, "CONVERT_CHUNK", 3)
    out, units = npz.to_counts(counts, "auto", "f", "k")
    assert units == "counts" and _file_backed(out) and out.dtype == np.float32
    np.testing.assert_array_equal(out, counts.astype(np.float32))
    amp = np.sqrt(counts).astype(np.float64)
    out, _ = npz.to_counts(amp, "amplitude", "f", "k")
    np.testing.assert_allclose(out, counts.astype(np.float32), rtol=1e-6)
    same = counts.astype(np.float32)
    assert npz.to_counts(same, "counts", "f", "k")[0] is same
    amp[7, 2, 3] = -1.0
    with pytest.raises(DataError, match="pattern 7"):
        npz.to_counts(amp, "amplitude", "f", "k")


def test_local_pgd_step_equals_the_canvas_wide_step(tiny_scan):
    """The per-window PGD update (cost of the minibatch) moves the object exactly as the
    canvas-wide one did (gradient and batch illumination are zero off the windows)."""
    from ptychopinn.physics.losses import poisson_nll
    from ptychopinn.reconstruction.gradient import Refiner

    r = Refiner(tiny_scan, optimizer="pgd")
    r.run_epoch()  # a non-flat object
    idx = torch.arange(0, 20)
    probes = r._probes(idx)
    win = r._windows(idx)
    counts = torch.fft.ifftshift(r.counts[idx], dim=(-2, -1))
    start = r.obj.detach().clone()

    def loss_of(windows):
        inten = r._intensity(windows, probes)
        return poisson_nll(
            counts, r._closed_form_gain(idx, inten).detach() * inten, eps=r.eps
        ), inten

    r.obj.grad = None
    loss, inten = loss_of(torch.take(r.obj, win))
    loss.backward()
    gain = r._closed_form_gain(idx, inten.detach())
    with torch.no_grad():
        r._pgd_step(idx, probes, win, gain, len(idx))
    dense = r.obj.detach().clone()
    with torch.no_grad():
        r.obj.copy_(start)
    windows = torch.take(r.obj.detach(), win).requires_grad_(True)
    loss_of(windows)[0].backward()
    with torch.no_grad():
        r._local_pgd_step(windows.grad, probes, win, gain, len(idx))
    assert (dense - start).abs().max() > 1e-4  # the step moved the object
    torch.testing.assert_close(r.obj.detach(), dense, atol=1e-6, rtol=1e-5)


def test_local_adam_equals_torch_adam_on_the_pixels_it_visits():
    """LocalAdam (moments advanced on the minibatch's pixels only) makes exactly torch's Adam
    updates on pixels visited at every step, sums overlapping windows' gradients per pixel, and
    leaves the pixels no window covers alone; a pixel first visited later starts its own step
    count (its first move is lr per part, as Adam's first step)."""
    from ptychopinn.reconstruction.gradient import LocalAdam

    h, w, n = 12, 14, 4
    gen = torch.Generator().manual_seed(3)
    start = torch.randn(h, w, dtype=torch.complex64, generator=gen)
    ar = torch.arange(n)
    grid = ar[:, None] * w + ar[None, :]
    win = torch.tensor([0, 2, 2 * w + 1])[:, None, None] + grid  # overlapping windows
    dense = start.clone().requires_grad_(True)
    local = start.clone()
    opt, lazy = torch.optim.Adam([dense], lr=0.05), LocalAdam(local, lr=0.05)
    for _ in range(4):
        wg = torch.randn(3, n, n, dtype=torch.complex64, generator=gen)
        grad = torch.zeros(h * w, dtype=torch.complex64)
        grad.index_add_(0, win.reshape(-1), wg.reshape(-1))
        dense.grad = grad.reshape(h, w)
        opt.step()
        lazy.step_windows(wg, win)
    torch.testing.assert_close(local, dense.detach(), atol=1e-6, rtol=1e-5)
    assert (local - start).abs().max() > 0.1
    covered = torch.zeros(h * w, dtype=torch.bool)
    covered[win.reshape(-1)] = True
    assert torch.equal(local.view(-1)[~covered], start.view(-1)[~covered])
    # a window over pixels never visited: each part moves by lr against its gradient's sign
    late = torch.tensor([h * w - 1 - (n - 1) * (w + 1)])[:, None, None] + grid
    before = local.clone()
    wg = torch.complex(torch.ones(1, n, n), -torch.ones(1, n, n))
    lazy.step_windows(wg, late)
    fresh = late.reshape(-1)[~covered[late.reshape(-1)]]
    moved = (local.view(-1) - before.view(-1))[fresh]
    torch.testing.assert_close(moved, torch.full_like(moved, complex(-0.05, 0.05)))


def test_refiner_adam_without_prior_is_local(tiny_scan):
    """Adam refinement without a prior steps on the minibatch's windows (LocalAdam); with a
    prior (a canvas-wide gradient) it is torch's dense Adam."""
    from ptychopinn.reconstruction.gradient import LocalAdam, Refiner

    r = Refiner(tiny_scan, optimizer="adam")
    r.run_epoch()
    assert isinstance(r.opt, LocalAdam) and r.obj.grad is None
    assert (r.current_object() != 1).any()
    p = Refiner(tiny_scan, optimizer="adam", prior_sigma=1.0)
    p.run_epoch()
    assert isinstance(p.opt, torch.optim.Adam)


@pytest.mark.parametrize("layout", ["contiguous-float32", "lzf-uint32-interleaved"])
def test_large_hdf5_patterns_are_mapped_or_sliced_and_read_like_a_full_read(
    tmp_path, tiny_scan, monkeypatch, layout
):
    """Ptychodus diffraction files above the mapping threshold are not read whole: a contiguous
    float32 dataset is memory-mapped copy-on-write (bad pixels zeroed in the process's copy, the
    file untouched), a compressed integer one with patterns that pair with no position between
    the paired ones is read in slices into a scratch file; both equal a full read."""
    from ptychopinn.data import ptychodus_h5 as ph

    product, diffraction = tmp_path / "product.h5", tmp_path / "diffraction.h5"
    ph.write_product_for_scan(product, tiny_scan)
    counts = np.rint(tiny_scan.diffraction).astype(np.float32)
    m = len(counts)
    index = ph._product_scan_index(tiny_scan)
    bad = np.zeros(counts.shape[1:], bool)
    row, col = np.unravel_index(np.argmax(counts[0]), bad.shape)
    bad[row, col] = True  # a pixel with counts in every pattern's file page
    if layout == "contiguous-float32":
        ph.write_diffraction(
            diffraction, counts, index, bad, detector_pixel_size_m=75e-6, compression=None
        )
    else:  # an unpaired pattern (index no position has) after every second one
        extra = np.arange(m // 2) * 2 + 1
        rows = np.insert(np.arange(m), extra, -1)
        pats = np.where((rows >= 0)[:, None, None], counts[rows.clip(0)], 7.0)
        ids = np.where(rows >= 0, index[rows.clip(0)], 10**6 + np.arange(len(rows)))
        ph.write_diffraction(
            diffraction, pats, ids, bad, detector_pixel_size_m=75e-6, dtype=np.uint32
        )
    full = ph.read_ptychodus(product, diffraction)
    monkeypatch.setattr(ph, "MAP_BYTES", 0)
    monkeypatch.setattr(ph, "SLICE_BYTES", 5 * counts[0].nbytes)  # several slices
    big = ph.read_ptychodus(product, diffraction)
    mapped = _memory_map_of(big.diffraction)
    assert mapped is not None and _memory_map_of(full.diffraction) is None
    assert big.diffraction.dtype == np.float32
    np.testing.assert_array_equal(big.diffraction, full.diffraction)
    expected = counts.copy()
    expected[:, bad] = 0
    np.testing.assert_array_equal(big.diffraction, expected)
    np.testing.assert_array_equal(big.positions_px, full.positions_px)
    if layout == "contiguous-float32":
        assert mapped.mode == "c"  # the file's pages, copied only where written
        with h5py.File(diffraction, "r") as fh:
            assert fh["patterns"][0, row, col] == counts[0, row, col] > 0  # the file keeps them


def test_scratch_array_is_file_backed_and_leaves_no_file(tmp_path):
    """scratch_array gives a writable array whose file is already removed from the directory, and
    a clear error when the space cannot be reserved."""
    from ptychopinn.errors import PtychoPINNError
    from ptychopinn.io.scratch import scratch_array

    a = scratch_array((3, 4, 5), np.float32, directory=tmp_path)
    a[:] = 2.5
    assert isinstance(a, np.memmap) and float(a.sum()) == 150.0
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PtychoPINNError, match="cannot reserve"):
        scratch_array((2**40, 2**10), np.float64, directory=tmp_path)
