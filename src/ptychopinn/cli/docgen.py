"""Generate ``docs/cli-reference.md`` from the real argument parsers.

    python -m ptychopinn.cli.docgen > docs/cli-reference.md

Everything in the reference comes from ``ptychopinn.cli.main.build_parser()``: subcommands, every
option string (hidden aliases and deprecated spellings included), type, default, choices and help.
Flags of config fields (``cli/execution_args.py``) carry no argparse default (so that only the
flags given on the command line override a ``--config`` file); their default is the dataclass
default, written as it appears in ``config.resolved.yaml``. ``tests/test_docs.py`` fails when the
committed file differs from a fresh generation.
"""

from __future__ import annotations

import argparse
import sys
import typing
import warnings

HEADER = """\
# CLI reference

<!-- GENERATED FILE: do not edit. Regenerate with
     python -m ptychopinn.cli.docgen > docs/cli-reference.md
     (tests/test_docs.py fails when this file is out of date). -->

Every subcommand and option of `ptychopinn`, generated from the argument parsers
(`ptychopinn.cli.main.build_parser()`). Run `ptychopinn COMMAND --help` for the same text in a
terminal.

- **default**: what the program uses when the option is not given. For the options of
  `ptychopinn train` that set a config field, it is the dataclass default, written as in
  `config.resolved.yaml` (`null` = none); the precedence command-line flag > `--config` file >
  default is specified in [execution-config.md](execution-config.md).
- **type**: how the value is parsed. `on/off` options come in pairs: `--deterministic` turns the
  setting on, `--no-deterministic` off.
- Exit codes: 0 success, 2 bad input (argument, file or value; one line on stderr, no
  traceback unless `PTYCHOPINN_DEBUG=1` is set), 1 internal error (a bug: the traceback is
  printed), 130 interrupted (Ctrl-C; `train` leaves no bundle and keeps `last.ckpt`).
"""


def _yaml(value) -> str:
    from ptychopinn.config_factory import _yaml_scalar

    if hasattr(value, "__fspath__"):
        value = str(value)
    return _yaml_scalar(value)


def _hint_text(hint) -> str:
    import types

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_hint_text(a) for a in typing.get_args(hint))
    if origin is tuple:
        return "list of int"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _config_key(action: argparse.Action) -> str | None:
    from ptychopinn.cli.execution_args import DEST_PREFIX

    dest = action.dest or ""
    return dest[len(DEST_PREFIX) :] if dest.startswith(DEST_PREFIX) else None


def _type_text(action: argparse.Action) -> str:
    from pathlib import Path

    from ptychopinn.cli import common
    from ptychopinn.config_factory import _hint

    if isinstance(action, argparse.BooleanOptionalAction):
        return "on/off"
    if isinstance(action, argparse._StoreConstAction) and _config_key(action):  # noqa: SLF001
        return f"switch: sets `{_yaml(action.const)}`"
    if action.nargs == 0:
        return "switch"
    key = _config_key(action)
    if key is not None:
        text = _hint_text(_hint(key))
    else:
        known = {
            Path: "path",
            int: "int",
            float: "float",
            str: "string",
            None: "string",
            common.positive_int: "int >= 1",
            common.nonneg_int: "int >= 0",
            common.positive_float: "float > 0",
        }
        if action.type in known:
            text = known[action.type]
        elif getattr(action.type, "__name__", "") == "_fraction":
            text = "float in (0, 1)"
        else:
            text = getattr(action.type, "__name__", str(action.type))
    if action.nargs == argparse.REMAINDER:
        text = "the rest of the command line"
    elif action.nargs == "+":
        text += ", one or more"
    elif action.nargs == "*":
        text += ", any number"
    return text


def _choices(action: argparse.Action) -> list | None:
    from ptychopinn.cli.execution_args import CHOICES

    if action.choices is not None:
        return list(action.choices)
    key = _config_key(action)
    return CHOICES.get(key) if key else None


def _default_text(action: argparse.Action) -> str:
    from ptychopinn.cli.execution_args import DEFAULT_TEXT
    from ptychopinn.config_factory import SECTIONS

    if action.required and action.nargs not in (argparse.REMAINDER, "*", "?"):
        return "required"
    key = _config_key(action)
    if key is not None:
        section, name = key.split(".", 1)
        value = getattr(SECTIONS[section](), name)
        text = f"`{_yaml(value)}`"
        if key in DEFAULT_TEXT:
            text += f" ({DEFAULT_TEXT[key]})"
        return text
    if action.default is argparse.SUPPRESS or action.nargs == argparse.REMAINDER:
        return ""
    return f"`{_yaml(action.default)}`"


