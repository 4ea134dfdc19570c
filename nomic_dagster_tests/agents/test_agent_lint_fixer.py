"""The lint-fixer agent on real repositories, with real ruff and real test runs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from nomic_dagster.agents.offline.lint_fixer import LintFixer, format_drift, parse_unified_diff
from nomic_dagster.core.errors import ImplementationFailed
from nomic_dagster.core.records import Design, Goal
from nomic_dagster.sandbox.commands import ruff_findings, run_command, run_tests
from nomic_dagster_tests.support.repo_builders import (
    build_context,
    changed_files,
    gathered_context,
    make_repo,
    read,
    settings_for,
    status,
    work_area,
)

GOAL = Goal(text="Tidy the code style")

PLANTED = {
    "pyproject.toml": """
        [tool.ruff.lint]
        select = ["E", "F", "I"]
    """,
    "pkg/__init__.py": "",
    # 3 unused imports + unsorted imports (all safe fixes), bad formatting, and an
    # unused local variable whose fix is unsafe (it must stay).
    "pkg/messy.py": """
        import sys
        import os
        import json
        from pathlib import Path
        def area( w,h ):
          unused = 1
          return w*h
        def root():
            return Path( "." )
    """,
    "pkg/slight.py": """
        import os


        def double(x):
            return 2 * x
    """,
    "pkg/clean.py": """
        def half(x):
            return x / 2
    """,
    "tests/test_pkg.py": """
        from pkg.clean import half
        from pkg.messy import area, root
        from pkg.slight import double


        def test_area():
            assert area(2, 3) == 6
            assert str(root()) == "."


        def test_other():
            assert double(2) == 4
            assert half(4) == 2
    """,
}


def _ruff_check_fixable(repo: Path, paths: list[str]) -> int:
    return sum(1 for f in ruff_findings(repo, paths) if f.fixable)


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", PLANTED)


def test_proposes_files_with_most_fixable_findings_with_numbers(planted: Path, tmp_path: Path):
    settings = settings_for(planted)
    ctx = gathered_context(planted, tmp_path / "scratch", settings)
    [proposal] = LintFixer().propose(ctx, GOAL)

    assert proposal.id == "lint-fixer:lint-fix"
    assert proposal.agent == "lint-fixer" and proposal.kind == "lint-fix"
    # the messiest file first; the clean file and the test file (nothing to fix) are left out
    assert proposal.files == ["pkg/messy.py", "pkg/slight.py"]
    assert "pkg/messy.py: 4 safe fixes (F401 x3, I001), needs formatting" in proposal.evidence[1]
    assert proposal.evidence[2] == "pkg/slight.py: 1 safe fix (F401)"
    assert proposal.evidence[0].startswith(
        "5 safe ruff fixes and 1 file to format across 2 file(s)"
    )
    assert proposal.risk == pytest.approx(0.1)
    assert 0.0 < proposal.benefit < 1.0
    assert proposal.estimated_lines >= 10  # 4 import lines + the reformatted functions

    # the scope limit is honoured
    narrow = ctx.model_copy(update={"max_files": 1})
    [small] = LintFixer().propose(narrow, GOAL)
    assert small.files == ["pkg/messy.py"]
    assert small.benefit < proposal.benefit  # fewer findings fixed, less benefit
    assert small.estimated_lines < proposal.estimated_lines


@pytest.mark.slow
def test_implement_applies_safe_fixes_and_formats_only_the_design_files(
    planted: Path, tmp_path: Path
):
    settings = settings_for(planted)
    scratch = tmp_path / "scratch"
    ctx = gathered_context(planted, scratch, settings)
    agent = LintFixer()
    [proposal] = agent.propose(ctx, GOAL)
    design = agent.design(proposal, ctx, settings)
    assert design.risk == "low"
    before = ruff_findings(planted, design.files)

    summary = agent.implement(design, work_area(planted, scratch, settings, ctx))

    after = ruff_findings(planted, design.files)
    assert len(after) < len(before)
    assert _ruff_check_fixable(planted, design.files) == 0
    assert format_drift(planted, design.files) == {}
    # never unsafe fixes: the unused local variable (F841, unsafe fix) is still there
    assert [f.code for f in after] == ["F841"]
    assert "unused = 1" in read(planted, "pkg/messy.py")
    assert "import os" not in read(planted, "pkg/slight.py")
    assert "def area(w, h):" in read(planted, "pkg/messy.py")
    assert f"ruff findings {len(before)} -> 1" in summary
    assert "formatted 1 file(s)" in summary
    # only the design's files changed; no .ruff_cache, __pycache__ or other junk
    assert changed_files(planted) == ["pkg/messy.py", "pkg/slight.py"]
    assert all(line.startswith(" M ") for line in status(planted))
    # behaviour is unchanged: the target's own tests still pass
    inv = run_tests(settings.test_command, planted, 120, scratch)
    assert inv.passed and inv.collected == 2


def test_honours_the_targets_own_ruff_configuration(tmp_path: Path):
    repo = make_repo(
        tmp_path / "repo",
        {
            "pyproject.toml": """
                [tool.ruff]
                extend-exclude = ["pkg/vendored.py"]

                [tool.ruff.lint]
                select = ["F", "I"]
                ignore = ["F401"]
            """,
            "pkg/__init__.py": "",
            "pkg/a.py": "import sys\nimport os\n\n\ndef f():\n    return 1\n",
            "pkg/vendored.py": "import sys\nimport os\nx=1\n",
        },
    )
    settings = settings_for(repo)
    ctx = build_context(repo)
    agent = LintFixer()
    [proposal] = agent.propose(ctx, GOAL)
    assert proposal.files == ["pkg/a.py"]  # the excluded file is not proposed
    assert proposal.evidence[1] == "pkg/a.py: 1 safe fix (I001)"  # F401 is ignored here

    agent.implement(
        agent.design(proposal, ctx, settings), work_area(repo, tmp_path / "s", settings, ctx)
    )
    # imports sorted, but the unused ones stay: the target ignores F401
    assert read(repo, "pkg/a.py").startswith("import os\nimport sys\n")

    # even when a design names an excluded file, ruff leaves it alone
    forced = Design(
        proposal_id=proposal.id,
        agent=agent.name,
        kind=agent.kind,
        title="t",
        files=["pkg/vendored.py"],
        steps=[],
        test_plan="",
        risk="low",
        rationale="",
    )
    with pytest.raises(ImplementationFailed, match="changed nothing"):
        agent.implement(forced, work_area(repo, tmp_path / "s", settings, ctx))
    assert read(repo, "pkg/vendored.py") == "import sys\nimport os\nx=1\n"


STDLIB = [
    "abc",
    "base64",
    "csv",
    "json",
    "math",
    "os",
    "re",
    "shutil",
    "string",
    "sys",
    "time",
    "uuid",
]


def generated_repo(
    root: Path, package: str, modules: int, misformat_every: int
) -> tuple[Path, dict]:
    """A package the agent was not written for: module i has 2*i+1 unused imports (so the
    ranking is unambiguous), and every `misformat_every`-th module is badly formatted."""
    files = {"pyproject.toml": '[tool.ruff.lint]\nselect = ["F"]\n', f"{package}/__init__.py": ""}
    planted = {}
    for i in range(modules):
        unused = STDLIB[: 2 * i + 1]
        body = "\n".join(f"import {name}" for name in unused)
        misformatted = i % misformat_every == 0
        func = (
            f"def f{i}(x):\n    return x+{i}\n"
            if misformatted
            else f"def f{i}(x):\n    return x + {i}\n"
        )
        path = f"{package}/m{i}_{package}.py"
        files[path] = f"{body}\n\n\n{func}"
        planted[path] = (len(unused), misformatted)
    return make_repo(root, files), planted


@pytest.mark.parametrize(
    ("package", "modules", "max_files", "misformat_every"),
    [("alpha", 3, 2, 2), ("zeta_tools", 5, 3, 3)],
)
def test_works_on_a_generated_repository(
    tmp_path: Path, package: str, modules: int, max_files: int, misformat_every: int
):
    repo, planted = generated_repo(tmp_path / "repo", package, modules, misformat_every)
    ctx = build_context(repo, max_files=max_files)
    agent = LintFixer()
    [proposal] = agent.propose(ctx, GOAL)

    expected = sorted(planted, key=lambda p: -planted[p][0])[:max_files]
    assert proposal.files == expected
    for path, line in zip(expected, proposal.evidence[1:], strict=True):
        count, misformatted = planted[path]
        codes = f"F401 x{count}" if count > 1 else "F401"
        assert line.startswith(f"{path}: {count} safe fix")
        assert f"({codes})" in line
        assert ("needs formatting" in line) == misformatted

    settings = settings_for(repo)
    agent.implement(
        agent.design(proposal, ctx, settings), work_area(repo, tmp_path / "s", settings, ctx)
    )
    assert ruff_findings(repo, expected) == []
    assert format_drift(repo, expected) == {}
    assert changed_files(repo) == sorted(expected)
    # the modules beyond the scope limit are untouched
    left = [p for p in planted if p not in expected]
    assert {f.path for f in ruff_findings(repo)} == set(left)


@pytest.mark.slow
def test_same_repository_gives_identical_proposals_and_output(tmp_path: Path):
    a = make_repo(tmp_path / "a", PLANTED)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    agent = LintFixer()
    ctx_a, ctx_b = build_context(a), build_context(b)
    props_a, props_b = agent.propose(ctx_a, GOAL), agent.propose(ctx_b, GOAL)
    assert [p.model_dump() for p in props_a] == [p.model_dump() for p in props_b]
    assert agent.propose(ctx_a, GOAL) == props_a  # and again, same answer

    settings = settings_for(a)
    out_a = agent.implement(
        agent.design(props_a[0], ctx_a, settings), work_area(a, tmp_path / "sa", settings, ctx_a)
    )
    out_b = agent.implement(
        agent.design(props_b[0], ctx_b, settings), work_area(b, tmp_path / "sb", settings, ctx_b)
    )
    assert out_a == out_b
    for path in props_a[0].files:
        assert read(a, path) == read(b, path)


def test_nothing_to_fix_gives_no_proposal_and_implement_refuses(tmp_path: Path):
    repo = make_repo(
        tmp_path / "repo",
        {"pkg/__init__.py": "", "pkg/ok.py": "import os\n\n\ndef cwd():\n    return os.getcwd()\n"},
    )
    ctx = build_context(repo)
    agent = LintFixer()
    assert agent.propose(ctx, GOAL) == []

    design = Design(
        proposal_id="lint-fixer:lint-fix",
        agent="lint-fixer",
        kind="lint-fix",
        title="t",
        files=["pkg/ok.py", "pkg/missing.py"],
        steps=[],
        test_plan="",
        risk="low",
        rationale="",
    )
    settings = settings_for(repo)
    with pytest.raises(ImplementationFailed, match="changed nothing"):
        agent.implement(design, work_area(repo, tmp_path / "s", settings, ctx))
    with pytest.raises(ImplementationFailed, match="exist"):
        agent.implement(
            design.model_copy(update={"files": ["nope.py"]}),
            work_area(repo, tmp_path / "s", settings, ctx),
        )
    assert status(repo) == []


def test_unified_diff_counts_survive_lines_that_look_like_headers(tmp_path: Path):
    # A real ruff diff where a removed line reads "--- x" (the expression `-- x`).
    repo = make_repo(tmp_path / "repo", {"a.py": "x = 1\n-- x\ny=2\n"})
    res = run_command(
        [sys.executable, "-m", "ruff", "format", "--diff", "--no-cache", "a.py"], repo, 60
    )
    assert "\n--- x\n" in res.stdout
    assert parse_unified_diff(res.stdout, repo) == {"a.py": 4}  # 2 lines out, 2 in
    diff = "--- a.py\n+++ a.py\n@@ -1,2 +1,1 @@\n---x\n+++x\n-y\n"
    assert parse_unified_diff(diff) == {"a.py": 3}
