"""The network pass on several devices: Lightning's predict loop under a DDP strategy.

Every process runs its share of the covering groups (Lightning's distributed sampler for
prediction gives each group to exactly one process), and a prediction writer puts each
pattern's patch into one file-backed ``SpillArray`` that all processes map: nothing is gathered
through the process group, and rank 0 stitches from the file afterwards.

The processes get the scan by reference where they can: with ``ddp_spawn`` the groups' dataset
pickles a memory-mapped diffraction array (an uncompressed NPZ member, a contiguous HDF5
dataset) as its file, offset and shape (``io.scratch.portable``); other arrays travel pickled.
With ``ddp`` Lightning starts each further process by running the same command again, so each
reads the scan file itself; the patch file's path reaches them in ``PATCH_FILE_ENV``.
"""

from __future__ import annotations

import os

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from ptychopinn.config import ModelConfig
from ptychopinn.data.scan import ScanData
from ptychopinn.io.scratch import portable, unportable
from ptychopinn.io.spill import SpillArray
from ptychopinn.physics.forward import init_gain, probe_weight
from ptychopinn.reconstruction.network import pass_groups, predict_group_patches
from ptychopinn.training.trainer import ProcessSetup

#: environment variable naming the patch file to the processes a ``ddp`` launcher starts
PATCH_FILE_ENV = "PTYCHOPINN_PATCH_FILE"


class CoveringGroupItems(Dataset):
    """Items of the covering groups (``network.covering_groups``): ``counts`` (C, N, N) read
    from the scan when asked, ``offsets`` (C, 2), ``index`` (C,) pattern indices and ``take``
    (C,) which of them this group's patches provide."""

    def __init__(self, diffraction, indices, offsets, take):
        self.diffraction = diffraction
        self.indices, self.offsets, self.take = indices, offsets, take

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        idx = self.indices[i]
        return {
            "counts": torch.from_numpy(np.asarray(self.diffraction[idx], dtype=np.float32)),
            "offsets": torch.as_tensor(self.offsets[i], dtype=torch.float32),
            "index": torch.as_tensor(idx),
            "take": torch.as_tensor(self.take[i]),
        }

    def __getstate__(self):
        return {**self.__dict__, "diffraction": portable(self.diffraction)}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.diffraction = unportable(self.diffraction)


class PatchPredictor(L.LightningModule):
    """``network.predict_group_patches`` of a batch of groups, as a predict step."""

    def __init__(
        self, net, mc: ModelConfig, probe, a0: float, gain: float, bad_pixels, precision: str
    ):
        super().__init__()
        self.net, self.mc, self.a0, self.gain = net, mc, float(a0), float(gain)
        self.precision = precision
        # plain attributes, not buffers: every process has them already (DDP's start-up
        # broadcast of buffers is not needed, and refuses the probe's complex view)
        self.probe = torch.as_tensor(probe).clone()
        self.weight = probe_weight(self.probe)
        self.bad = None if bad_pixels is None else torch.as_tensor(bad_pixels).clone()

    def on_predict_start(self):
        self.probe, self.weight = self.probe.to(self.device), self.weight.to(self.device)
        if self.bad is not None:
            self.bad = self.bad.to(self.device)

    def predict_step(self, batch, batch_idx):
        counts = batch["counts"]
        if self.bad is not None:
            counts = counts.masked_fill(self.bad, 0.0)
        return predict_group_patches(
            self.net,
            self.mc,
            counts,
            self.a0,
            batch["offsets"],
            self.probe,
            self.weight,
            self.gain,
            bad_pixels=self.bad,
            precision=self.precision,
        )


class PatchWriter(BasePredictionWriter):
    """Writes each batch's kept patches into the shared ``store`` by pattern index and counts
    them in ``written`` (one row per process); the processes meet at a barrier when their share
    is written."""

    def __init__(self, store: SpillArray, written: SpillArray):
        super().__init__(write_interval="batch")
        self.store, self.written, self.count = store, written, 0

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        take = batch["take"].cpu()
        rows = batch["index"].cpu()[take].numpy()
        self.store.write(rows, prediction.cpu()[take])
        self.count += len(rows)

    def on_predict_end(self, trainer, pl_module):
        self.written.write([trainer.global_rank], torch.tensor([self.count]))
        trainer.strategy.barrier("ptychopinn-patches-written")


def distributed_patch_store(
    mc: ModelConfig,
    neighbors: int,
    net: torch.nn.Module,
    scan: ScanData,
    *,
    accelerator: str,
    devices: int,
    strategy: str = "auto",
    batch_size: int,
    seed: int = 0,
    quiet: bool = True,
    precision: str = "32-true",
) -> tuple[SpillArray, list[int]] | None:
    """``reconstruction.network.group_patch_store`` on ``devices`` processes of
    ``accelerator`` (Lightning's names) under ``strategy``: the same patches (each group's,
    from the same seeded grouping), in a file-backed SpillArray, and the number of patterns
    each process predicted (the network in ``precision``). Returns None in the processes a
    ``ddp`` launcher started (rank > 0): only rank 0 goes on to stitch."""
    groups, order, take = pass_groups(mc, neighbors, scan, seed)
    shape = (scan.n_patterns, mc.n, mc.n)
    inherited = os.environ.get(PATCH_FILE_ENV)
    if inherited:
        paths = inherited.split(os.pathsep)
        store = SpillArray.attach(paths[0], shape)
        written = SpillArray.attach(paths[1], (devices,), np.int64)
    else:
        store = SpillArray(shape, np.complex64, memory_bytes=0)
        written = SpillArray((devices,), np.int64, memory_bytes=0)
        os.environ[PATCH_FILE_ENV] = os.pathsep.join((store.path, written.path))
    items = CoveringGroupItems(
        scan.diffraction, groups.indices[order], groups.offsets_px[order], take
    )
    module = PatchPredictor(
        net,
        mc,
        scan.probe,
        scan.amplitude_scale(),
        init_gain(scan.mean_counts, scan.probe),
        scan.bad_pixels,
        precision,
    )
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not quiet,
        callbacks=[PatchWriter(store, written), ProcessSetup(quiet)],
    )
    try:
        trainer.predict(
            module,
            dataloaders=DataLoader(items, batch_size=batch_size, shuffle=False),
            return_predictions=False,
        )
    except BaseException:
        store.close()
        written.close()
        raise
    finally:
        if not inherited:
            os.environ.pop(PATCH_FILE_ENV, None)
    if trainer.global_rank != 0:
        return None
    per_process = written.read(slice(None)).tolist()
    written.close()
    if sum(per_process) != scan.n_patterns:  # every pattern is in exactly one kept group
        store.close()
        raise RuntimeError(
            f"distributed network pass wrote {sum(per_process)} of {scan.n_patterns} patches"
        )
    return store, per_process
