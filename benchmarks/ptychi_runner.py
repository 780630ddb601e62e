"""Run pty-chi (LSQML or ePIE) on one scan given as plain arrays; for the side-by-side benchmarks.

Runs in a separate environment that has ``ptychi`` (see docs/performance.md: install ptychi with
``torchvision==0.28.0``, uninstall torchvision, put ``benchmarks/ptychi_shim`` on PYTHONPATH;
torch stays 2.13.0). It does not import ptychopinn: input and output are NPZ files of plain arrays.

Input NPZ: ``counts`` (M, N, N) with the zero frequency at the centre, ``positions_xy`` (M, 2)
probe centres in object pixels (x, y), ``probe`` (K, N, N) complex guess, ``canvas_hw`` (2,)
object buffer size, ``origin_xy`` (2,) buffer pixel of position (0, 0).
Output NPZ: ``object`` (H, W) complex64 (buffer pixel = position + origin_xy), ``probe``
(K, N, N), ``positions_xy`` (M, 2) (as given, or corrected with ``--correct-positions``),
``seconds`` (wall time of task.run, set-up excluded), ``epoch_seconds``; with
``--snapshot-epochs`` also ``snapshot_epochs`` (S,) and ``snapshots`` (S, H, W), the object after
those epochs (the copies' time is not counted in ``seconds``/``epoch_seconds``).

    python benchmarks/ptychi_runner.py IN.npz OUT.npz --algorithm lsqml --epochs 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def run(
    inp: dict,
    algorithm: str,
    epochs: int,
    batch_size: int,
    refine_probe: bool,
    probe_start: int,
    seed: int,
    time_limit_s: float | None,
    correct_positions: bool = False,
    position_start: int = 10,
    position_limit_px: float | None = 0.1,
    position_correction: str = "gradient",
    noise_model: str = "gaussian",
    snapshot_epochs: tuple = (),
) -> dict:
    import ptychi.api as api
    from ptychi.api.task import PtychographyTask

    torch.manual_seed(seed)
    counts = np.asarray(inp["counts"], np.float32)
    pos = np.asarray(inp["positions_xy"], np.float64)
    probe = np.asarray(inp["probe"], np.complex64)
    h, w = (int(v) for v in inp["canvas_hw"])
    ox, oy = (float(v) for v in inp["origin_xy"])
    options = api.LSQMLOptions() if algorithm == "lsqml" else api.EPIEOptions()
    options.data_options.data = counts
    options.data_options.fft_shift = True  # our patterns have the zero frequency at the centre
    options.object_options.initial_guess = torch.ones((1, h, w), dtype=torch.complex64)
    options.object_options.pixel_size_m = 1.0
    options.object_options.optimizable = True
    options.object_options.optimizer = api.Optimizers.SGD
    options.object_options.determine_position_origin_coords_by = (
        api.enums.ObjectPosOriginCoordsMethods.SPECIFIED
    )
    options.object_options.position_origin_coords = np.array([oy, ox])
    options.probe_options.initial_guess = probe[None]
    options.probe_options.optimizable = refine_probe
    options.probe_options.optimizer = api.Optimizers.SGD
    options.probe_options.optimization_plan.start = probe_start
    options.probe_position_options.position_x_px = pos[:, 0]
    options.probe_position_options.position_y_px = pos[:, 1]
    options.probe_position_options.optimizable = correct_positions
    if correct_positions:
        ppo = options.probe_position_options
        ppo.optimization_plan.start = position_start
        ppo.correction_options.correction_type = api.enums.PositionCorrectionTypes(
            position_correction
        )
        ppo.correction_options.update_magnitude_limit = position_limit_px
    options.reconstructor_options.batch_size = batch_size
    options.reconstructor_options.num_epochs = epochs
    if algorithm == "lsqml":
        options.object_options.step_size = 1.0
        options.probe_options.step_size = 1.0
        options.reconstructor_options.noise_model = api.NoiseModels(noise_model)
    else:
        options.object_options.step_size = 0.1
        options.object_options.alpha = 1.0
        options.probe_options.step_size = 0.1
        options.probe_options.alpha = 1.0
    task = PtychographyTask(options)
    epoch_seconds, snapshots, taken = [], [], []
    copying = 0.0  # time spent on snapshots, not counted
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        task.run(1)
        epoch_seconds.append(time.perf_counter() - t0 - copying)
        if epoch in snapshot_epochs:
            c0 = time.perf_counter()
            snapshots.append(task.get_data_to_cpu("object", as_numpy=True)[0].astype(np.complex64))
            taken.append(epoch)
            copying += time.perf_counter() - c0
        if time_limit_s is not None and epoch_seconds[-1] >= time_limit_s:
            break
    obj = task.get_data_to_cpu("object", as_numpy=True)[0]
    out_probe = task.get_data_to_cpu("probe", as_numpy=True)[0]
    yx = task.get_data_to_cpu("probe_positions", as_numpy=True)
    return {
        "positions_xy": np.stack([yx[:, 1], yx[:, 0]], axis=1).astype(np.float64),
        "object": obj.astype(np.complex64),
        "probe": out_probe.astype(np.complex64),
        "seconds": epoch_seconds[-1],
        "epoch_seconds": np.asarray(epoch_seconds),
        **(
            {"snapshot_epochs": np.asarray(taken), "snapshots": np.stack(snapshots)}
            if snapshots
            else {}
        ),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--algorithm", choices=["lsqml", "epie"], default="lsqml")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--refine-probe", action="store_true")
    p.add_argument("--probe-start", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit-s", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--correct-positions", action="store_true")
    p.add_argument("--position-start", type=int, default=10)
    p.add_argument(
        "--position-limit-px", type=float, default=0.1, help="pty-chi's update_magnitude_limit"
    )
    p.add_argument(
        "--position-correction", choices=["gradient", "cross_correlation"], default="gradient"
    )
    p.add_argument(
        "--noise-model", choices=["gaussian", "poisson"], default="gaussian", help="LSQML's"
    )
    p.add_argument(
        "--snapshot-epochs",
        default="",
        help="comma-separated epochs after which the object is kept (e.g. 5,10,20)",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with np.load(args.input, allow_pickle=False) as z:
        inp = {k: z[k] for k in z.files}
    out = run(
        inp,
        args.algorithm,
        args.epochs,
        args.batch_size,
        args.refine_probe,
        args.probe_start,
        args.seed,
        args.time_limit_s,
        args.correct_positions,
        args.position_start,
        args.position_limit_px,
        args.position_correction,
        args.noise_model,
        tuple(int(e) for e in args.snapshot_epochs.split(",") if e),
    )
    np.savez(args.output, **out)
    print(f"{args.algorithm}: {len(out['epoch_seconds'])} epochs in {out['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