def _cell(text) -> str:
    """One Markdown table cell: one line, pipes escaped, no accidental HTML or emphasis."""
    text = " ".join(str(text).split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")


def _options_cell(action: argparse.Action) -> str:
    if not action.option_strings:  # a positional argument
        return f"`{action.metavar or action.dest}` (positional)"
    return ", ".join(f"`{o}`" for o in action.option_strings)


def _visible_action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action | None:
    for action in parser._actions:  # noqa: SLF001 - argparse has no public accessor
        if action.dest == dest and action.help is not argparse.SUPPRESS and action.option_strings:
            return action
    return None


def _describe_hidden(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """What a hidden option does, found by running its action on an empty namespace."""
    sample = None if action.nargs == 0 else "VALUE"
    namespace = argparse.Namespace()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if type(action) is argparse._StoreAction:  # noqa: SLF001 - a plain alias
            setattr(namespace, action.dest, sample)
        else:
            action(parser, namespace, sample, action.option_strings[0])
    parts = []
    for dest, value in vars(namespace).items():
        target = _visible_action(parser, dest)
        flag = target.option_strings[0] if target is not None else dest
        if isinstance(target, argparse.BooleanOptionalAction) and isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            parts.append(f"{flag} {value}")
    text = "same as " + " ".join(f"`{p}`" for p in parts)
    deprecations = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    if deprecations:
        return "deprecated, warns: " + "; ".join(f'"{m}"' for m in deprecations) + "; " + text
    return "accepted alias (PtychoPINN spelling, hidden from `--help`); " + text


def _synopsis(name: str, parser: argparse.ArgumentParser) -> str:
    parts = [f"ptychopinn {name}"]
    positionals = []
    for action in parser._actions:  # noqa: SLF001
        if action.required and action.option_strings:
            metavar = action.metavar or action.dest.upper()
            parts.append(f"{action.option_strings[0]} {metavar}")
        elif not action.option_strings:
            positionals.append(action.metavar or action.dest)
    return " ".join(parts + ["[options]"] + positionals)


def _group_table(parser: argparse.ArgumentParser, actions: list) -> list[str]:
    lines = ["| option | type | default | choices | description |", "|---|---|---|---|---|"]
    for action in actions:
        choices = _choices(action)
        lines.append(
            "| "
            + " | ".join(
                [
                    _options_cell(action),
                    _cell(_type_text(action)),
                    _cell(_default_text(action)),
                    _cell(", ".join(f"`{c}`" for c in choices)) if choices else "",
                    _cell(action.help or ""),
                ]
            )
            + " |"
        )
    return lines


def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            helps = {a.dest: a.help for a in action._choices_actions}  # noqa: SLF001
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name, "")


def generate(parser: argparse.ArgumentParser | None = None) -> str:
    """The Markdown text of the CLI reference."""
    if parser is None:
        from ptychopinn.cli.main import build_parser

        parser = build_parser()
    out = [HEADER]
    subs = list(_subcommands(parser))
    out.append("## Subcommands\n")
    out.append("| command | purpose |")
    out.append("|---|---|")
    for name, _, help_text in subs:
        out.append(f"| [`ptychopinn {name}`](#ptychopinn-{name}) | {_cell(help_text)} |")
    out.append("")
    top = [a for a in parser._actions if a.option_strings]  # noqa: SLF001
    out.append(
        "Options of `ptychopinn` itself: "
        + "; ".join(f"{_options_cell(a)} ({a.help})" for a in top)
        + ". Every subcommand also takes "
        "`-h`, `--help`.\n"
    )

    for name, sub, _help in subs:
        out.append(f"## ptychopinn {name}\n")
        out.append(f"```text\n{_synopsis(name, sub)}\n```\n")
        if sub.description:
            out.append(_cell(sub.description) + "\n")
        if sub.epilog:
            out.append("\n".join(line.rstrip() for line in sub.epilog.strip().splitlines()) + "\n")
        hidden = []
        for group in sub._action_groups:  # noqa: SLF001
            actions = []
            for action in group._group_actions:  # noqa: SLF001
                if isinstance(action, argparse._HelpAction):  # noqa: SLF001
                    continue
                if action.help is argparse.SUPPRESS:
                    hidden.append(action)
                    continue
                actions.append(action)
            if not actions:
                continue
            title = "options" if group.title in ("options", "optional arguments") else group.title
            out.append(f"### {name}: {title}\n")
            out.extend(_group_table(sub, actions))
            out.append("")
        if hidden:
            out.append(f"### {name}: hidden aliases and deprecated spellings\n")
            out.append("| option | behaviour |")
            out.append("|---|---|")
            for action in hidden:
                out.append(f"| {_options_cell(action)} | {_cell(_describe_hidden(sub, action))} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    sys.stdout.write(generate())
    return 0


if __name__ == "__main__":
    sys.exit(main())
