"""VERIFY gates on real git worktrees: each gate passes a good change and fails its own
planted violation. Real git, ruff and pytest subprocesses; no mocks."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from nomic_dagster.core.records import ChangeSet, GateResult, VerificationReport, Workspace
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.infra.git import collect_changes, open_workspace, start_branch
from nomic_dagster.phases.verify import NOT_RUN, verify_change
from nomic_dagster_tests.support.repo_builders import make_repo, run_git, write_files

GATES = [
    "worktree_stable",
    "non_empty",
    "inside_worktree",
    "protected_paths",
    "compiles",
    "tests_kept",
    "no_new_skips",
    "assertions_kept",
    "ruff_no_new_violations",
    "tests_pass",
]

CORE = """
def add(a, b):
    return a + b


def div(a, b):
    if b == 0:
        raise ZeroDivisionError("b is zero")
    return a / b
"""

TESTS = """
import pytest

from calc.core import add, div


def test_add():
    assert add(1, 2) == 3
    assert add(-1, 1) == 0


def test_div_by_zero():
    with pytest.raises(ZeroDivisionError):
        div(1, 0)


class TestDiv:
    def test_half(self):
        assert div(1, 2) == pytest.approx(0.5)
"""

PYPROJECT = """
[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "-p no:hypothesispytest"  # keeps the nested test runs fast

[tool.ruff]
line-length = 100

[tool.ruff.lint]
select = ["E", "F"]
"""

REPO_FILES = {
    "calc/__init__.py": "",
    "calc/core.py": CORE,
    "calc/legacy.py": 'import sys\n\n\ndef old():\n    return "old"\n',  # F401 at the base
    "calc/data.txt": "data\n",
    "tests/test_core.py": TESTS,
    "pyproject.toml": PYPROJECT,
    ".github/workflows/ci.yml": "name: ci\n",
    ".gitignore": "__pycache__/\nbuild/\n",
}


@dataclass
class Cycle:
    """A cycle's workspace on a fresh repository, on its branch, ready for edits."""

    repo: Path
    ws: Workspace
    settings: CycleSettings

    @property
    def wt(self) -> Path:
        return Path(self.ws.worktree)

    def write(self, rel: str, content: str) -> None:
        write_files(self.wt, {rel: content})

    def read(self, rel: str) -> str:
        return (self.wt / rel).read_text()

    def replace(self, rel: str, old: str, new: str) -> None:
        text = self.read(rel)
        assert old in text, f"{old!r} not in {rel}"
        (self.wt / rel).write_text(text.replace(old, new, 1))

    def changes(self) -> ChangeSet:
        return collect_changes(self.ws)

    def verify(self, changeset: ChangeSet | None = None, **overrides: object) -> VerificationReport:
        settings = self.settings.model_copy(update=overrides)
        return verify_change(changeset or self.changes(), self.ws, settings)


def start_cycle(
    tmp_path: Path, files: dict[str, str] | None = None, cycle_id: str = "c1", **settings: object
) -> Cycle:
    repo = make_repo(tmp_path / "repo", REPO_FILES if files is None else files)
    values: dict[str, object] = {
        "repo": str(repo),
        "state_dir": str(tmp_path / "state"),
        "test_timeout_s": 60,
    }
    values.update(settings)
    cfg = CycleSettings(**values)  # type: ignore[arg-type]
    ws = open_workspace(cfg, cycle_id)
    start_branch(ws)
    return Cycle(repo=repo, ws=ws, settings=cfg)


def add_mul(cycle: Cycle) -> None:
    """A good change: a new function and a test for it."""
    cycle.write("calc/core.py", CORE + "\n\ndef mul(a, b):\n    return a * b\n")
    cycle.replace(
        "tests/test_core.py",
        "from calc.core import add, div\n",
        "from calc.core import add, div, mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n",
    )


def gate(report: VerificationReport, name: str) -> GateResult:
    return next(g for g in report.gates if g.name == name)


def failed(report: VerificationReport) -> list[str]:
    return [g.name for g in report.failed_gates]


def assert_only_failed(report: VerificationReport, name: str) -> GateResult:
    """`name` failed, tests were skipped for it, and every other cheap gate passed."""
    assert not report.passed
    expected = [name] if name == "tests_pass" else [name, "tests_pass"]
    assert failed(report) == expected, report.gates
    if name != "tests_pass":
        assert gate(report, "tests_pass").detail == NOT_RUN
        assert report.tests is not None and report.tests.passed is None
    return gate(report, name)


@pytest.fixture
def cycle(tmp_path: Path) -> Cycle:
    return start_cycle(tmp_path)


# ---------------------------------------------------------------- a good change


@pytest.mark.slow
def test_good_change_passes_every_gate(cycle: Cycle) -> None:
    add_mul(cycle)
    report = cycle.verify()
    assert report.passed, report.gates
    assert [g.name for g in report.gates] == GATES
    assert all(g.detail for g in report.gates)
    assert report.tests is not None
    assert report.tests.passed is True
    assert report.tests.collected == 4
    assert report.tests.test_files == ["tests/test_core.py"]
    assert report.tests.test_functions == 4
    assert "4 passed" in gate(report, "tests_pass").detail
    assert report.duration_s > 0


@pytest.mark.slow
def test_kept_ruff_violation_and_skip_words_in_comments_pass(cycle: Cycle) -> None:
    # calc/legacy.py has an F401 at the base: touching the file keeps it, which is not new.
    cycle.replace("calc/legacy.py", 'return "old"', 'return "older"')
    # Skip/xfail words in comments and strings are not skips.
    cycle.replace(
        "tests/test_core.py",
        "def test_add():\n",
        '# never xfail or pytest.skip( this\ndef test_add():\n    """no @pytest.mark.skip"""\n',
    )
    report = cycle.verify()
    assert report.passed, report.gates
    assert gate(report, "ruff_no_new_violations").detail == (
        "no new ruff violation in 2 Python file(s)"
    )
    assert gate(report, "no_new_skips").detail == "no skip or xfail added"


# ---------------------------------------------------------------- cheap gates


def test_empty_change_fails_non_empty(cycle: Cycle) -> None:
    report = cycle.verify()
    assert_only_failed(report, "non_empty")


@pytest.mark.parametrize(
    ("rel", "content", "rule"),
    [
        (".github/workflows/ci.yml", "name: ci\non: push\n", ".github/"),
        (".env", "SECRET=1\n", ".env"),
    ],
)
def test_protected_path_fails(cycle: Cycle, rel: str, content: str, rule: str) -> None:
    cycle.write(rel, content)
    g = assert_only_failed(cycle.verify(), "protected_paths")
    assert rel in g.detail and repr(rule) in g.detail


def test_rename_out_of_a_protected_path_fails(cycle: Cycle) -> None:
    (cycle.wt / ".github/workflows/ci.yml").rename(cycle.wt / "ci.yml")
    g = assert_only_failed(cycle.verify(), "protected_paths")
    assert ".github/workflows/ci.yml" in g.detail


def test_syntax_error_fails_compiles(cycle: Cycle) -> None:
    cycle.write("calc/core.py", CORE + "\n\ndef broken(:\n    pass\n")
    g = assert_only_failed(cycle.verify(), "compiles")
    assert g.detail == "calc/core.py:11: invalid syntax"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/etc/passwd", "symlink calc/link -> /etc/passwd points outside the worktree"),
        ("../../outside", "symlink calc/link -> ../../outside points outside the worktree"),
        ("core.py", "symlink calc/link -> core.py (symlinks are not allowed)"),
    ],
)
def test_symlink_fails_inside_worktree(cycle: Cycle, target: str, expected: str) -> None:
    os.symlink(target, cycle.wt / "calc" / "link")
    g = assert_only_failed(cycle.verify(), "inside_worktree")
    assert expected in g.detail


