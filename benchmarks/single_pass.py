#!/usr/bin/env python3
"""Throughput of the network's single pass (not a test): ``stitched_pass`` (grouping, physics
estimate, generator, stitching) on a held-out simulated scan, with an untrained generator of the
default width (the cost does not depend on the weights), median of ``--repeats`` runs.

    python benchmarks/single_pass.py [--patch-size 64] [--patterns 1024] [--threads 2]
        [--precision bf16-mixed]

Prints end-to-end patterns/s and the rate the pass reports for its network part.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ptychopinn.config import DataConfig, ModelConfig
from ptychopinn.models.registry import build_generator
from ptychopinn.reconstruction.network import stitched_pass
from ptychopinn.workflows import simulate_train_test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--patterns", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--precision",
        default="32-true",
        choices=["32-true", "bf16-mixed"],
        help="the network's arithmetic (InferConfig.inference_precision)",
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    _, scan = simulate_train_test(a.patch_size, 300, 1, a.patterns, 1e6, 0)
    config = ModelConfig(n=a.patch_size)
    generator = build_generator(config.generator, **config.generator_kwargs()).eval()
    neighbors = DataConfig().neighbors
    stitched_pass(config, neighbors, generator, scan, precision=a.precision)  # warm-up
    seconds, network_rate = [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        recon = stitched_pass(config, neighbors, generator, scan, precision=a.precision)
        seconds.append(time.perf_counter() - t0)
        network_rate.append(recon.metadata["patterns_per_second"])
    row = {
        "patch_size": a.patch_size,
        "patterns": scan.n_patterns,
        "threads": a.threads,
        "precision": a.precision,
        "seconds": round(float(np.median(seconds)), 2),
        "patterns_per_second": round(scan.n_patterns / float(np.median(seconds)), 1),
        "network_part_patterns_per_second": round(float(np.median(network_rate)), 1),
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
