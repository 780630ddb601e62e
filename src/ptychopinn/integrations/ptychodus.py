"""PtychoPINN as a Ptychodus reconstructor library (the only module that imports ptychodus).

Needs the ``ptychopinn[ptychodus]`` extra (``ptychodus>=1.7,<1.8``). Ptychodus has no plugin
discovery for reconstructors, so ``ptychopinn ptychodus -- ARGS`` (``ptychopinn.cli.ptychodus``)
runs the stock Ptychodus application with :class:`PtychoPINNLibrary` added through
:func:`patch_ptychodus`.

Library ``PtychoPINNLightning`` (algorithm keys ``ptychopinnlightning_pinn`` and
``ptychopinnlightning_supervised``; distinct from Ptychodus's own ``PtychoPINN`` and
``PtychoPINN-Torch`` libraries, which drive other packages):

- **PINN** (unsupervised). ``reconstruct`` with a loaded model: one network pass over the scan,
  stitched. Without a model: self-supervised training on the scan itself (the Poisson
  likelihood of its own patterns through the physics forward model; no labels), then the
  stitched object. ``train`` fits a model on one or more scans without labels.
- **Supervised**: the same network and physics loss plus a phase-aligned squared error between
  the predicted patches and patches of the *product's object*, which is taken as ground truth,
  weighted by ``SupervisedWeight`` x the mean counts per pixel (so that 1.0 gives both terms
  gradients of comparable size whatever the dose). That is only meaningful when the object is a real
  ground truth (a simulation, or a converged reconstruction of the same sample by another
  algorithm); with an initial guess it teaches the network the guess. A uniform object is
  rejected. ``reconstruct`` needs a trained or loaded model (it does not train).

Both: an optional physics refinement (``RefineEpochs``) after the network; the output object is
on the input product's object grid (same pixel size, centre and shape); probe, positions and
metadata are passed through unchanged; ``losses`` holds the training loss per epoch followed by
the refinement loss per epoch (epochs numbered on). While training, the yielded products carry
the input object (the network's object appears once training ends). Progress is strictly
increasing and ends at :meth:`~PtychoPINNReconstructor.get_progress_goal`; closing the generator
stops training/refinement within one batch. Nothing is written to disk except by ``train``
(``model.ptpinn`` and the ``config.resolved.yaml`` audit in its output folder),
``save_model`` and ``export_training_data``.

Settings (group ``PtychoPINNLightning`` in Ptychodus's settings, ``settings.ini`` in batch mode):
``Gridsize``, ``NFiltersScale``, ``PhysicsIterations``, ``Loss`` (poisson|mae), ``MaxEpochs``,
``BatchSize``, ``LearningRate``, ``ValFraction``, ``EarlyStopping``, ``SupervisedWeight``,
``RefineEpochs``, ``Seed``, ``Accelerator`` (auto|cpu|gpu|cuda|mps) and ``ConfigFile`` (a
ptychopinn YAML config for any other option; the values of this group take precedence). Their
defaults are the package's recipe (the config dataclasses' defaults, as for ``ptychopinn
train``). N is taken from the data. Training runs on one device (Ptychodus hosts it in its own
process, so multi-process strategies are not used) and keeps no Lightning logs or checkpoints
(Ptychodus shows the losses).

Logging goes through the package logger ``ptychopinn`` (the library's logger), so Ptychodus's
log view shows our lines.
"""

from __future__ import annotations

import contextlib
import math
import queue
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from ptychodus.api.object import Object
from ptychodus.api.product import LossValue, Product
from ptychodus.api.reconstruct import (
    ReconstructInput,
    Reconstructor,
    ReconstructorLibrary,
    ReconstructOutput,
    TrainableReconstructor,
    TrainOutput,
)
from ptychodus.api.settings import SettingsRegistry

from ptychopinn.config import inference_batch_size
from ptychopinn.data.ptychodus_h5 import (
    SOURCE_FORMAT,
    ObjectGrid,
    assemble_scan,
    canvas_to_grid,
)
from ptychopinn.data.scan import ScanData
from ptychopinn.errors import DataError, PtychoPINNError
from ptychopinn.log import LOGGER_NAME, get_logger

log = get_logger("ptychodus")