def test_submodule_fails_inside_worktree(cycle: Cycle) -> None:
    make_repo(cycle.wt / "vendor" / "lib", {"x.py": "X = 1\n"})
    g = assert_only_failed(cycle.verify(), "inside_worktree")
    assert "submodule vendor/lib added" in g.detail


def test_new_ruff_violation_fails(cycle: Cycle) -> None:
    cycle.write("calc/core.py", "import os\n" + CORE)
    g = assert_only_failed(cycle.verify(), "ruff_no_new_violations")
    assert "calc/core.py: F401 0 -> 1" in g.detail
    assert "os" in g.detail


# ---------------------------------------------------------------- test-file gates


def test_deleted_test_file_fails_tests_kept(cycle: Cycle) -> None:
    (cycle.wt / "tests" / "test_core.py").unlink()
    g = assert_only_failed(cycle.verify(), "tests_kept")
    assert "test file tests/test_core.py deleted" in g.detail


def test_test_file_renamed_away_fails_tests_kept(cycle: Cycle) -> None:
    (cycle.wt / "tests" / "test_core.py").rename(cycle.wt / "tests" / "core_checks.py")
    g = assert_only_failed(cycle.verify(), "tests_kept")
    assert "renamed to tests/core_checks.py" in g.detail


def test_removed_test_method_fails_tests_kept(cycle: Cycle) -> None:
    cycle.replace(
        "tests/test_core.py",
        "    def test_half(self):\n",
        "    def helper(self):\n",
    )
    g = assert_only_failed(cycle.verify(), "tests_kept")
    assert "TestDiv.test_half" in g.detail


