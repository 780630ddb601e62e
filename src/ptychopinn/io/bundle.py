"""The model bundle: one self-describing, safe-to-load file (``model.ptpinn``).

A zip archive (stored, not compressed) holding:
- ``manifest.json``: format name and version, package version, creation time, SHA-256 of every
  other member (corruption check);
- ``config.json``: ModelConfig, DataConfig and TrainingConfig as JSON (what the model is);
- ``normalisation.json``: the amplitude scale a0, Poisson eps, gains (PHYSICS.md section 4);
- ``weights.pt``: the generator's state dict, read with ``torch.load(weights_only=True)``;
- ``probe.npy``: the training probe (K, N, N) complex64, read with ``allow_pickle=False``;
- ``execution.json``: the resolved ExecutionConfig and InferConfig of the run (flat keys), its
  RefineConfig (under ``refine``) and, under ``validation_check``, the end-of-training check
  (network vs physics estimate vs flat); audit only, not identity.
Loading is strict: an unknown format version, a checksum mismatch, a missing member, or weights
that do not match the configured architecture exactly raise BundleError.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ptychopinn import __version__
from ptychopinn.config import (
    DataConfig,
    ModelConfig,
    TrainingConfig,
    from_dict,
    to_dict,
)
from ptychopinn.errors import BundleError
from ptychopinn.io.atomic import atomic_path

FORMAT = "ptychopinn-bundle"
FORMAT_VERSION = 1
EXTENSION = ".ptpinn"
BUNDLE_NAME = "model" + EXTENSION
MEMBERS = ("config.json", "normalisation.json", "weights.pt", "probe.npy", "execution.json")


@dataclass
class ModelBundle:
    """A trained model: configs, generator weights, probe and normalisation constants."""

    model_config: ModelConfig
    data_config: DataConfig
    training_config: TrainingConfig
    state_dict: dict
    probe: np.ndarray
    normalisation: dict
    execution: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)

    def build_generator(self) -> torch.nn.Module:
        """The generator in eval mode with the bundle's weights (strict)."""
        from ptychopinn.models.registry import build_generator

        try:
            net = build_generator(
                self.model_config.generator, **self.model_config.generator_kwargs()
            )
            net.load_state_dict(self.state_dict, strict=True)
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise BundleError(
                f"model bundle weights do not match its configuration: {first}"
            ) from None
        return net.eval()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_bundle(bundle: ModelBundle, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``bundle`` atomically to ``path`` (a file; ``.ptpinn`` appended if missing)."""
    path = Path(path)
    if path.suffix != EXTENSION:
        path = path.with_name(path.name + EXTENSION)
    payload = {}
    payload["config.json"] = json.dumps(
        {
            "model": to_dict(bundle.model_config),
            "data": to_dict(bundle.data_config),
            "training": to_dict(bundle.training_config),
        },
        indent=2,
    ).encode()
    payload["normalisation.json"] = json.dumps(bundle.normalisation, indent=2).encode()
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in bundle.state_dict.items()}, buf)
    payload["weights.pt"] = buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, np.asarray(bundle.probe, dtype=np.complex64), allow_pickle=False)
    payload["probe.npy"] = buf.getvalue()
    payload["execution.json"] = json.dumps(bundle.execution, indent=2, default=str).encode()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ptychopinn_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {name: _sha256(data) for name, data in payload.items()},
    }
    with atomic_path(path, overwrite=overwrite) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("manifest.json", json.dumps(manifest, indent=2))
            for name, data in payload.items():
                zf.writestr(name, data)
    return path


def resolve_bundle_path(path: str | Path) -> Path:
    """Accept the bundle file itself or a training output directory holding ``model.ptpinn``."""
    path = Path(path)
    if path.is_dir():
        candidate = path / BUNDLE_NAME
        if not candidate.exists():
            raise BundleError(f"{path}: no model bundle ({BUNDLE_NAME}) in this directory")
        return candidate
    if not path.exists():
        raise BundleError(f"{path}: model bundle not found")
    return path


def _load_weights(path: Path, raw: bytes) -> dict:
    """The weights member as a plain ``{name: tensor}`` dict, through torch's restricted
    (``weights_only``) unpickler only; anything else is refused as an unsafe bundle."""
    try:
        state = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - whatever the safe unpickler refuses, we refuse
        raise BundleError(
            f"{path}: weights.pt: not a safe ptychopinn bundle: the weights are not a "
            f"plain tensor state dict (the safe loader refused it: "
            f"{type(exc).__name__}); do not open this file with other tools"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()
    ):
        raise BundleError(
            f"{path}: weights.pt: not a safe ptychopinn bundle: expected a dict of "
            f"named tensors, got {type(state).__name__}"
        )
    return state


def load_bundle(path: str | Path) -> ModelBundle:
    """Read and verify a bundle (strict)."""
    path = resolve_bundle_path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "manifest.json" not in names:
                raise BundleError(f"{path}: not a ptychopinn model bundle (no manifest.json)")
            manifest = json.loads(zf.read("manifest.json"))
            if manifest.get("format") != FORMAT:
                raise BundleError(
                    f"{path}: manifest.json: format {manifest.get('format')!r}, expected {FORMAT!r}"
                )
            version = manifest.get("format_version")
            if version != FORMAT_VERSION:
                raise BundleError(
                    f"{path}: bundle format version {version!r}; this ptychopinn "
                    f"{__version__} reads version {FORMAT_VERSION}"
                )
            data = {}
            for name in MEMBERS:
                if name not in names:
                    raise BundleError(f"{path}: missing member {name}")
                data[name] = zf.read(name)
                expected = manifest.get("files", {}).get(name)
                if expected != _sha256(data[name]):
                    raise BundleError(
                        f"{path}: {name}: checksum mismatch (corrupt or modified bundle)"
                    )
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, KeyError) as exc:
        raise BundleError(
            f"{path}: unreadable model bundle ({type(exc).__name__}: {exc})"
        ) from None
    try:
        config = json.loads(data["config.json"])
        # bundles written before ModelConfig.overlap_constraint existed averaged the patches
        model_config = from_dict(ModelConfig, {"overlap_constraint": "patches", **config["model"]})
        data_config = from_dict(DataConfig, config["data"])
        training_config = from_dict(TrainingConfig, config["training"])
        state = _load_weights(path, data["weights.pt"])
        probe = np.load(io.BytesIO(data["probe.npy"]), allow_pickle=False)
        normalisation = json.loads(data["normalisation.json"])
        execution = json.loads(data["execution.json"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise BundleError(f"{path}: invalid bundle content ({type(exc).__name__}: {exc})") from None
    bundle = ModelBundle(
        model_config, data_config, training_config, state, probe, normalisation, execution, manifest
    )
    bundle.build_generator()  # strict weight check now, not at first use
    return bundle