LIBRARY_NAME = "PtychoPINNLightning"
SETTINGS_GROUP = LIBRARY_NAME
PINN, SUPERVISED = "PINN", "Supervised"
MODEL_EXTENSION = ".ptpinn"  # = ptychopinn.io.bundle.EXTENSION (not imported: it pulls in torch)
MODEL_FILE_FILTER = f"PtychoPINN model bundles (*{MODEL_EXTENSION})"
TRAINING_DATA_FILE_FILTER = "PtychoPINN training data (*.npz)"
SETTINGS_SOURCE = "Ptychodus settings"
#: files of Ptychodus's batch layout read by ``train``
BATCH_PRODUCT, BATCH_DIFFRACTION = "product.h5", "diffraction.h5"


# --------------------------------------------------------------------------------------------
# settings


class PtychoPINNSettings:
    """The ``PtychoPINNLightning`` settings group (created in Ptychodus's settings registry)."""

    #: setting name -> qualified ptychopinn config key (N is not a setting: it comes from the data)
    KEYS = {
        "Gridsize": "model.gridsize",
        "NFiltersScale": "model.n_filters_scale",
        "PhysicsIterations": "model.physics_iterations",
        "Loss": "model.loss",
        "MaxEpochs": "training.max_epochs",
        "BatchSize": "training.batch_size",
        "LearningRate": "execution.learning_rate",
        "ValFraction": "data.val_fraction",
        "EarlyStopping": "execution.early_stopping",
        "Seed": "execution.seed",
        "Accelerator": "execution.accelerator",
    }
    #: imposed on every run: Ptychodus shows the losses; DDP would relaunch the host process
    FORCED = {
        "execution.logger": "none",
        "execution.enable_checkpointing": False,
        "execution.devices": 1,
        "execution.quiet": False,
    }

    def __init__(self, registry: SettingsRegistry) -> None:
        from ptychopinn.config import DataConfig, ExecutionConfig, ModelConfig, TrainingConfig

        # defaults: the package's recipe (the config dataclasses), never a copy of it
        m, d, t, e = ModelConfig(), DataConfig(), TrainingConfig(), ExecutionConfig()
        g = self._group = registry.create_group(SETTINGS_GROUP)
        self.gridsize = g.create_integer_parameter("Gridsize", m.gridsize, minimum=1, maximum=8)
        self.n_filters_scale = g.create_integer_parameter(
            "NFiltersScale", m.n_filters_scale, minimum=1
        )
        self.physics_iterations = g.create_integer_parameter(
            "PhysicsIterations", m.physics_iterations, minimum=0
        )
        self.loss = g.create_string_parameter("Loss", m.loss)
        self.max_epochs = g.create_integer_parameter("MaxEpochs", t.max_epochs, minimum=1)
        self.batch_size = g.create_integer_parameter("BatchSize", t.batch_size, minimum=1)
        self.learning_rate = g.create_real_parameter("LearningRate", e.learning_rate, minimum=0.0)
        self.val_fraction = g.create_real_parameter(
            "ValFraction", d.val_fraction, minimum=0.0, maximum=0.9
        )
        self.early_stopping = g.create_boolean_parameter("EarlyStopping", e.early_stopping)
        self.supervised_weight = g.create_real_parameter("SupervisedWeight", 1.0, minimum=0.0)
        self.refine_epochs = g.create_integer_parameter("RefineEpochs", 0, minimum=0)
        self.seed = g.create_integer_parameter("Seed", e.seed, minimum=0, maximum=2**32 - 1)
        self.accelerator = g.create_string_parameter("Accelerator", e.accelerator)
        self.config_file = g.create_string_parameter("ConfigFile", "")

    def _parameter(self, name: str):
        return self._group.parameters()[name]

    def run_config(self, supervised: bool):
        """The ptychopinn RunConfig of these settings (source ``Ptychodus settings``).

        Raises PtychoPINNError naming the setting (``PtychoPINNLightning.Loss: ...``) for a bad
        value, or the config file and key for a bad file.
        """
        from ptychopinn.config_factory import build_run_config

        overrides = {key: self._parameter(name).get_value() for name, key in self.KEYS.items()}
        overrides["model.loss"] = str(overrides["model.loss"]).strip().lower()
        overrides["execution.accelerator"] = str(overrides["execution.accelerator"]).strip().lower()
        overrides["training.supervised_weight"] = (
            float(self.supervised_weight.get_value()) if supervised else 0.0
        )
        overrides.update(self.FORCED)
        text = self.config_file.get_value().strip()
        config_file = Path(text).expanduser() if text else None
        if config_file is not None and not config_file.is_file():
            raise PtychoPINNError(f"{SETTINGS_GROUP}.ConfigFile: {config_file}: no such file")
        try:
            return build_run_config(
                overrides, config_file=config_file, override_source=SETTINGS_SOURCE
            )
        except ValueError as exc:
            message = str(exc)
            for name, key in self.KEYS.items():
                if message.startswith(key + ":"):
                    message = f"{SETTINGS_GROUP}.{name}:" + message[len(key) + 1 :]
                    break
            raise PtychoPINNError(message) from None