@pytest.mark.parametrize(
    ("old", "new", "rel"),
    [
        ("def test_add():", '@pytest.mark.skip(reason="flaky")\ndef test_add():', None),
        ("def test_add():", "@pytest.mark.skipif(True, reason='x')\ndef test_add():", None),
        ("    def test_half(self):\n", "    def test_half(self):\n        pytest.skip('later')\n", None),
        (None, "import pytest\n\n\n@pytest.mark.xfail\ndef test_new():\n    assert 1 + 1 == 2\n",
         "tests/test_new.py"),
    ],
    ids=["mark.skip", "skipif", "pytest.skip", "xfail-in-new-file"],
)  # fmt: skip
def test_added_skip_fails_no_new_skips(
    cycle: Cycle, old: str | None, new: str, rel: str | None
) -> None:
    if rel:
        cycle.write(rel, new)
    else:
        cycle.replace("tests/test_core.py", old or "", new)
    g = assert_only_failed(cycle.verify(), "no_new_skips")
    assert (rel or "tests/test_core.py") in g.detail


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    assert add(-1, 1) == 0\n", "", "tests/test_core.py::test_add: 2 -> 1 assertions"),
        (
            "    assert add(-1, 1) == 0\n",
            "    assert True\n",
            "tests/test_core.py::test_add: 2 -> 1 assertions (1 trivially true)",
        ),
        (
            "    with pytest.raises(ZeroDivisionError):\n        div(1, 0)\n",
            "    try:\n        div(1, 0)\n    except ZeroDivisionError:\n        pass\n",
            "tests/test_core.py::test_div_by_zero: 1 -> 0 assertions",
        ),
        (
            "        assert div(1, 2) == pytest.approx(0.5)\n",
            "        assert 0.5 == 0.5\n",
            "tests/test_core.py::TestDiv.test_half: 1 -> 0 assertions (1 trivially true)",
        ),
    ],
    ids=["removed", "assert-true", "raises-removed", "literal-compare"],
)
def test_weakened_assertions_fail_assertions_kept(
    cycle: Cycle, old: str, new: str, expected: str
) -> None:
    cycle.replace("tests/test_core.py", old, new)
    g = assert_only_failed(cycle.verify(), "assertions_kept")
    assert expected in g.detail


def test_tuple_assert_counts_as_trivially_true(cycle: Cycle) -> None:
    cycle.replace("tests/test_core.py", "assert add(1, 2) == 3", "assert (add(1, 2), 3)")
    report = cycle.verify()
    assert (
        "test_add: 2 -> 1 assertions (1 trivially true)" in gate(report, "assertions_kept").detail
    )
    assert "F631" in gate(report, "ruff_no_new_violations").detail  # ruff agrees


# ---------------------------------------------------------------- the test run


@pytest.mark.slow
def test_failing_test_fails_tests_pass(cycle: Cycle) -> None:
    cycle.replace("calc/core.py", "return a + b", "return a - b")
    report = cycle.verify()
    g = assert_only_failed(report, "tests_pass")
    assert "exit code 1" in g.detail and "failed" in g.detail
    assert report.tests is not None and report.tests.passed is False


