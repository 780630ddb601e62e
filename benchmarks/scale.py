"""How time and memory grow with the scan: simulate, train (1 epoch), infer, refine (5 epochs
from flat) and infer_refine (infer + 5 refinement epochs from the network's object) at M
patterns, each command in its own process, wall time and peak RSS measured.

    python benchmarks/scale.py --sizes 1000 4000 16000 --patch-size 32 \
        --output benchmarks/results/scale.json

Peak RSS is the command process's maximum resident set (``resource.getrusage`` of the child,
kilobytes on Linux). The growth ratio t(M) / t(M / 4) is printed for each command: linear cost
gives 4.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = ("simulate", "train", "infer", "refine", "infer_refine")
RUNNER = """
import resource, subprocess, sys, time
t = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
wall = time.perf_counter() - t
print(f"{code} {wall:.3f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
"""


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one command in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, *cmd], capture_output=True, text=True, check=True
    )
    code, wall, rss_kb = out.stdout.strip().splitlines()[-1].split()
    if int(code) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {code}:\n{out.stderr[-2000:]}")
    return float(wall), int(rss_kb) / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000, 64000])
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument(
        "--train-size",
        type=int,
        default=1000,
        help="patterns of the training scan (the model infer uses; default 1000)",
    )
    p.add_argument(
        "--commands",
        nargs="+",
        default=list(COMMANDS),
        choices=list(COMMANDS),
        help="which commands to time (default all)",
    )
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args()
    exe = [sys.executable, "-m", "ptychopinn.cli.main"]
    n = str(args.patch_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = tmp / "train.npz"
        subprocess.run(
            [
                *exe,
                "simulate",
                "--output",
                str(train),
                "--patch-size",
                n,
                "--n-positions",
                str(args.train_size),
                "--seed",
                "1",
                "--quiet",
            ],
            check=True,
        )
        model = tmp / "model"
        subprocess.run(
            [
                *exe,
                "train",
                "--train-data",
                str(train),
                "--output-dir",
                str(model),
                "--max-epochs",
                "1",
                "--logger",
                "none",
                "--quiet",
            ],
            check=True,
        )
        for m in args.sizes:
            scan = tmp / f"scan{m}.npz"
            infer = [
                *exe,
                "infer",
                "--model",
                str(model / "model.ptpinn"),
                "--data",
                str(scan),
                "--quiet",
            ]
            steps = {
                "simulate": [
                    *exe,
                    "simulate",
                    "--output",
                    str(scan),
                    "--patch-size",
                    n,
                    "--n-positions",
                    str(m),
                    "--seed",
                    "2",
                    "--quiet",
                ],
                "train": [
                    *exe,
                    "train",
                    "--train-data",
                    str(scan),
                    "--output-dir",
                    str(tmp / f"m{m}"),
                    "--max-epochs",
                    "1",
                    "--logger",
                    "none",
                    "--quiet",
                ],
                "infer": [*infer, "--output-dir", str(tmp / f"i{m}")],
                # refinement from the network's object: LocalAdam
                "infer_refine": [
                    *infer,
                    "--output-dir",
                    str(tmp / f"ir{m}"),
                    "--refine-epochs",
                    "5",
                    "--refine-probe",
                    "off",
                ],
                "refine": [
                    *exe,
                    "reconstruct",
                    "--data",
                    str(scan),
                    "--output-dir",
                    str(tmp / f"r{m}"),
                    "--refine-epochs",
                    "5",
                    "--refine-probe",
                    "off",
                    "--quiet",
                ],
            }
            for name, cmd in steps.items():
                if name not in args.commands and name != "simulate":
                    continue
                wall, rss = measure(cmd)
                rows.append(
                    {
                        "command": name,
                        "patterns": m,
                        "patch_size": args.patch_size,
                        "seconds": round(wall, 2),
                        "patterns_per_second": round(m / wall, 1),
                        "peak_rss_mb": round(rss, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    for name in dict.fromkeys(r["command"] for r in rows):
        series = [r for r in rows if r["command"] == name]
        for a, b in zip(series, series[1:], strict=False):
            print(
                f"{name}: t({b['patterns']}) / t({a['patterns']}) = "
                f"{b['seconds'] / a['seconds']:.2f} "
                f"for {b['patterns'] / a['patterns']:.0f}x the patterns"
            )
    if args.output:
        record = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "command": " ".join(["python", "benchmarks/scale.py", *sys.argv[1:]]),
            "rows": rows,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=1) + "\n")
        print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
