"""`wallet-gateway`: every command is listed without importing any tool, and each command's
`--help` shows the options it takes."""

import argparse
import os
import subprocess
import sys
from dataclasses import fields
from importlib.metadata import version

import pytest

from gateway.cli import COMMAND_SETTINGS, COMMANDS, TOOLS, build_parser, load_tool, main
from gateway.settings import Settings

HELP_SECONDS_MAX = 30
TOOL_PACKAGES = ("provider", "persistence", "loadtests")


def options_of(add_arguments: object) -> list[str]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)  # type: ignore[operator]
    return [option for action in parser._actions for option in action.option_strings]


def test_the_command_list_imports_no_tool() -> None:
    listing = (
        "import sys; from gateway.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {TOOL_PACKAGES!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", listing],
        env=dict(os.environ, COLUMNS="1000"),  # one line per command
        capture_output=True,
        text=True,
        timeout=HELP_SECONDS_MAX,
    )
    assert done.returncode == 0, done.stderr
    *help_lines, loaded = done.stdout.splitlines()
    assert loaded == "[]"
    for name, (_, help_text) in {**COMMANDS, **TOOLS}.items():
        assert any(name in line and help_text in line for line in help_lines), (name, help_lines)


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_a_tools_help_shows_its_own_options(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_code:
        build_parser([name, "--help"]).parse_args([name, "--help"])
    assert exit_code.value.code == 0
    shown = capsys.readouterr().out
    assert all(option in shown for option in options_of(load_tool(name).add_arguments))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_commands_help_shows_only_the_settings_it_reads_with_their_defaults(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_code:
        build_parser([name, "--help"]).parse_args([name, "--help"])
    assert exit_code.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for setting in fields(Settings):
        flag = "--" + setting.name.replace("_", "-")
        assert (flag in shown) == (setting.name in COMMAND_SETTINGS[name]), flag
    assert "(env SHARDS, default 16)" in shown or "shards" not in COMMAND_SETTINGS[name]


def test_each_command_reads_the_settings_it_offers() -> None:
    assert set(COMMAND_SETTINGS["up"]) == {setting.name for setting in fields(Settings)}
    assert "redis_url" not in COMMAND_SETTINGS["migrate"]
    assert "data_dir" not in COMMAND_SETTINGS["serve"]  # serve runs nothing embedded


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_code:
        main(["--version"])
    assert exit_code.value.code == 0
    assert capsys.readouterr().out.strip() == f"wallet-gateway {version('wallet-gateway')}"
