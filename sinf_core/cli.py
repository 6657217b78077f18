"""The `sinf` command line. Each subcommand lives in ``sinf_core.commands.<name>``."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import SinfError


def build_parser() -> argparse.ArgumentParser:
    from .commands import COMMAND_MODULES

    parser = argparse.ArgumentParser(prog="sinf", description="Semantic Inference: route, prune, measure.")
    parser.add_argument("--version", action="version", version=f"sinf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for mod_name in COMMAND_MODULES:
        mod = importlib.import_module(f".commands.{mod_name}", __package__)
        # argparse %-formats a subcommand's help (so a literal % must be %%), but not a description
        # (unless it holds "%(prog)"): HELP is plain text, escaped here for the one place that needs it.
        p = sub.add_parser(mod.NAME, help=mod.HELP.replace("%", "%%"), description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _os_error(exc: OSError) -> str:
    """One line for a file-system error: the path and the reason."""
    if not exc.filename:
        return str(exc.strerror or exc)
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return f"cannot use {exc.filename}: a file is in the way of a folder ({exc.strerror})"
    return f"cannot use {exc.filename}: {exc.strerror or exc}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except SinfError as exc:
        print(f"sinf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the user named cannot be read or written (missing, permissions, disk full)
        print(f"sinf {args.command}: error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sinf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