# --------------------------------------------------------------------------------------------
# conversions between Ptychodus objects and ScanData


def _metadata_attrs(metadata) -> dict:
    """ProductMetadata -> product.h5 root attributes (canonical names, as read_ptychodus keeps)."""
    attrs = {
        "name": str(metadata.name),
        "comments": str(metadata.comments),
        "detector_object_distance_m": float(metadata.detector_distance_m),
        "photon_energy_eV": float(metadata.photon_energy_eV),
        "probe_photon_count": float(metadata.probe_photon_count),
        "exposure_time_s": float(metadata.exposure_time_s),
        "mass_attenuation_m2_per_kg": float(metadata.mass_attenuation_m2_per_kg),
        "tomography_angle_deg": float(metadata.tomography_angle_deg),
        "tilt_angle_deg": float(getattr(metadata, "tilt_angle_deg", 0.0)),
        "focus_object_distance_m": float(getattr(metadata, "focus_object_distance_m", 0.0)),
        "far_field": bool(getattr(metadata, "far_field", True)),
    }
    polarization = getattr(metadata, "polarization", None)
    if polarization is not None:
        attrs["polarization"] = str(getattr(polarization, "value", polarization))
    return attrs


def input_grid(parameters: ReconstructInput) -> ObjectGrid:
    """The object grid (shape, pixel size, centre) of a ReconstructInput's product."""
    obj = parameters.product.object_
    array = obj.get_array()
    name = parameters.product.metadata.name
    if array.size == 0:
        raise DataError(
            name,
            "object",
            "the product has an empty object; Ptychodus must "
            "initialise the object (its grid places the positions) before reconstructing",
        )
    try:
        pixels, center = obj.get_pixel_geometry(), obj.get_center()
    except ValueError as exc:
        raise DataError(name, "object", f"no object geometry ({exc})") from None
    return ObjectGrid(array.shape[-2:], pixels.width_m, pixels.height_m, center.x_m, center.y_m)


def scan_from_reconstruct_input(
    parameters: ReconstructInput, *, source: str | None = None
) -> ScanData:
    """A ReconstructInput (as built by ``prepare_reconstruct_input``) as ScanData.

    Row i of the patterns pairs with ``product.probe_positions[i]``. Positions (metres) become
    object pixels of the product's object grid (:class:`ObjectGrid`, the convention of
    ``read_ptychodus``); patterns become float32 counts with the bad pixels set to 0 and
    masked; the probe is the incoherent modes of the first coherent mode; ``object_truth`` is
    the product's object (the product of its layers); ``scan_index`` the position indexes.
    ``metadata`` carries the grid and root attributes like ``read_ptychodus``, so
    ``write_product_for_scan`` / ``write_npz`` keep them.
    """
    product = parameters.product
    src = source or f"Ptychodus product {product.metadata.name!r}"
    grid = input_grid(parameters)
    patterns = np.asarray(parameters.diffraction_patterns)
    if patterns.ndim != 3 or patterns.shape[0] == 0:
        raise DataError(
            src, "diffraction_patterns", f"expected (n, H, W) patterns, got shape {patterns.shape}"
        )
    patterns = patterns.astype(np.float32)  # always a copy: bad pixels are zeroed below
    positions = product.probe_positions
    index = np.asarray(positions.get_indexes(), np.int64)
    if index.shape[0] != patterns.shape[0]:
        raise DataError(
            src,
            "probe_positions",
            f"{index.shape[0]} positions for {patterns.shape[0]} "
            "patterns; build the input with ptychodus.api.reconstruct.prepare_reconstruct_input",
        )
    x_m = np.asarray(positions.get_coordinates_x_m(), np.float64)
    y_m = np.asarray(positions.get_coordinates_y_m(), np.float64)
    bad = None
    if parameters.bad_pixels is not None and np.size(parameters.bad_pixels):
        bad = np.asarray(parameters.bad_pixels).astype(bool)
        if bad.shape != patterns.shape[1:]:
            raise DataError(
                src,
                "bad_pixels",
                f"shape {bad.shape} does not match the patterns {patterns.shape[1:]}",
            )
    probes = product.probes.get_array()
    if probes.ndim == 4:
        if probes.shape[0] > 1:
            log.info("%s: probe has %d coherent (OPR) modes; using the first", src, probes.shape[0])
        probes = probes[0]
    probe_pixels = product.probes.get_pixel_geometry()
    if not (
        math.isclose(probe_pixels.width_m, grid.pixel_width_m, rel_tol=1e-6)
        and math.isclose(probe_pixels.height_m, grid.pixel_height_m, rel_tol=1e-6)
    ):
        log.warning(
            "%s: probe pixels (%.6g x %.6g m) differ from object pixels (%.6g x %.6g m); "
            "the probe is used as if sampled on the object grid",
            src,
            probe_pixels.width_m,
            probe_pixels.height_m,
            grid.pixel_width_m,
            grid.pixel_height_m,
        )
    layers = product.object_.get_array()
    return assemble_scan(
        patterns=patterns,
        bad_pixels=bad,
        probe=probes,
        object_=np.prod(layers, axis=0) if layers.shape[0] > 1 else layers[0],
        grid=grid,
        attrs=_metadata_attrs(product.metadata),
        x_m=x_m,
        y_m=y_m,
        scan_index=index,
        object_layers=layers.shape[0],
        layer_spacing_m=product.object_.layer_spacing_m,
        probe_pixels_m=(probe_pixels.width_m, probe_pixels.height_m),
        units_read="counts",
        source=src,
    )


