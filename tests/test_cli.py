"""The `sinf` command line: every help page renders, and bad input gives one clear message, no traceback."""

import contextlib
import io

import pytest

from sinf_core.cli import build_parser, main
from sinf_core.commands import COMMAND_MODULES


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``sinf ARGV`` in-process: (exit code, stdout, stderr); argparse's SystemExit becomes the code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def _subcommands() -> list[str]:
    import importlib

    return [importlib.import_module(f"sinf_core.commands.{m}").NAME for m in COMMAND_MODULES]


def test_top_level_help_lists_every_subcommand():
    code, out, err = _run(["--help"])
    assert code == 0, err
    for name in _subcommands():
        assert name in out
    assert "top-q% channel sets" in out  # a literal % in a subcommand's HELP is shown as is


@pytest.mark.parametrize("name", _subcommands())
def test_every_subcommand_help_renders(name):
    code, out, err = _run([name, "--help"])
    assert code == 0, err
    assert out.startswith(f"usage: sinf {name}")
    assert "Traceback" not in err


def test_parser_knows_every_module():
    assert set(build_parser()._subparsers._group_actions[0].choices) == set(_subcommands())
