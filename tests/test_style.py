"""The code's shape, checked: lint and format (ruff, configured in pyproject.toml) and the layering
of the packages (docs/architecture.md): who may import whom."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ptychopinn"
CODE = ["src", "tests", "benchmarks"]


def _ruff(*args) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.fail(
            "ruff is not installed: it is part of the [test] extra (pip install -e '.[test]')"
        )
    return subprocess.run([exe, *args, *CODE], cwd=ROOT, capture_output=True, text=True)


def test_ruff_lint_passes():
    """pyflakes, import order, bugbear and line length 100 (pyproject.toml [tool.ruff.lint])."""
    out = _ruff("check", "--no-cache", "--output-format", "concise")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_code_is_ruff_formatted():
    """`ruff format` leaves every file as it is (run it before committing)."""
    out = _ruff("format", "--check", "--no-cache")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def _imports(path: Path) -> set[str]:
    """Absolute module names a source file imports (anywhere in it, lazily or not)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _package_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


#: Which of our packages each package may import (docs/architecture.md); a top-level module is
#: its own package. Absent from a package's set = forbidden.
ALLOWED = {
    "errors": set(),
    "log": set(),
    "registry": {"errors"},
    "config": {"errors"},
    "physics": {"errors", "registry"},
    "models": {"errors", "log", "registry"},
    # a bundle builds its network from the model registry
    "io": {"errors", "log", "config", "models", "registry"},
    "data": {"errors", "log", "config", "registry", "physics", "io"},
    "evaluation": {"errors", "log", "config", "physics", "data", "io"},
}
# the layers above: each may import what the one below it may, and that one
# the engines: no Lightning, no training, no workflows
ALLOWED["reconstruction"] = (
    ALLOWED["data"] | ALLOWED["evaluation"] | {"models", "data", "evaluation"}
)
ALLOWED["training"] = ALLOWED["reconstruction"] | {"reconstruction", "config_factory"}
ALLOWED["workflows"] = ALLOWED["training"] | {"training"}
#: Third-party packages confined to one home.
CONFINED = {
    "lightning": {"training", "cli"},
    # the CLI's `ptychopinn ptychodus` starts the Ptychodus application
    "ptychodus": {"integrations", "cli"},
}


def test_packages_import_only_downwards():
    """Each package imports only the packages below it (ALLOWED; the order of
    docs/architecture.md); the library never imports the CLI; Lightning only in training (and
    the CLI's execution code); ptychodus only in integrations."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        pkg = _package_of(path)
        for name in _imports(path):
            top, _, rest = name.partition(".")
            if top == "ptychopinn":
                ours = rest.split(".")[0]
                if not ours or ours == pkg:
                    continue
                if ours == "cli" and pkg != "cli":
                    problems.append(f"{path.relative_to(ROOT)} imports the CLI ({name})")
                if pkg in ALLOWED and ours not in ALLOWED[pkg]:
                    problems.append(f"{path.relative_to(ROOT)} ({pkg}) imports {name}")
            elif top in CONFINED and pkg not in CONFINED[top]:
                problems.append(f"{path.relative_to(ROOT)} ({pkg}) imports {name}")
    assert not problems, "\n".join(problems)


def test_package_is_typed():
    assert (PACKAGE / "py.typed").exists()
