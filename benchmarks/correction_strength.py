"""How the network's held-out quality depends on the strength of its learned correction and on
what the overlap constraint averages at inference, for the models a ``network_suite.py`` run
trained (its ``--work`` folder).

    python benchmarks/correction_strength.py --models network-suite-run
        --output benchmarks/results/network_suite_correction_strength.json [--only CASE ...]

The ``cnn`` generator outputs its physics-estimate input corrected by its last layer, which is
linear: scaling that layer's weights and bias by a factor s gives a family of networks between
the trained one (s = 1) and the estimate itself (s = 0). For each case of the suite, each s in
STRENGTHS and each ``model.overlap_constraint`` (``correction``: average the network's change of
the estimate; ``patches``: average its output patches), the held-out scan of the case
(``scenarios.py``) is reconstructed in one pass and measured against its truth (phase SSIM,
phase PSNR, complex NRMSE). The bundle's own validation check is copied beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios  # noqa: E402
from network_suite import DEFAULT_CASES, held_out_scan, measure  # noqa: E402
from ptychopinn.io.bundle import load_bundle  # noqa: E402
from ptychopinn.reconstruction.network import reconstruct  # noqa: E402

#: strengths of the learned correction (1: as trained, 0: the estimate)
STRENGTHS = (1.0, 0.75, 0.5, 0.25, 0.0)
CONSTRAINTS = ("patches", "correction")


def scaled(bundle, strength: float, constraint: str):
    """The bundle with its generator's head scaled by ``strength`` and the given constraint."""
    state = {k: v * strength if k.startswith("head.") else v for k, v in bundle.state_dict.items()}
    mc = dataclasses.replace(bundle.model_config, overlap_constraint=constraint)
    return dataclasses.replace(bundle, model_config=mc, state_dict=state)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, required=True, help="a network_suite.py --work folder")
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--only", nargs="*", choices=sorted(scenarios.SCENARIOS), default=None)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cases = {}
    for name in a.only or DEFAULT_CASES:
        scan, truth = held_out_scan(name)
        bundle = load_bundle(a.models / name / "model" / "model.ptpinn")
        held_out = {}
        for constraint in CONSTRAINTS:
            for s in STRENGTHS:
                r = reconstruct(scaled(bundle, s, constraint), scan)
                m = measure(r.object, r.offset_px, r.illumination, truth)
                held_out[f"{constraint} {s}"] = {
                    k: m[k] for k in ("phase_ssim", "phase_psnr", "complex_nrmse")
                }
                print(name, constraint, s, held_out[f"{constraint} {s}"], flush=True)
        cases[name] = {
            "trained_with": bundle.model_config.overlap_constraint,
            "validation_check": bundle.execution.get("validation_check"),
            "held_out": held_out,
        }
        a.output.parent.mkdir(parents=True, exist_ok=True)
        a.output.write_text(json.dumps({"command": " ".join(sys.argv), "cases": cases}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
