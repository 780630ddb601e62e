"""``ptychopinn`` entry point: subcommand registry, one-line errors, exit codes.

Exit codes: 0 success, 1 internal error (a bug; traceback printed), 2 bad input (argument, file,
value; one line, traceback with ``PTYCHOPINN_DEBUG=1``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback

from ptychopinn import __version__

#: subcommand name -> module under ptychopinn.cli providing ``add_parser`` and ``run``.
SUBCOMMANDS = {
    "simulate": "simulate",
    "train": "train",
    "infer": "infer",
    "evaluate": "evaluate",
    "reconstruct": "reconstruct",
    "demo": "demo",
    "ptychodus": "ptychodus",
}


class OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="ptychopinn", description="Physics-informed neural-network ptychography."
    )
    parser.add_argument("--version", action="version", version=f"ptychopinn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for _name, module in SUBCOMMANDS.items():
        importlib.import_module(f"ptychopinn.cli.{module}").add_parser(sub)
    return parser


@contextlib.contextmanager
def _restored_process_settings():
    """Logger levels and warning filters that a subcommand sets (``configure_cli_logging``) are
    undone when ``main`` returns, so in-process callers (tests, notebooks) keep their own."""
    import logging
    import warnings

    from ptychopinn.log import LOGGER_NAME, quiet_levels

    names = list(quiet_levels(True))
    saved = {n: logging.getLogger(n).level for n in names}
    root = logging.getLogger(LOGGER_NAME)
    handlers, propagate = list(root.handlers), root.propagate
    try:
        with warnings.catch_warnings():
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
        root.handlers[:] = handlers
        root.propagate = propagate


def _debug() -> bool:
    return os.environ.get("PTYCHOPINN_DEBUG", "").strip() not in ("", "0")


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. User errors (``PtychoPINNError`` and OS errors such as a missing or
    unwritable file) print one line and return 2; ``PTYCHOPINN_DEBUG=1`` adds their traceback.
    Any other exception is a bug: its traceback is printed and 1 returned. An interrupt
    (Ctrl-C / SIGINT) returns 130."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from ptychopinn.errors import PtychoPINNError

    prog = f"ptychopinn {args.command}"
    try:
        with _restored_process_settings():
            return int(args.run(args) or 0)
    except (PtychoPINNError, OSError) as exc:
        if _debug():
            traceback.print_exc()
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        detail = f" ({_one_line(exc)})" if str(exc) else ""
        print(f"{prog}: interrupted{detail}", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a bug: show everything, never disguise it as bad input
        traceback.print_exc()
        print(
            f"{prog}: internal error (a bug in ptychopinn, not in your input); "
            "please report it with the traceback above",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
