"""``ptychopinn`` entry point: subcommand registry, one-line errors, exit codes.

Exit codes: 0 success, 1 unexpected internal error, 2 bad input (argument, file, value).
"""

from __future__ import annotations

import argparse
import importlib
import sys

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
    parser = OneLineParser(prog="ptychopinn",
                           description="Physics-informed neural-network ptychography.")
    parser.add_argument("--version", action="version", version=f"ptychopinn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(f"ptychopinn.cli.{module}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ptychopinn.errors import PtychoPINNError

    try:
        return int(args.run(args) or 0)
    except (PtychoPINNError, ValueError, FileNotFoundError, IsADirectoryError,
            PermissionError, FileExistsError) as exc:
        msg = str(exc).strip().splitlines()
        print(f"ptychopinn {args.command}: error: {msg[0] if msg else type(exc).__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ptychopinn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
