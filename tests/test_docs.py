"""Docs that stay true: the CLI reference, the execution-config spec and every code block.

- docs/cli-reference.md must equal a fresh ``python -m ptychopinn.cli.docgen``;
- every ``--flag`` mentioned in README.md or docs/*.md must exist in a parser;
- the field tables of docs/execution-config.md must match the config dataclasses (names, types,
  defaults, flags), and its scheduler, logger and deprecation tables what the code does;
- every ```bash / ```python block runs (shell commands in-process through ``ptychopinn.cli.main``
  with the tiny sizes of TINY_ADD, Python with TINY_KEYWORDS), unless an HTML comment right before
  it says ``<!-- not-run: reason -->`` (its ``ptychopinn`` lines are then only parsed);
  ``<!-- expect-exit: N -->`` runs a block as written and checks the exit code and that the
  following ```text block's lines appear on stderr; ``<!-- file: NAME -->`` writes a block to a
  file for the commands after it. The blocks of one page (README.md and quickstart.md together)
  run in order in one temporary directory, and its Python blocks share one namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import re
import shlex
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from ptychopinn.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"

#: Flags of other programs that the docs mention (pip, tensorboard, mlflow, ptychodus).
EXTERNAL_FLAGS = {
    "--no-deps",
    "--no-binary",
    "--logdir",
    "--backend-store-uri",
    "--output-directory",
}
#: Flags of the benchmark scripts quoted on the performance page (checked against their source).
BENCHMARK_FLAGS = {
    "--train-positions",
    "--test-positions",
    "--max-epochs",
    "--patch-size",
    "--output",
}
#: Flags of benchmarks/scenario_suite.py and benchmarks/scenarios.py quoted in the docs.
SCENARIO_FLAGS = {"--output", "--only", "--threads", "--output-dir"}

#: Options added (or replaced) per subcommand so that documented commands run in seconds.
TINY_ADD = {
    "simulate": {"--patch-size": "16", "--n-positions": "25"},
    "train": {"--max-epochs": "1", "--n-filters-scale": "1"},
    "reconstruct": {"--refine-epochs": "1"},
    "reconstruct --network": {"--max-epochs": "1"},
    "demo": {
        "--patch-size": "16",
        "--n-positions": "25",
        "--n-train-scans": "1",
        "--test-positions": "25",
        "--max-epochs": "1",
        "--refine-epochs": "1",
    },
}
#: Options replaced where a documented command gives them.
TINY_REPLACE = {"--refine-epochs": "1"}
#: Keyword values replaced in Python snippets and YAML files (``name=V``, ``"name": V``,
#: ``name: V``).
TINY_KEYWORDS = {
    "max_epochs": "1",
    "n_filters_scale": "1",
    "patch_size": "16",
    "n_positions": "25",
    "epochs": "1",
}
#: Shell command prefixes that runnable blocks may contain but this test does not execute.
SKIPPED_COMMANDS = {
    "pip install": "installation is exercised by .ci/run",
    "python -m pytest": "the test suite itself",
}
#: Pages whose blocks share one working directory, in this order.
SCENARIOS = {"README.md + quickstart.md": [README, DOCS / "quickstart.md"]}


# --- Markdown parsing ------------------------------------------------------------------------
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*([\w-]+)\s*:?\s*(.*?)\s*-->$")


def code_blocks(path: Path) -> list[dict]:
    """Fenced blocks of a Markdown file: language, text, marker (the HTML comment right before)."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = MARKER.match(lines[k].strip()) if k >= 0 else None
        blocks.append(
            {
                "lang": m.group(1).lower(),
                "text": "\n".join(lines[i + 1 : j]),
                "line": i + 1,
                "marker": (marker.group(1), marker.group(2)) if marker else None,
            }
        )
        i = j + 1
    return blocks


def all_pages() -> list[Path]:
    return [README] + sorted(DOCS.glob("*.md"))


