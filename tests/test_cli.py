"""The command line: every verb answers --help, and user mistakes are one line, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from galmet.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: galmet {name}" in out
    # The command's own options are listed, not only -h.
    assert len([line for line in out.splitlines() if line.strip().startswith("--")]) >= 2


def test_serve_refuses_bad_settings_in_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("GALMET_TTA", "3")
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.strip() == (
        "galmet: error: bad GALMET_TTA: Value error, GALMET_TTA must be 1, 2, 4 or 8"
    )
    monkeypatch.delenv("GALMET_TTA")
    monkeypatch.setenv("GALMET_MODEL", str(tmp_path / "missing.pt"))
    assert main(["serve"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_console_script_prints_one_line_error_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "galmet", "simulate", "--n", "0", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "galmet: error: --n must be at least 1"


def test_serve_refuses_an_unsupported_database(capsys, monkeypatch):
    monkeypatch.setenv("GALMET_DATABASE_URL", "mysql://root@127.0.0.1/test")
    assert main(["serve"]) == 2
    assert "'mysql' is not supported: use SQLite or PostgreSQL" in capsys.readouterr().err
    monkeypatch.setenv("GALMET_DATABASE_URL", "not a url")
    assert main(["serve"]) == 2
    assert "bad GALMET_DATABASE_URL" in capsys.readouterr().err


def test_every_train_option_says_what_it_does_and_its_default(capsys):
    import argparse

    from galmet.training.train import add_arguments

    parser = argparse.ArgumentParser(prog="galmet train")
    add_arguments(parser)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{action.option_strings[0]} has no description"
        shown = parser.formatter_class(prog="x")._get_help_string(action)
        if action.default not in (None, False):
            assert "default" in shown, f"{action.option_strings[0]} hides its default"
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--cycles CYCLES       SGDR cycles after unfreezing (default: 3)" in text
