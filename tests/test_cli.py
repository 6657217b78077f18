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


def test_models_lists_the_registry_with_weights_status(tmp_path, monkeypatch):
    import json

    from sinf_core.models import MODELS

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torchhome"))  # an empty hub cache
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / MODELS["cifar100_resnet20"].weights_url.rsplit("/", 1)[1]).write_bytes(b"x")
    monkeypatch.setenv("SINF_WEIGHTS_DIR", str(weights))
    code, out, err = _run(["models", "--json"])
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)["models"]}
    assert list(rows) == list(MODELS)
    r56 = rows["cifar100_resnet56"]
    assert r56["dataset"] == "cifar100" and r56["published_top1"] == 72.63 and r56["parameters"] == 861620
    assert (r56["weights"], r56["weights_available"]) == ("download", False)
    assert (rows["cifar100_resnet20"]["weights"], rows["cifar100_resnet20"]["weights_available"]) == ("local", True)
    assert rows["cifar100_resnet50"]["weights"] == "none" and rows["cifar100_resnet50"]["published_top1"] is None
    assert rows["cifar100_vgg16_bn_sinf"]["weights"] == "assets" and rows["cifar100_vgg16_bn_sinf"]["card_top1"]
    code, out, err = _run(["models"])
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if "cifar100_resnet56 " in ln)
    assert "0.86M" in line and "72.63" in line and "downloaded on first use" in line
    assert "train it" in next(ln for ln in out.splitlines() if "cifar100_resnet50 " in ln)


def test_eval_help_points_at_an_existing_command():
    code, out, _ = _run(["eval", "--help"])
    assert code == 0 and "sinf models" in out
    assert _run(["models", "--help"])[0] == 0
