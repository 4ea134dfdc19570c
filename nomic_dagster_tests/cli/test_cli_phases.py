"""`nomic` lists the phases from the phase table: `nomic phases`, and the help texts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nomic_dagster.cli.main import build_parser, main
from nomic_dagster.core.phases import PHASES, resume_phases


def test_nomic_phases_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phases"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == [p.value for p in PHASES]
    for row, spec in zip(rows, PHASES.values(), strict=True):
        assert row.split()[1:3] == [f"{spec.timeout_s:g}s", str(spec.max_retries)]
        assert row.endswith(spec.summary)


def test_nomic_phases_json_is_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phases", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == [spec.model_dump(mode="json") for spec in PHASES.values()]


def test_the_help_lists_the_phases_of_the_table() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0]  # the COMMAND choices
    run_help = next(a.help for a in commands._choices_actions if a.dest == "run")
    assert run_help == f"run one cycle ({', '.join(PHASES)})"
    approve = commands.choices["approve"].description
    assert f"from {resume_phases()[0].name}: {', '.join(resume_phases())}." in approve


def test_the_console_script_knows_the_phases_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nomic_dagster.cli.main", "phases"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines()[0].startswith("PHASE")
    assert len(out.splitlines()) == 1 + len(PHASES)
