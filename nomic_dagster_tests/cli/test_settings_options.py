"""The settings options of `nomic run` and the scripts are generated from CycleSettings:
every field has one, and a value given on the command line reaches the cycle."""

from __future__ import annotations

import argparse
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nomic_dagster.cli.main import build_parser, settings_from_args
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND, make_repo, run_git

ROOT = Path(__file__).resolve().parents[2]
NOMIC = str(Path(sys.executable).parent / "nomic")
SCRIPTS = {
    "self_develop.py": ROOT / "scripts" / "self_develop.py",
    "nomic_staged.py": ROOT / "scripts" / "nomic_staged.py",
}


def run_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def script_parser(name: str) -> argparse.ArgumentParser:
    return runpy.run_path(str(SCRIPTS[name]))["build_parser"]()


def dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions}


@pytest.mark.parametrize("entry", ["nomic run", *SCRIPTS])
def test_every_settings_field_has_an_option(entry: str) -> None:
    parser = run_parser() if entry == "nomic run" else script_parser(entry)
    missing = set(CycleSettings.model_fields) - dests(parser)
    assert missing == set(), f"{entry} has no option for {sorted(missing)}"
    helps = {a.dest: a.help or "" for a in parser._actions}
    for name, field in CycleSettings.model_fields.items():
        assert helps[name], f"--{name} has no help"
        if entry == "self_develop.py" and name == "require_approval":
            continue  # its own --require-approval / --no-approval pair, with its own help
        if name not in ("repo", "state_dir"):  # those two name their entry-point rule
            assert (field.description or "")[:40].replace("%", "%%") in helps[name]


def non_default(name: str, parser: argparse.ArgumentParser) -> tuple[list[str], Any]:
    """Command-line words giving field `name` a value other than its default, and that
    value, read from the option the parser has for it."""
    default = CycleSettings.model_fields[name].get_default(call_default_factory=True)
    (action,) = [a for a in parser._actions if a.dest == name]
    option = action.option_strings[0]
    if isinstance(action, argparse._AppendAction):
        return [option, "first/,second/", option, "third/"], ["first/", "second/", "third/"]
    if isinstance(action, argparse.BooleanOptionalAction):
        return ([f"--no-{option[2:]}"], False) if default else ([option], True)
    if action.choices:
        value = next(c for c in action.choices if c != default)
        return [option, value], value
    if action.type is int:
        return [option, str((default or 0) + 3)], (default or 0) + 3
    if action.type is float:
        return [option, "2.5"], 2.5
    return [option, f"{name}-value"], f"{name}-value"


def test_a_value_on_the_command_line_reaches_the_settings() -> None:
    parser = run_parser()
    argv: list[str] = []
    expected: dict[str, Any] = {}
    for name in CycleSettings.model_fields:
        words, value = non_default(name, parser)
        argv += words
        expected[name] = value
    args = parser.parse_args(argv)
    settings = settings_from_args(args, resolve_repo=False)
    got = {name: getattr(settings, name) for name in CycleSettings.model_fields}
    assert got == expected
    assert settings != CycleSettings()  # every field moved off its default
    assert {n for n in expected if expected[n] == getattr(CycleSettings(), n)} == set()


def test_options_keep_their_older_spellings_and_protect_adds_to_the_defaults() -> None:
    args = run_parser().parse_args(
        ["--test-timeout", "7", "--context-budget", "3000", "--protect", "secret/"]
    )
    settings = settings_from_args(args, resolve_repo=False)
    assert settings.test_timeout_s == 7 and settings.context_budget_chars == 3000
    assert settings.protected_paths == [*CycleSettings().protected_paths, "secret/"]


def test_a_role_given_on_the_command_line_reaches_the_commit(tmp_path: Path) -> None:
    """`--designer` (one of the nine fields that had no option) changes who designs: the
    commit of the cycle names the designer in its trailers."""
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    res = subprocess.run(
        [
            NOMIC,
            "run",
            "--repo",
            str(repo),
            "--agents",
            ta.spec(ta.GoodAgent),
            "--designer",
            ta.spec(ta.SelfishA),
            "--critique-rounds",
            "0",
            "--quorum",
            "1",
            "--no-early-stop",
            "--test-command",
            FAST_TEST_COMMAND,
            "-q",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # the scripted agents, by import path
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stderr
    assert ": committed" in res.stdout
    (branch,) = run_git(repo, "branch", "--list", "nomic/*", "--format=%(refname:short)").split()
    message = run_git(repo, "log", "-1", "--format=%B", branch)
    assert "Nomic-Designer: selfish-a" in message and "Nomic-Winner: good" in message