def product_on_input_grid(
    parameters: ReconstructInput, recon=None, losses: Sequence[LossValue] = ()
) -> Product:
    """The input product with ``recon``'s object put on its object grid (and ``losses``).

    ``recon``: a ``ptychopinn.reconstruction.Reconstruction`` (canvas + offset in grid pixels) or
    None (keep the input object). Metadata, positions and probes are the input's.
    """
    product = parameters.product
    if recon is None:
        obj = product.object_.copy()
    else:
        grid = input_grid(parameters)
        array = canvas_to_grid(recon.object, recon.offset_px, grid.shape_hw).astype(np.complex64)
        source = product.object_
        obj = Object(
            array=array,
            pixel_geometry=source.get_pixel_geometry().copy(),
            center=source.get_center().copy(),
        )
    return Product(
        metadata=product.metadata,
        probe_positions=product.probe_positions,
        probes=product.probes,
        object_=obj,
        losses=list(losses),
    )


def _check_ground_truth(scan: ScanData) -> None:
    """Supervised training needs a real object: reject a missing or uniform one."""
    if scan.object_truth is None:
        raise DataError(
            scan.source,
            "object",
            "supervised training needs a ground-truth object "
            "(objectGuess in NPZ files, the product's object in Ptychodus files)",
        )
    obj = scan.object_truth
    spread = float(np.abs(obj - obj.mean()).max())
    if spread <= 1e-6 * max(float(np.abs(obj).max()), 1e-12):
        raise DataError(
            scan.source,
            "object",
            "the object is uniform (an initial guess, not a ground "
            "truth); supervised training would teach the network the guess. Use the "
            f"{PINN} reconstructor, or a product whose object is a real reconstruction",
        )


def _scale_supervised_weight(rc, scans: list[ScanData]):
    """``SupervisedWeight`` is relative: the Poisson term's gradient grows with the counts per
    pixel (measured on 32 x 32 scans: 18x the supervised term's at 10 counts/pixel, 4200x at
    1000), so the weight given to training is SupervisedWeight x mean counts per pixel, which
    keeps 1.0 at comparable gradient sizes (within ~2x over that range)."""
    per_pixel = float(np.mean([s.mean_counts / s.patch_size**2 for s in scans]))
    weight = rc.training.supervised_weight * per_pixel
    log.info(
        "supervised weight %.4g = %s.SupervisedWeight %.4g x %.4g mean counts per pixel",
        weight,
        SETTINGS_GROUP,
        rc.training.supervised_weight,
        per_pixel,
    )
    return rc.with_values(SETTINGS_SOURCE, **{"training.supervised_weight": weight})


