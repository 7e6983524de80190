"""Every ``dmcs`` command the README shows exists, runs (``--help``) and has the options given.

The commands are read from the README itself: the lines of its shell blocks that start with
``dmcs`` (with their indented continuation lines) and every inline ``dmcs …`` code span.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from commands.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"
_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _shell_commands(text: str) -> list[str]:
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            body = line.split(" #", 1)[0].rstrip()
            stripped = body.strip()
            if stripped.startswith(("dmcs ", ".venv/bin/dmcs ")):
                commands.append(stripped.removeprefix(".venv/bin/"))
            elif commands and line.startswith(" ") and stripped.startswith(("[", "--")):
                commands[-1] += " " + stripped
            for part in re.findall(r"(?:&&|;)\s*(\.venv/bin/dmcs [^&;]+)", body):
                commands.append(part.strip().removeprefix(".venv/bin/"))
    return commands


def _inline_commands(text: str) -> list[str]:
    return [m.strip() for m in re.findall(r"`(dmcs [^`]+)`", text)]


def readme_commands() -> list[str]:
    text = README.read_text()
    return sorted(set(_shell_commands(text) + _inline_commands(text)))


def resolve(words: list[str]) -> tuple[list[str], click.Command]:
    """The subcommand path the words name (``dmcs`` first), and its click command."""
    path: list[str] = []
    command: click.Command = main
    for word in words[1:]:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
        path.append(word)
    return path, command


def _options(command: click.Command) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names


def test_the_readme_documents_commands() -> None:
    commands = readme_commands()
    assert len(commands) >= 15
    tops = {resolve(c.split())[0][0] for c in commands if resolve(c.split())[0]}
    assert {"replay", "run", "status", "simulate", "alerts", "reprocess"} <= tops


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_runs_with_its_documented_options(line: str) -> None:
    path, command = resolve(line.split())
    assert path, f"{line!r} names no dmcs command"
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    documented = set(_OPTION.findall(line))
    known = _options(command)
    if isinstance(command, click.Group):  # options may belong to a subcommand of the group
        for sub in command.commands.values():
            known |= _options(sub)
    assert documented - known == set(), f"{line!r}: options {documented - known} do not exist"


@pytest.mark.parametrize(
    "args", [["simulate", "register", "."], ["reprocess", "--night", "1", "--night-dir", "."]]
)
def test_the_dsn_variable_is_the_one_the_readme_names(args: list[str]) -> None:
    text = README.read_text()
    assert "DMCS_DATABASE_DSN" in text and "DMCS_DSN" not in text
    result = CliRunner().invoke(main, args, env={"DMCS_DATABASE_DSN": "", "DMCS_DSN": "x"})
    assert result.exit_code == 2, result.output
    assert "DMCS_DATABASE_DSN" in result.output
