"""`import ptychopinn` stays light: heavy optional libraries load only when a feature needs them."""

import subprocess
import sys

HEAVY = ("matplotlib", "torch.utils.tensorboard", "tensorboard", "mlflow", "ptychodus", "skimage")


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_ptychopinn_is_light():
    assert _loaded_after("import ptychopinn") == []


def test_cli_parser_is_light():
    # building the full CLI parser (every subcommand) must not pull in heavy libraries either
    assert _loaded_after("from ptychopinn.cli.main import build_parser; build_parser()") == []


def test_cli_parser_does_not_import_torch():
    # `ptychopinn --help` and every argument error answer without the 2 s torch import
    code = (
        "import sys\nfrom ptychopinn.cli.main import build_parser\nbuild_parser()\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