def prose(text: str) -> str:
    """Markdown without fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """Cells of the rows of every table whose header line starts with ``header_start``."""
    rows, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(header_start):
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                cells = re.split(r"(?<!\\)\|", row.strip().strip("|"))
                rows.append([c.strip().replace("\\|", "|") for c in cells])
    return rows


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# --- parsers ---------------------------------------------------------------------------------
def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    raise AssertionError("no subcommands")


def all_option_strings() -> set[str]:
    parser = build_parser()
    out = {o for a in parser._actions for o in a.option_strings}  # noqa: SLF001
    for sub in subparsers(parser).values():
        out |= {o for a in sub._actions for o in a.option_strings}  # noqa: SLF001
    return out


# --- the CLI reference -----------------------------------------------------------------------
def test_cli_reference_is_current():
    from ptychopinn.cli.docgen import generate

    committed = (DOCS / "cli-reference.md").read_text()
    assert committed == generate(), (
        "docs/cli-reference.md is out of date with the argument parsers; regenerate it with\n"
        "    python -m ptychopinn.cli.docgen > docs/cli-reference.md"
    )


def test_cli_reference_lists_every_subcommand_and_option():
    text = (DOCS / "cli-reference.md").read_text()
    for name, sub in subparsers(build_parser()).items():
        assert f"## ptychopinn {name}\n" in text
        for action in sub._actions:  # noqa: SLF001
            if isinstance(action, argparse._HelpAction):  # noqa: SLF001 - stated once at the top
                continue
            for option in action.option_strings:
                assert f"`{option}`" in text, f"{name} {option} missing from the CLI reference"
    assert "<function" not in text and "object at 0x" not in text


def test_cli_reference_shows_dataclass_defaults():
    """Config flags have no argparse default; the reference must show the dataclass default."""
    text = (DOCS / "cli-reference.md").read_text()
    train = text[text.index("## ptychopinn train") :]
    train = train[: train.index("\n## ", 3)]
    rows = {r[0]: r for r in table_rows(train, "| option |")}
    assert rows["`--learning-rate`"][2] == "`0.001`"
    assert rows["`--checkpoint-monitor`"][2] == "`val_loss`"
    assert rows["`--scheduler`"][3].startswith("`Default`")
    assert "ReduceLROnPlateau" in rows["`--scheduler`"][3]
    assert (
        "deprecated" in rows["`--device`"][1] and "`--accelerator VALUE`" in rows["`--device`"][1]
    )


def test_benchmark_flags_exist():
    source = (DOCS.parent / "benchmarks" / "quality.py").read_text()
    for name in BENCHMARK_FLAGS:
        assert f'"{name}"' in source, name


def test_scenario_benchmark_flags_exist():
    source = "".join(
        (DOCS.parent / "benchmarks" / name).read_text()
        for name in ("scenario_suite.py", "scenarios.py")
    )
    for name in SCENARIO_FLAGS:
        assert f'"{name}"' in source, name


def _benchmark_flags() -> set[str]:
    """Every ``"--flag"`` string the benchmark scripts define (which script a documented command
    names is checked by test_documented_benchmark_commands_use_flags_the_scripts_define)."""
    text = "".join(p.read_text() for p in (DOCS.parent / "benchmarks").glob("*.py"))
    return set(re.findall(r'"(--[a-z][a-z0-9-]*)"', text))


def test_documented_flags_exist():
    known = (
        all_option_strings()
        | EXTERNAL_FLAGS
        | BENCHMARK_FLAGS
        | SCENARIO_FLAGS
        | _benchmark_flags()
    )
    flag = re.compile(r"(?<![\w-])--[A-Za-z][A-Za-z0-9_-]*")
    unknown = {}
    for page in all_pages():
        for found in flag.findall(page.read_text()):
            if found not in known:
                unknown.setdefault(page.name, set()).add(found)
    assert not unknown, f"flags documented but not in any parser: {unknown}"


# --- the execution-config spec ---------------------------------------------------------------
def _spec() -> str:
    return (DOCS / "execution-config.md").read_text()


def _field_rows() -> dict[str, list[str]]:
    rows = table_rows(_spec(), "| field | type | default | CLI flag |")
    out = {}
    for row in rows:
        name = code_spans(row[0])[0]
        assert name not in out, f"{name} documented twice"
        out[name] = row
    return out


def _documented_sections():
    from ptychopinn.config_factory import SECTIONS

    return [(s, cls, "" if s == "execution" else f"{s}.") for s, cls in SECTIONS.items()]


def test_every_config_field_documented_with_its_type_and_default():
    rows = _field_rows()
    expected = set()
    for section, cls, prefix in _documented_sections():
        for f in fields(cls):
            name = prefix + f.name
            expected.add(name)
            assert name in rows, f"{section}.{f.name} is not documented in docs/execution-config.md"
            _, type_cell, default_cell, *_ = rows[name]
            assert code_spans(type_cell) == [str(f.type)], f"{name}: type {type_cell} != {f.type}"
            assert f.default is not MISSING
            assert code_spans(default_cell) == [repr(f.default)], (
                f"{name}: documented default {default_cell}, real default {f.default!r}"
            )
    assert set(rows) == expected, f"documented fields that do not exist: {set(rows) - expected}"


#: the commands that take each section's flags (docs/execution-config.md)
SECTION_COMMANDS = {
    "model": ("train",),
    "data": ("train",),
    "training": ("train",),
    "execution": ("train",),
    "refine": ("infer", "reconstruct"),
    "infer": ("train", "infer", "reconstruct"),
}


def test_documented_config_flags_exist_on_the_commands_of_their_section():
    from ptychopinn.config_factory import SECTIONS, flag_name

    assert set(SECTION_COMMANDS) == set(SECTIONS)
    commands = subparsers(build_parser())
    for section, cls, prefix in _documented_sections():
        for name in SECTION_COMMANDS[section]:
            options = {o for a in commands[name]._actions for o in a.option_strings}  # noqa: SLF001
            for f in fields(cls):
                key = f"{section}.{f.name}"
                cell = _field_rows()[prefix + f.name][3]
                flags = [c for c in code_spans(cell) if c.startswith("--")]
                if key == "model.n":
                    assert not flags
                    continue
                assert flag_name(key) in flags, f"{key}: flag {flag_name(key)} not documented"
                for flag in flags:
                    assert flag in options, (
                        f"{key}: documented flag {flag} is not an option of {name}"
                    )


def test_scheduler_worked_example_matches_the_schedulers():
    import torch
    import yaml

    from ptychopinn.config import ExecutionConfig
    from ptychopinn.training.optim import build_optimizer, build_scheduler

    rows = table_rows(_spec(), "| settings | epoch 0 |")
    assert len(rows) == 5
    seen = set()
    for row in rows:
        settings = yaml.safe_load("{" + code_spans(row[0])[0] + "}")
        config = ExecutionConfig(learning_rate=0.001, **settings)
        seen.add(config.scheduler)
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = build_optimizer([param], config)
        scheduler = build_scheduler(config.scheduler, optimizer, config, 6)
        for epoch, cell in enumerate(row[1:]):
            lr = optimizer.param_groups[0]["lr"]
            assert math.isclose(lr, float(cell), rel_tol=1e-3), (row[0], epoch, lr, cell)
            optimizer.step()
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(1.0)  # a monitored metric that never improves
            elif scheduler is not None:
                scheduler.step()
    from ptychopinn.config import SCHEDULER_NAMES

    assert seen == set(SCHEDULER_NAMES)


def test_scheduler_and_logger_tables_name_the_real_names():
    from ptychopinn.config import LOGGER_NAMES, SCHEDULER_ALIASES, SCHEDULER_NAMES

    schedulers = [code_spans(r[0]) for r in table_rows(_spec(), "| name | parameters")]
    assert [s[0] for s in schedulers] == list(SCHEDULER_NAMES)
    for alias, target in SCHEDULER_ALIASES.items():
        assert any(s[0] == target and alias in s for s in schedulers)
    loggers = [code_spans(r[0])[0] for r in table_rows(_spec(), "| `logger` | writes |")]
    assert loggers == list(LOGGER_NAMES)


def test_deprecated_spellings_do_what_the_spec_says():
    import warnings

    rows = table_rows(_spec(), "| spelling | status | same as |")
    assert rows
    parser = build_parser()

    def parsed(tokens):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ns = parser.parse_args(["train", "--output-dir", "out"] + tokens)
        values = {k: v for k, v in vars(ns).items() if k != "run"}
        return values, [w for w in caught if issubclass(w.category, DeprecationWarning)]

    for spelling, status, same in rows:
        old = shlex.split(code_spans(spelling)[0].replace("VALUE", "cpu"))
        new = shlex.split(code_spans(same)[0].replace("VALUE", "cpu"))
        if old[0] in ("--train_data_file", "--train-data"):
            old, new = old + ["a.npz"], new + ["a.npz"]
        elif len(old) == 1 and old[0] not in ("--disable_mlflow",):
            old, new = old + ["3"], new + ["3"]
        old_values, old_warnings = parsed(old)
        new_values, _ = parsed(new)
        assert old_values == new_values, (spelling, old_values, new_values)
        if status.startswith("deprecated"):
            assert old_warnings and code_spans(same)[0].split()[0] in str(old_warnings[0].message)
        else:
            assert not old_warnings


def test_quickstart_demo_settings_match_the_demo():
    from ptychopinn.workflows import DemoSettings

    rows = table_rows((DOCS / "quickstart.md").read_text(), "| setting | default | flag |")
    documented = {code_spans(r[0])[0]: r for r in rows}
    demo = subparsers(build_parser())["demo"]
    defaults = {a.option_strings[0]: a.default for a in demo._actions if a.option_strings}  # noqa: SLF001
    for f in fields(DemoSettings):
        if f.name == "quiet":
            continue
        assert f.name in documented, f"demo setting {f.name} missing from quickstart.md"
        _, default_cell, flag_cell = documented[f.name]
        assert code_spans(default_cell) == [repr(f.default)], (f.name, default_cell, f.default)
        flags = code_spans(flag_cell)
        if flags:  # the flag exists and its default is the setting's
            assert defaults[flags[0]] == f.default, (f.name, flags[0], defaults[flags[0]])
    assert set(documented) <= {f.name for f in fields(DemoSettings)}


# --- links and quoted messages ---------------------------------------------------------------
def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_internal_links_resolve():
    for page in all_pages():
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(text)):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if path.startswith("images/") or "/images/" in path:
                assert dest.parent == DOCS / "images", target  # pictures are added by the demo run
                continue
            assert dest.exists(), f"{page.name}: broken link {target}"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", prose(dest.read_text()), flags=re.M)
                assert anchor in {_slug(h.replace("`", "")) for h in headings}, (
                    f"{page.name}: no heading for #{anchor} in {dest.name}"
                )


def _joined_source() -> str:
    text = "\n".join(p.read_text() for p in (ROOT / "src" / "ptychopinn").rglob("*.py"))
    # adjacent string literals ("...: "\n    f"...") form one message
    return re.sub(r"""(["'])\s*\n\s*[rf]?(["'])""", "", text)


def test_troubleshooting_quotes_messages_the_code_raises():
    source = _joined_source()
    headings = re.findall(r"^### `([^`]+)`", (DOCS / "troubleshooting.md").read_text(), flags=re.M)
    assert len(headings) > 15
    for heading in headings:
        for fragment in heading.split("…"):
            fragment = fragment.strip()
            if len(fragment) >= 4:
                assert fragment in source, f"troubleshooting quotes {fragment!r}, not found in src/"


# --- code blocks -----------------------------------------------------------------------------
def _tiny_keywords(text: str) -> str:
    for name, value in TINY_KEYWORDS.items():
        text = re.sub(rf"""(\b{name}["']?\s*[:=]\s*)[^,)}}\]\s#]+""", rf"\g<1>{value}", text)
    return text


def _tiny_argv(argv: list[str]) -> list[str]:
    argv = list(argv)
    command = argv[0]
    if command == "reconstruct" and "--network" in argv:
        command = "reconstruct --network"
    options = dict(TINY_ADD.get(command, {}))
    if command == "train" and "--resume-from" in argv:
        options["--max-epochs"] = "2"  # one epoch more than the run it continues
    for option, value in list(options.items()) + list(TINY_REPLACE.items()):
        if option in argv:
            argv[argv.index(option) + 1] = value
        elif option in options:
            argv += [option, value]
    if "--quiet" not in argv:
        argv.append("--quiet")
    return argv


def _commands(text: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments dropped, split on &&."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out += [part.strip() for part in line.split("&&")]
    return out


def _run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


def _parse_only(command: str, where: str) -> None:
    argv = shlex.split(command)
    if argv[0] != "ptychopinn":
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{where}: `{command}` does not parse: {err.getvalue().strip()}")


def _run_page_blocks(page: Path) -> None:
    blocks = code_blocks(page)
    namespace = {"__name__": "__docs__"}  # the Python blocks of a page build on each other
    for i, block in enumerate(blocks):
        where = f"{page.name}:{block['line']}"
        kind, arg = block["marker"] or (None, "")
        if kind == "file":
            Path(arg).write_text(_tiny_keywords(block["text"]) + "\n")
            continue
        if block["lang"] not in ("bash", "sh", "shell", "console", "python", "py"):
            continue
        if kind == "not-run":
            assert arg, f"{where}: not-run needs a reason"
            for command in _commands(block["text"]) if block["lang"] != "python" else []:
                _parse_only(command, where)
            continue
        if block["lang"] in ("python", "py"):
            code = compile(_tiny_keywords(block["text"]), where, "exec")
            with contextlib.redirect_stdout(io.StringIO()):
                exec(code, namespace)  # noqa: S102 - the docs' own snippet
            continue
        commands = _commands(block["text"])
        if kind == "expect-exit":
            *setup, last = commands
            for command in setup:
                assert _run_cli(shlex.split(command)[1:])[0] == 0, f"{where}: `{command}` failed"
            code, stderr = _run_cli(shlex.split(last)[1:])
            assert code == int(arg), f"{where}: `{last}` exited {code}, expected {arg}: {stderr}"
            following = blocks[i + 1] if i + 1 < len(blocks) else None
            assert following and following["lang"] == "text", (
                f"{where}: expected output block missing"
            )
            for line in following["text"].splitlines():
                if line.strip():
                    assert line.strip() in stderr, (
                        f"{where}: {line.strip()!r} not in stderr:\n{stderr}"
                    )
            continue
        for command in commands:
            skip = next((p for p in SKIPPED_COMMANDS if command.startswith(p)), None)
            if skip:
                continue
            argv = shlex.split(command)
            assert argv[0] == "ptychopinn", (
                f"{where}: `{command}` is not a ptychopinn command; mark the block "
                "<!-- not-run: reason --> or teach tests/test_docs.py to run it"
            )
            code, stderr = _run_cli(_tiny_argv(argv[1:]))
            assert code == 0, f"{where}: `{command}` exited {code}: {stderr.strip()[-2000:]}"


def _scenarios() -> dict[str, list[Path]]:
    grouped = {p for pages in SCENARIOS.values() for p in pages}
    out = dict(SCENARIOS)
    for page in all_pages():
        if page not in grouped and page.name != "cli-reference.md":
            out[page.name] = [page]
    return out


@pytest.fixture
def one_thread(torch_threads):
    """Tiny tensors: one intra-op thread is faster, and avoids OpenMP spinning on shared cores."""
    with torch_threads(1):
        yield


@pytest.mark.parametrize("name", sorted(_scenarios()))
def test_code_blocks_run(name, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    for page in _scenarios()[name]:
        _run_page_blocks(page)


def test_block_markers_are_known():
    for page in all_pages():
        for block in code_blocks(page):
            if block["marker"]:
                assert block["marker"][0] in ("not-run", "expect-exit", "file"), (
                    f"{page.name}:{block['line']}: unknown marker {block['marker']}"
                )
            if block["lang"] in (
                "bash",
                "sh",
                "shell",
                "console",
                "python",
                "py",
                "yaml",
                "text",
                "",
            ) or block["lang"] in ("json",):
                continue
            pytest.fail(
                f"{page.name}:{block['line']}: unexpected code block language {block['lang']!r}"
            )


def test_runner_really_fails_on_a_broken_command(tmp_path, monkeypatch):
    """The block runner must not pass vacuously."""
    monkeypatch.chdir(tmp_path)
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\nptychopinn infer --model nothing --data none.npz --output-dir o\n```\n"
    )
    with pytest.raises(AssertionError, match="exited 2"):
        _run_page_blocks(page)
    page.write_text("<!-- not-run: demo -->\n```bash\nptychopinn train --no-such-flag\n```\n")
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        _run_page_blocks(page)


def test_documented_benchmark_commands_use_flags_the_scripts_define():
    """Every ``python benchmarks/NAME.py --flag`` in the docs names a flag NAME.py defines."""
    pattern = re.compile(r"python benchmarks/(\w+)\.py([^`\n]*)")
    seen = 0
    for page in [*all_pages(), DOCS.parent / "tests" / "data" / "README.md"]:
        for script, rest in pattern.findall(page.read_text()):
            source = (DOCS.parent / "benchmarks" / f"{script}.py").read_text()
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
                assert f'"{flag}"' in source, f"{page.name}: {script}.py has no {flag}"
                seen += 1
    assert seen >= 5


def test_architecture_where_to_add_table_names_real_modules_and_registries():
    """docs/architecture.md "Where do I add ...": each row's registry exists, is a Registry with
    entries, and lives in the module the row names; the layout table names every package."""
    import importlib

    from ptychopinn.registry import Registry

    text = (DOCS / "architecture.md").read_text()
    rows = table_rows(text, "| to add | put it in | register it with | its contract |")
    assert len(rows) >= 8
    for row in rows:
        where, registry = code_spans(row[1])[0], code_spans(row[2])[0]
        module, _, name = ("ptychopinn." + registry).rpartition(".")
        reg = getattr(importlib.import_module(module), name)
        assert isinstance(reg, Registry) and len(reg) > 0, registry
        path = module.removeprefix("ptychopinn.").replace(".", "/")
        assert path.startswith(where.removesuffix("/").removesuffix(".py").split(" ")[0]), row
    layout = table_rows(text, "| module | role |")
    named = {c.split("/")[0].removesuffix(".py") for row in layout for c in code_spans(row[0])}
    package = Path(__file__).resolve().parents[1] / "src" / "ptychopinn"
    ours = {p.stem for p in package.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()
    }
    assert ours <= named, f"not in the architecture layout: {ours - named}"
