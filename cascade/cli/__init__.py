"""The ``cascade`` command: one subcommand per module in this package.

Each subcommand module defines ``register(subparsers)``, which adds its parser and sets
``func`` to a function ``(args) -> int``. Subcommand modules import heavy libraries
(torch, models) inside ``func`` only, so that ``cascade --help`` stays instant.
A :class:`~cascade.errors.UserError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from cascade import __version__
from cascade.errors import UserError

#: Subcommand modules, in the order ``cascade --help`` lists them.
SUBCOMMANDS: tuple[str, ...] = ("render", "batch", "eval", "data", "export", "info")


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``cascade render: error: ...``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def describe_os_error(error: OSError) -> str:
    """``[Errno 28] No space left on device: 'out/x.png'`` as one line."""
    where = f": {error.filename!r}" if error.filename else ""
    return f"{error.strerror or type(error).__name__}{where}"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="cascade",
        description="Cascaded text-to-image and text-to-video diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"cascade {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    subparsers.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"cascade.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cascade`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"cascade {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, an unwritable folder: the machine's problem, said in one line
        print(f"cascade {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cascade {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