# --------------------------------------------------------------------------------------------
# background pipeline: training/refinement in a thread, events through a queue


class _Stopped(Exception):
    """Raised inside the pipeline thread once the consumer asked it to stop."""


class _Pipeline:
    """Runs ``target(pipeline)`` in a daemon thread; the consumer iterates :meth:`events`.

    ``close`` asks the target to stop (Lightning stops after the current batch, refinement after
    the current epoch) and joins the thread; the target's exceptions are re-raised by
    :meth:`events`.
    """

    def __init__(self, target, name: str):
        self._target = target
        self._events: queue.Queue = queue.Queue()
        self.stop_requested = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def _main(self):
        try:
            self._target(self)
        except _Stopped:
            log.info("stopped on request")
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            self._events.put(("_error", exc))
        finally:
            self._events.put(("_end", None))

    def start(self) -> "_Pipeline":
        self._thread.start()
        return self

    def post(self, kind: str, payload=None) -> None:
        self._events.put((kind, payload))

    def check_stop(self) -> None:
        if self.stop_requested.is_set():
            raise _Stopped()

    def events(self) -> Iterator[tuple[str, object]]:
        while True:
            kind, payload = self._events.get()
            if kind == "_end":
                return
            if kind == "_error":
                raise payload
            yield kind, payload

    def close(self) -> None:
        self.stop_requested.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()


def _fit(pipe: _Pipeline, scans: list[ScanData], rc):
    """fit() on ``scans`` writing no files (no output directory; FORCED turns off the Lightning
    logger and checkpoints); returns the TrainResult."""
    from ptychopinn.training.fit import fit
    from ptychopinn.training.progress import EpochReporter

    result = fit(
        scans,
        None,
        run_config=rc,
        output_dir=None,
        callbacks=[
            EpochReporter(
                lambda *epoch: pipe.post("epoch", epoch), pipe.stop_requested.is_set, logger=log
            )
        ],
        trainer_overrides={"enable_progress_bar": False, "enable_model_summary": False},
    )
    pipe.check_stop()  # a stopped fit returns normally; its half-trained model is dropped
    return result


def _device(accelerator: str) -> str:
    from ptychopinn.training.trainer import resolve_accelerator

    return resolve_accelerator(accelerator)


# --------------------------------------------------------------------------------------------
# training inputs


def training_scans(input_path: Path) -> list[ScanData]:
    """Scans for ``train``: Ptychodus's batch layout (``product.h5`` + ``diffraction.h5`` in the
    folder) and/or PtychoPINN NPZ files (the file itself, or every ``*.npz`` in the folder)."""
    from ptychopinn.data import load_scan

    path = Path(input_path)
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DataError(
                str(path),
                "file",
                "expected a PtychoPINN .npz training file or a folder "
                f"holding {BATCH_PRODUCT} + {BATCH_DIFFRACTION} and/or *.npz files",
            )
        return [load_scan(path)]
    if not path.is_dir():
        raise DataError(str(path), "file", "no such file or folder")
    scans = []
    product, diffraction = path / BATCH_PRODUCT, path / BATCH_DIFFRACTION
    if product.is_file() and diffraction.is_file():
        scans.append(load_scan(product=product, diffraction=diffraction))
    elif product.is_file() or diffraction.is_file():
        have, missing = (product, diffraction) if product.is_file() else (diffraction, product)
        log.warning("%s: found %s but no %s; ignoring it", path, have.name, missing.name)
    for npz in sorted(path.glob("*.npz")):
        scans.append(load_scan(npz))
    if not scans:
        raise DataError(
            str(path),
            "file",
            f"no training data: expected {BATCH_PRODUCT} + "
            f"{BATCH_DIFFRACTION} (Ptychodus batch layout) and/or *.npz files",
        )
    log.info("training data: %s", ", ".join(s.source for s in scans))
    return scans


# --------------------------------------------------------------------------------------------
# reconstructors


