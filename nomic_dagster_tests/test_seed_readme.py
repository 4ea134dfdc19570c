"""The seed README's quick start, run as written, lands a real commit.

    from nomic_dagster import create_nomic_state_machine, NomicStateMachine
    sm = create_nomic_state_machine(checkpoint_dir="/tmp/nomic")
    result = await sm.run(goal="Improve test coverage in debate module")

No repository is named: as in the seed, the target is the git repository the current
directory is in. The agents are the default offline panel (lint-fixer, test-writer,
dead-code), doing real work on a repository they have never seen.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nomic_dagster_tests.support.repo_builders import make_repo, run_git
from nomic_dagster_tests.support.snapshots import checkout_snapshot, worktrees

PROJECT = {
    # the target's own pytest config turns off plugins it does not use (speed only)
    "pyproject.toml": (
        '[project]\nname = "shapes"\nversion = "0.1.0"\n\n'
        "[tool.pytest.ini_options]\n"
        'addopts = "-p no:hypothesispytest -p no:anyio -p no:xdist -p no:cacheprovider"\n'
    ),
    "shapes/__init__.py": '"""Shapes."""\n',
    "shapes/geometry.py": (
        '"""Areas and perimeters."""\nimport math\nimport os\n\n\n'
        "def circle_area(r: float) -> float:\n    return round(math.pi*r*r, 4)\n\n\n"
        "def square_perimeter(side: int) -> int:\n    if side < 0:\n"
        "        raise ValueError('negative side')\n    return 4 * side\n\n\n"
        "def clamp(value: int, low: int = 0, high: int = 10) -> int:\n"
        "    return max(low, min(high, value))\n"
    ),
    "tests/test_geometry.py": (
        "from shapes.geometry import circle_area\n\n\n"
        "def test_circle_area():\n    assert circle_area(1.0) == 3.1416\n"
    ),
}


def test_the_quick_start_snippet_lands_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path / "shapes", PROJECT)
    (repo / "notes.md").write_text("the user's own uncommitted notes\n")
    before = checkout_snapshot(repo)
    monkeypatch.chdir(repo / "shapes")  # anywhere inside the repository
    checkpoints = tmp_path / "nomic"

    async def quick_start():
        # ---- the seed README, as written (with our package name) ----
        from nomic_dagster import NomicStateMachine, create_nomic_state_machine

        # Create state machine (recommended approach)
        sm = create_nomic_state_machine(checkpoint_dir=str(checkpoints))

        # Run improvement cycle
        result = await sm.run(goal="Improve test coverage in the geometry module")
        # ---- end of the snippet ----
        assert isinstance(sm, NomicStateMachine)
        return sm, result

    sm, result = asyncio.run(quick_start())
    assert result is not None and result.outcome.value == "committed", result and result.reason
    assert result.repo == str(repo) and result.agents == ["lint-fixer", "test-writer", "dead-code"]
    assert sm.current_state.value == "completed"
    assert run_git(repo, "rev-parse", result.branch).strip() == result.commit_sha
    assert (
        run_git(repo, "rev-parse", f"{result.commit_sha}^").strip()
        == run_git(repo, "rev-parse", "main").strip()
    )
    assert result.files and result.lines_added + result.lines_removed > 0
    assert checkout_snapshot(repo) == before  # the user's checkout is only read
    assert worktrees(repo) == [str(repo)]
    assert (checkpoints / f"checkpoint_{result.cycle_id}.json").is_file()
