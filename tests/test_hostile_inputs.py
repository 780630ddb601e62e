"""Hostile and broken inputs: every damaged file, bad value or absurd size is one clear
DataError (one line through the CLI, exit 2), never a traceback, a hang or a huge allocation."""

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptychopinn.cli.main import main
from ptychopinn.data import load_scan
from ptychopinn.data.npz import read_npz, write_npz
from ptychopinn.data.scan import ScanData
from ptychopinn.errors import DataError, PtychoPINNError

N = 16


def _scan(m=12, **over):
    rng = np.random.default_rng(0)
    pos = np.stack(np.meshgrid(np.arange(4) * 4.0 + 20, np.arange(3) * 4.0 + 20), -1).reshape(-1, 2)
    kw = dict(
        diffraction=rng.poisson(5.0, (m, N, N)).astype(np.float32),
        positions_px=pos[:m],
        probe=np.ones((N, N), np.complex64),
        metadata={"a": 1},
        source="s.npz",
    )
    kw.update(over)
    return ScanData(**kw)


def _npz_bytes(**arrays) -> bytes:
    base = dict(
        diff3d=np.random.default_rng(0).poisson(5.0, (12, N, N)).astype(np.float32),
        xcoords=np.arange(12) * 3.0 + 20,
        ycoords=np.full(12, 20.0),
        probeGuess=np.ones((N, N), np.complex64),
    )
    base.update(arrays)
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in base.items() if v is not None})
    return buf.getvalue()


def _load_or_user_error(path):
    """What a damaged file may do: load (a flipped byte inside the data is still data) or raise
    a PtychoPINNError. Anything else (a traceback) fails the test."""
    try:
        load_scan(path)
    except PtychoPINNError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip(), str(exc)


# --- damaged files at many offsets --------------------------------------------------------------
def test_truncated_npz_at_many_offsets_is_always_a_data_error(tmp_path, tiny_scan):
    raw = write_npz(tiny_scan, tmp_path / "good.npz").read_bytes()
    bad = tmp_path / "bad.npz"
    for cut in np.unique(np.linspace(0, len(raw) - 1, 60).astype(int)):
        bad.write_bytes(raw[:cut])
        with pytest.raises(DataError):
            read_npz(bad)


def test_byte_flips_in_npz_never_escape_as_other_errors(tmp_path, tiny_scan):
    raw = bytearray(write_npz(tiny_scan, tmp_path / "good.npz").read_bytes())
    rng = np.random.default_rng(1)
    bad = tmp_path / "bad.npz"
    for offset in rng.integers(0, len(raw), 120):
        flipped = bytearray(raw)
        flipped[offset] ^= 1 << int(rng.integers(0, 8))
        bad.write_bytes(bytes(flipped))
        _load_or_user_error(bad)


def test_damaged_ptychodus_files_never_escape_as_other_errors(tmp_path, tiny_scan):
    from ptychopinn.data.ptychodus_h5 import (
        write_diffraction_for_scan,
        write_product_for_scan,
    )

    product = write_product_for_scan(tmp_path / "product.h5", tiny_scan).read_bytes()
    diffraction = write_diffraction_for_scan(tmp_path / "diffraction.h5", tiny_scan).read_bytes()
    rng = np.random.default_rng(2)
    for name, raw in (("product", product), ("diffraction", diffraction)):
        good = {"product": tmp_path / "product.h5", "diffraction": tmp_path / "diffraction.h5"}
        bad = tmp_path / f"bad_{name}.h5"
        pair = dict(good, **{name: bad})
        for cut in np.unique(np.linspace(0, len(raw) - 1, 25).astype(int)):
            bad.write_bytes(raw[:cut])
            with pytest.raises(DataError):
                load_scan(product=pair["product"], diffraction=pair["diffraction"])
        for offset in rng.integers(0, len(raw), 60):
            flipped = bytearray(raw)
            flipped[offset] ^= 0xFF
            bad.write_bytes(bytes(flipped))
            try:
                load_scan(product=pair["product"], diffraction=pair["diffraction"])
            except PtychoPINNError:
                pass


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=0, max_size=400))
def test_random_bytes_are_a_data_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "x.npz"
    path.write_bytes(data)
    with pytest.raises(DataError):
        read_npz(path)