class PtychoPINNReconstructor(TrainableReconstructor):
    """One PtychoPINN reconstructor (PINN or Supervised; see the module docstring)."""

    def __init__(self, settings: PtychoPINNSettings, supervised: bool = False) -> None:
        self._settings = settings
        self._supervised = supervised
        self._bundle = None
        self._active_goal: int | None = None

    @property
    def name(self) -> str:
        return SUPERVISED if self._supervised else PINN

    @property
    def bundle(self):
        """The loaded ``ModelBundle`` (None until a model is trained or loaded)."""
        return self._bundle

    # progress --------------------------------------------------------------------------
    def get_progress_goal(self) -> int:
        """The last progress value of the running (else the next) reconstruct/train."""
        if self._active_goal is not None:
            return self._active_goal
        return self._reconstruct_goal()

    def _reconstruct_goal(self) -> int:
        epochs = 0 if self._bundle is not None else self._settings.max_epochs.get_value()
        return epochs + 1 + self._settings.refine_epochs.get_value()

    # reconstruct -----------------------------------------------------------------------
    def reconstruct(self, parameters: ReconstructInput) -> Iterator[ReconstructOutput]:
        """Yield products with strictly increasing progress; the last has progress == goal.

        Progress: training epochs 1..E (no model loaded), E + 1 the network's stitched object,
        then one step per refinement epoch.
        """
        scan = scan_from_reconstruct_input(parameters)
        if scan.metadata["object_layers"] > 1:
            log.warning(
                "%s: the input object has %d layers; reconstructing one (projected) layer",
                scan.source,
                scan.metadata["object_layers"],
            )
        bundle = self._bundle
        if bundle is None and self._supervised:
            raise PtychoPINNError(
                f"{LIBRARY_NAME} {SUPERVISED}: no model loaded; train one (Train) "
                f"or load one (Load Model), or use {LIBRARY_NAME} {PINN} to "
                "reconstruct without a model (self-supervised)"
            )
        settings = self._settings
        rc = settings.run_config(supervised=False) if bundle is None else None
        refine_epochs = settings.refine_epochs.get_value()
        seed = settings.seed.get_value()
        accelerator = (
            rc.execution.accelerator
            if rc is not None
            else str(settings.accelerator.get_value()).strip().lower()
        )
        epochs = rc.training.max_epochs if rc is not None else 0
        goal = epochs + 1 + refine_epochs
        if bundle is not None:
            batch = inference_batch_size(bundle.execution.get("inference_batch_size"))
            log.info(
                "%s %s: reconstructing %d patterns with the loaded model",
                LIBRARY_NAME,
                self.name,
                scan.n_patterns,
            )
        else:
            batch = inference_batch_size(rc.infer.inference_batch_size)
            log.info(
                "%s %s: no model loaded; training on this scan (%d patterns, %d epochs), "
                "then reconstructing",
                LIBRARY_NAME,
                self.name,
                scan.n_patterns,
                epochs,
            )

        def target(pipe: _Pipeline):
            from ptychopinn.reconstruction.gradient import GradientEngine
            from ptychopinn.reconstruction.network import NetworkEngine

            device = _device(accelerator)
            model = bundle
            if model is None:
                # the product's object is an initial guess here, not a label
                model = _fit(pipe, [replace(scan, object_truth=None)], rc).bundle
            network = NetworkEngine(model, batch_size=int(batch), seed=seed, device=device)
            recon = network.run(scan)
            pipe.post("network", recon)
            pipe.check_stop()
            if refine_epochs:

                def progress(epoch, total, info):
                    pipe.post("refine_epoch", (epoch, info["loss"]))
                    pipe.check_stop()

                engine = GradientEngine(epochs=refine_epochs, seed=seed, device=device, quiet=False)
                recon = engine.run(scan, recon, progress=progress)
                pipe.post("refined", recon)

        self._active_goal = goal
        pipe = _Pipeline(target, name=f"ptychopinn-{self.name.lower()}-reconstruct")
        losses: list[LossValue] = []
        recon, last, trained_epochs = None, 0, 0
        try:
            pipe.start()
            for kind, payload in pipe.events():
                if kind == "epoch":
                    epoch, train, _ = payload
                    trained_epochs = epoch
                    if train is not None and math.isfinite(train):
                        losses.append(LossValue(epoch, train))
                    progress = epoch
                elif kind == "network":
                    recon, progress = payload, epochs + 1
                elif kind == "refine_epoch":
                    epoch, loss = payload
                    if math.isfinite(loss):
                        losses.append(LossValue(trained_epochs + epoch, loss))
                    progress = epochs + 1 + epoch
                    if progress >= goal:  # the "refined" event reports the last step
                        continue
                elif kind == "refined":
                    recon, progress = payload, goal
                else:
                    continue
                if progress <= last:
                    continue
                last = progress
                yield ReconstructOutput(
                    product_on_input_grid(parameters, recon, losses), progress, 0
                )
        finally:
            pipe.close()
            self._active_goal = None

    # models ----------------------------------------------------------------------------
    def is_model_loaded(self) -> bool:
        return self._bundle is not None

    def get_model_file_filter(self) -> str:
        return MODEL_FILE_FILTER

    def get_model_file_extension(self) -> str:
        return MODEL_EXTENSION

    def load_model_from_file(self, file_path: Path) -> None:
        from ptychopinn.io.bundle import load_bundle

        self._bundle = load_bundle(file_path)
        m = self._bundle.model_config
        log.info("loaded model %s (N=%d, gridsize %d)", file_path, m.n, m.gridsize)

    def save_model(self, file_path: Path) -> None:
        """Write the loaded model (``.ptpinn`` appended when missing); replaces an existing file
        with a warning, as Ptychodus's save dialog has already asked."""
        from ptychopinn.io.bundle import save_bundle

        if self._bundle is None:
            raise PtychoPINNError(
                f"{LIBRARY_NAME} {self.name}: no model to save; train or load one first"
            )
        path = Path(file_path)
        if path.suffix != MODEL_EXTENSION:
            path = path.with_name(path.name + MODEL_EXTENSION)
        if path.exists():
            log.warning("replacing %s", path)
        saved = save_bundle(self._bundle, path, overwrite=True)
        log.info("saved model %s", saved)

    # training --------------------------------------------------------------------------
    def get_training_data_file_filter(self) -> str:
        return TRAINING_DATA_FILE_FILTER

    def export_training_data(self, file_path: Path, parameters: ReconstructInput) -> None:
        """Write the input scan as a PtychoPINN NPZ (counts; the product's object as
        ``objectGuess``, its grid and attributes in the metadata) that ``read_npz`` reads."""
        from ptychopinn.data.npz import write_npz

        path = Path(file_path)
        if path.exists():
            log.warning("replacing %s", path)
        write_npz(scan_from_reconstruct_input(parameters), path, overwrite=True)
        log.info("exported training data %s", path)

    def train(self, input_path: Path, output_path: Path) -> Iterator[TrainOutput]:
        """Train on ``input_path`` (see :func:`training_scans`), yielding the loss curves so far
        after every epoch (progress = epoch; the last output has progress == goal = MaxEpochs + 1
        once ``output_path/model.ptpinn`` and ``output_path/config.resolved.yaml`` are written;
        an existing model file is replaced with a warning). The model stays loaded. Closing the
        generator stops training; nothing is written then."""
        scans = training_scans(Path(input_path))
        if self._supervised:
            for scan in scans:
                _check_ground_truth(scan)
        else:
            # the object of a Ptychodus product is usually an initial guess, not a label
            scans = [
                replace(s, object_truth=None)
                if s.metadata.get("source_format") == SOURCE_FORMAT
                else s
                for s in scans
            ]
        rc = self._settings.run_config(supervised=self._supervised)
        if self._supervised:
            rc = _scale_supervised_weight(rc, scans)
        epochs = rc.training.max_epochs
        goal = epochs + 1
        out_dir = Path(output_path)
        log.info(
            "%s %s: training on %d scan(s), %d epochs", LIBRARY_NAME, self.name, len(scans), epochs
        )

        def target(pipe: _Pipeline):
            pipe.post("trained", _fit(pipe, scans, rc))

        self._active_goal = goal
        pipe = _Pipeline(target, name=f"ptychopinn-{self.name.lower()}-train")
        training, validation = [], []
        try:
            pipe.start()
            for kind, payload in pipe.events():
                if kind == "epoch":
                    epoch, train, val = payload
                    if train is not None and math.isfinite(train):
                        training.append(LossValue(epoch, train))
                    if val is not None and math.isfinite(val):
                        validation.append(LossValue(epoch, val))
                    yield TrainOutput(list(training), list(validation), epoch, 0)
                elif kind == "trained":
                    from ptychopinn.config_factory import write_audit

                    self._bundle = payload.bundle
                    out_dir.mkdir(parents=True, exist_ok=True)
                    self.save_model(out_dir / f"model{MODEL_EXTENSION}")
                    audit = write_audit(
                        payload.run_config,
                        out_dir,
                        {**payload.runtime, "output_dir": str(out_dir.resolve())},
                    )
                    log.info("wrote %s", audit)
                    yield TrainOutput(list(training), list(validation), goal, 0)
        finally:
            pipe.close()
            self._active_goal = None