def test_timeout_fails_tests_pass(cycle: Cycle) -> None:
    cycle.write("tests/test_slow.py", "import time\n\n\ndef test_slow():\n    time.sleep(30)\n")
    start = time.monotonic()
    report = cycle.verify(test_timeout_s=2)
    assert time.monotonic() - start < 20
    g = assert_only_failed(report, "tests_pass")
    assert g.detail.startswith("timed out:") and "after 2s" in g.detail


@pytest.mark.slow
def test_no_tests_collected_fails_unless_allowed(tmp_path: Path) -> None:
    files = {k: v for k, v in REPO_FILES.items() if not k.startswith("tests/")}
    files["pyproject.toml"] = PYPROJECT.replace('testpaths = ["tests"]', "")
    cycle = start_cycle(tmp_path, files)
    cycle.replace("calc/core.py", "return a + b", "return b + a")
    changeset = cycle.changes()

    report = cycle.verify(changeset)
    g = assert_only_failed(report, "tests_pass")
    assert "no tests collected" in g.detail
    assert report.tests is not None and report.tests.collected == 0

    allowed = cycle.verify(changeset, allow_no_tests=True)
    assert allowed.passed, allowed.gates
    assert "no tests collected" in gate(allowed, "tests_pass").detail


# ---------------------------------------------------------------- worktree stability


def test_edit_after_staging_fails_worktree_stable(cycle: Cycle) -> None:
    add_mul(cycle)
    changeset = cycle.changes()
    cycle.write("calc/core.py", CORE)  # the agent keeps editing after collect_changes
    cycle.write("calc/extra.py", "X = 1\n")
    g = assert_only_failed(cycle.verify(changeset), "worktree_stable")
    assert "modified tracked files: calc/core.py" in g.detail
    assert "untracked files that are not in the change set: calc/extra.py" in g.detail


def test_index_changed_after_staging_fails_worktree_stable(cycle: Cycle) -> None:
    add_mul(cycle)
    changeset = cycle.changes()
    cycle.write("calc/extra.py", "X = 1\n")
    run_git(cycle.wt, "add", "calc/extra.py")
    g = assert_only_failed(cycle.verify(changeset), "worktree_stable")
    assert "the index is now tree" in g.detail


@pytest.mark.slow
def test_tests_that_modify_tracked_files_fail_worktree_stable(cycle: Cycle) -> None:
    cycle.write(
        "tests/test_writes.py",
        """
        from pathlib import Path


        def test_writes_data():
            Path("calc/data.txt").write_text("changed by a test\\n")
        """,
    )
    report = cycle.verify()
    assert not report.passed
    assert failed(report) == ["worktree_stable"], report.gates
    assert gate(report, "tests_pass").passed
    assert gate(report, "worktree_stable").detail == "tests modified tracked files: calc/data.txt"


def test_ignored_python_file_fails_worktree_stable(cycle: Cycle) -> None:
    add_mul(cycle)
    cycle.write("build/lib/helper.py", "X = 1\n")  # ignored by the repo's .gitignore
    cycle.write("build/notes.txt", "ignored and harmless\n")
    g = assert_only_failed(cycle.verify(), "worktree_stable")
    assert g.detail == "git-ignored Python files the tests could import: build/lib/helper.py"


def test_blob_reader_handles_spaces_and_missing_paths(cycle: Cycle) -> None:
    from nomic_dagster.phases.verify import _read_blobs

    cycle.write("calc/with space.py", "X = 1\n")
    tree = cycle.changes().tree_sha
    base = cycle.ws.base_sha
    specs = [f"{tree}:calc/with space.py", f"{base}:calc/with space.py", f"{base}:calc", tree]
    assert _read_blobs(cycle.wt, specs) == {specs[0]: b"X = 1\n", **dict.fromkeys(specs[1:])}


def test_renamed_test_file_keeps_its_functions(cycle: Cycle) -> None:
    (cycle.wt / "tests" / "test_core.py").rename(cycle.wt / "tests" / "test_calc.py")
    cycle.replace("tests/test_calc.py", "def test_div_by_zero", "def _div_by_zero")
    g = assert_only_failed(cycle.verify(), "tests_kept")
    assert g.detail == "tests/test_calc.py: test function(s) removed: test_div_by_zero"