def test_damaged_file_through_the_cli_is_one_line_exit_2(tmp_path, tiny_scan):
    raw = write_npz(tiny_scan, tmp_path / "good.npz").read_bytes()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(raw[: len(raw) // 2])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ptychopinn.cli.main",
            "reconstruct",
            "--data",
            str(bad),
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert str(bad) in lines[0]
    assert not (tmp_path / "o").exists()


# --- absurd sizes: refused before allocating ----------------------------------------------------
def test_a_header_claiming_1e9_patterns_is_refused_before_allocating(tmp_path):
    raw = _npz_bytes()
    # rewrite diff3d.npy's header to claim (1e9, 16, 16) float32 (16 TB); the data stay small
    zin = zipfile.ZipFile(io.BytesIO(raw))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "diff3d.npy":
                header = {"descr": "<f4", "fortran_order": False, "shape": (10**9, N, N)}
                buf = io.BytesIO()
                np.lib.format.write_array_header_1_0(buf, header)
                body = data[len(data) - 12 * N * N * 4 :]
                data = buf.getvalue() + body
            zout.writestr(info.filename, data)
    path = tmp_path / "huge.npz"
    path.write_bytes(out.getvalue())
    with pytest.raises(DataError, match=r"diff3d: header claims shape \(1000000000, 16, 16\)"):
        read_npz(path)


def test_a_compressed_member_larger_than_memory_is_refused(tmp_path, monkeypatch):
    import ptychopinn.data.limits as limits

    path = tmp_path / "big.npz"
    path.write_bytes(_npz_bytes())
    monkeypatch.setattr(limits, "memory_bytes", lambda: 4096)  # a machine with 4 KiB of memory
    with pytest.raises(DataError, match="more than this machine's"):
        read_npz(path)


def test_positions_that_need_an_absurd_canvas_are_refused():
    pos = np.zeros((12, 2))
    pos[-1] = (3e6, 3e6)  # metres mistaken for pixels would look like this, or nm
    with pytest.raises(DataError, match="positions: span .* would not fit in memory"):
        _scan(positions_px=pos)


# --- bad values ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field,value,message",
    [
        ("positions_px", np.full((12, 2), np.nan), "NaN/inf positions"),
        ("positions_px", np.full((12, 2), np.inf), "NaN/inf positions"),
        (
            "positions_px",
            np.ones((12, 2), bool),
            "positions: expected real numbers, got dtype bool",
        ),
        ("positions_px", np.ones((12, 2), complex), "expected real numbers, got dtype complex128"),
        ("probe", np.zeros((N, N), np.complex64), "probe is zero everywhere"),
        ("diffraction", np.zeros((12, N, N), np.float32), "every count of all 12 patterns is zero"),
        ("diffraction", np.ones((12, N, N), bool), "expected real numbers, got dtype bool"),
        (
            "diffraction",
            np.ones((12, N, N), np.complex64),
            "expected real numbers, got dtype complex64",
        ),
        ("diffraction", np.ones((12, N, N), object), "expected real numbers, got dtype object"),
        ("metadata", ["not", "a", "mapping"], "metadata: expected a mapping"),
        ("bad_pixels", np.full((N, N), 0.5), "bad_pixels: expected a boolean mask"),
        ("scan_index", np.arange(12) + 0.5, "scan_index: expected integers"),
    ],
)
def test_bad_values_are_named(field, value, message):
    with pytest.raises(DataError, match=message):
        _scan(**{field: value})


@pytest.mark.parametrize(
    "arrays,message",
    [
        (dict(metadata=np.array(json.dumps([1, 2]))), "metadata: expected a JSON object"),
        (dict(metadata=np.array("{not json")), "metadata: not valid JSON"),
        (dict(diff3d=np.zeros((12, N, N), np.float32)), "every count of all 12 patterns is zero"),
        (dict(diff3d=np.ones((12, N, N), bool)), "expected real numbers, got dtype bool"),
        (dict(xcoords=np.array(["a"] * 12)), "xcoords: expected real numbers"),
        (dict(xcoords=np.full(12, np.nan)), "NaN/inf positions"),
        (dict(probeGuess=np.zeros((N, N), np.complex64)), "probe is zero everywhere"),
        (dict(probeGuess=np.ones((N, N), np.float32)), "probeGuess: expected a complex array"),
    ],
)
def test_bad_npz_content_is_a_one_line_cli_error(tmp_path, arrays, message, capsys):
    path = tmp_path / "scan.npz"
    path.write_bytes(_npz_bytes(**arrays))
    with pytest.raises(DataError, match=message):
        read_npz(path)
    code = main(
        ["reconstruct", "--data", str(path), "--output-dir", str(tmp_path / "o"), "--quiet"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message.split(":")[-1].strip()[:20] in err[0], err


def test_object_arrays_are_never_unpickled(tmp_path):
    path = tmp_path / "pickle.npz"
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(io.BytesIO(_npz_bytes())) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(
                info.filename, buf.getvalue() if info.filename == "diff3d.npy" else zin.read(info)
            )
    with pytest.raises(DataError, match="diff3d: holds Python objects"):
        read_npz(path)