class PtychoPINNLibrary(ReconstructorLibrary):
    """The ``PtychoPINNLightning`` reconstructor library: PINN and Supervised.

    Same constructor signature as Ptychodus's own libraries; logs through the ``ptychopinn``
    package logger (Ptychodus attaches its log view to it).
    """

    def __init__(
        self, settings_registry: SettingsRegistry, is_developer_mode_enabled: bool = False
    ) -> None:
        super().__init__(LOGGER_NAME)
        self.settings = PtychoPINNSettings(settings_registry)
        self.pinn = PtychoPINNReconstructor(self.settings, supervised=False)
        self.supervised = PtychoPINNReconstructor(self.settings, supervised=True)
        from ptychopinn import __version__

        log.info(
            "%s %s (ptychopinn %s)", LIBRARY_NAME, ", ".join(r.name for r in self), __version__
        )

    @property
    def name(self) -> str:
        return LIBRARY_NAME

    def __iter__(self) -> Iterator[Reconstructor]:
        return iter((self.pinn, self.supervised))


# --------------------------------------------------------------------------------------------
# launcher support: add the library to Ptychodus's processing core


def add_library(
    libraries: Sequence[ReconstructorLibrary], settings_registry: SettingsRegistry
) -> list:
    """``libraries`` plus a new :class:`PtychoPINNLibrary` (unless one is there already)."""
    out = list(libraries)
    if not any(lib.name == LIBRARY_NAME for lib in out):
        out.append(PtychoPINNLibrary(settings_registry))
    return out


def wrap_processing_core(original):
    """A drop-in for ``ProcessingCore(task_manager, settings_registry, product_api,
    algorithm_libraries)`` that adds our library to ``algorithm_libraries``."""

    def processing_core(
        task_manager, settings_registry, product_api, algorithm_libraries, *args, **kwargs
    ):
        return original(
            task_manager,
            settings_registry,
            product_api,
            add_library(algorithm_libraries, settings_registry),
            *args,
            **kwargs,
        )

    processing_core.__wrapped__ = original
    return processing_core


@contextlib.contextmanager
def patch_ptychodus(core_module=None):
    """While active, Ptychodus's ModelCore builds its ProcessingCore with our library added.

    ``core_module``: the module whose ``ProcessingCore`` name ModelCore uses (default
    ``ptychodus.model.core``, which needs the full Ptychodus install).
    """
    if core_module is None:
        import ptychodus.model.core as core_module
    original = core_module.ProcessingCore
    core_module.ProcessingCore = wrap_processing_core(original)
    try:
        yield
    finally:
        core_module.ProcessingCore = original


def finalize_batch_output(output_dir: Path, since: float) -> Path | None:
    """Copy the last per-step product of a batch reconstruction to ``output_dir/product.h5``.

    Ptychodus 1.7's batch mode saves every yielded product as ``product.NNNNNN.h5`` (NNNNNN =
    progress) and never the final ``product.h5`` that its own remote workflows expect. Only
    files written since ``since`` (``time.time()``) count. Returns the written path, or None.
    """
    output_dir = Path(output_dir)
    steps = []
    for path in output_dir.glob("product.*.h5"):
        middle = path.name[len("product.") : -len(".h5")]
        if middle.isdigit() and path.stat().st_mtime >= since - 1:
            steps.append((int(middle), path))
    if not steps:
        return None
    final = output_dir / BATCH_PRODUCT
    if final.exists():
        if final.stat().st_mtime >= since - 1:
            return None  # written by this run
        log.warning("replacing %s with the result of this run", final)
    last = max(steps)[1]
    tmp = final.with_name(f".{final.name}.{time.time_ns()}.tmp")
    shutil.copyfile(last, tmp)
    tmp.replace(final)
    log.info("wrote %s (the last step, %s)", final, last.name)
    return final


__all__ = [
    "LIBRARY_NAME",
    "PINN",
    "SUPERVISED",
    "PtychoPINNLibrary",
    "PtychoPINNReconstructor",
    "PtychoPINNSettings",
    "scan_from_reconstruct_input",
    "product_on_input_grid",
    "input_grid",
    "training_scans",
    "add_library",
    "wrap_processing_core",
    "patch_ptychodus",
    "finalize_batch_output",
]
