"""Search/replace blocks and unified diffs applied to real files: all or nothing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nomic_dagster.agents.llm.edits import (
    EditRejected,
    SearchReplace,
    apply_edits,
    parse_unified_diff,
)
from nomic_dagster.core.pathrules import DEFAULT_PROTECTED_PATHS
from nomic_dagster_tests.support.repo_builders import make_repo, status

OPS = "def add(a, b):\n    return a + b\n\n\ndef double(x):\n    return 2 * x\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path / "repo",
        {"calc/ops.py": OPS, "calc/__init__.py": "", "run.sh": "#!/bin/sh\necho hi\n"},
    )


def sr(path: str, search: str, replace: str) -> SearchReplace:
    return SearchReplace(path=path, search=search, replace=replace)


def rejected(repo: Path, *edits: SearchReplace, diff: str | None = None) -> list[str]:
    with pytest.raises(EditRejected) as info:
        apply_edits(repo, edits, diff, DEFAULT_PROTECTED_PATHS)
    assert status(repo) == [], "a rejected edit wrote something"
    return info.value.problems


def test_edits_to_one_file_apply_in_order_and_create_files(repo: Path) -> None:
    applied = apply_edits(
        repo,
        [
            sr("calc/ops.py", "return a + b", "return b + a"),
            sr("calc/ops.py", "return b + a\n", "return b + a  # commutative\n"),
            sr("calc/new/util.py", "", "X = 1\n"),
        ],
    )
    assert applied.modified == ["calc/ops.py"] and applied.created == ["calc/new/util.py"]
    assert "return b + a  # commutative\n" in (repo / "calc/ops.py").read_text()
    assert (repo / "calc/new/util.py").read_text() == "X = 1\n"


def test_every_problem_is_listed_and_nothing_is_written(repo: Path) -> None:
    problems = rejected(
        repo,
        sr("calc/ops.py", "return a + b", "return a - b"),  # fine on its own
        sr("calc/ops.py", "    return", "  return"),  # two matches
        sr("calc/missing.py", "x", "y"),  # no such file
        sr("calc/__init__.py", "", "x = 1\n"),  # empty search on an existing file
    )
    assert problems == [
        "edit 2 (calc/ops.py): the search text matches 2 times in calc/ops.py; include more "
        "surrounding lines so it matches exactly once",
        "edit 3 (calc/missing.py): calc/missing.py does not exist; to create it, leave `search` "
        "empty",
        "edit 4 (calc/__init__.py): `search` is empty but calc/__init__.py exists; quote the "
        "exact text to replace",
    ]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../x.py", "leaves the repository"),
        ("calc/../../x.py", "leaves the repository"),
        ("/etc/passwd", "is absolute"),
        (".git/config", "inside .git"),
        ("sub/.git/hooks/post-checkout", "inside .git"),
        (".github/workflows/ci.yml", "is protected (rule '.github/')"),
        ("deploy/.env", "is protected"),
        ("", "empty path"),
    ],
)
def test_paths_outside_or_protected_are_refused(repo: Path, path: str, reason: str) -> None:
    (problem,) = rejected(repo, sr(path, "", "x\n"))
    assert reason in problem


def test_symlinks_are_refused_inside_and_out(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (repo / "out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (repo / "alias.py").symlink_to(repo / "calc" / "ops.py")
    with pytest.raises(EditRejected) as info:
        apply_edits(repo, [sr("out/x.py", "", "x\n"), sr("alias.py", "return a + b", "1")])
    assert [p.split(": ", 1)[1] for p in info.value.problems] == [
        "path 'out/x.py' goes through the symlink 'out'; edit real files",
        "path 'alias.py' goes through the symlink 'alias.py'; edit real files",
    ]
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert (repo / "calc" / "ops.py").read_text() == OPS


def test_near_misses_say_what_differs(repo: Path) -> None:
    (problem,) = rejected(repo, sr("calc/ops.py", "def add(a, b):\n  return a + b\n", "x"))
    assert "would match if whitespace were ignored" in problem
    (problem,) = rejected(repo, sr("calc/ops.py", "def add(a, b):\n    return b + a\n", "x"))
    assert "its first line 'def add(a, b):' is there" in problem


def test_edits_that_change_nothing_are_rejected(repo: Path) -> None:
    (problem,) = rejected(repo, sr("calc/ops.py", "return a + b", "return a + b"))
    assert "unchanged" in problem


def test_a_failure_while_writing_puts_everything_back(repo: Path) -> None:
    # The second edit passes every check but cannot be written (its parent is a file):
    # the first, already written, is restored.
    with pytest.raises(EditRejected) as info:
        apply_edits(
            repo,
            [
                sr("calc/ops.py", "return a + b", "return a - b"),
                sr("calc/ops.py/inner.py", "", "x = 1\n"),
            ],
        )
    assert "every file was put back" in str(info.value)
    assert (repo / "calc" / "ops.py").read_text() == OPS
    assert status(repo) == []


def test_the_file_mode_is_kept(repo: Path) -> None:
    script = repo / "run.sh"
    script.chmod(0o755)
    apply_edits(repo, [sr("run.sh", "echo hi", "echo hello")])
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert not [p for p in os.listdir(repo) if p.endswith(".nomic-tmp")]


DIFF = """\
diff --git a/calc/ops.py b/calc/ops.py
index 1111111..2222222 100644
--- a/calc/ops.py
+++ b/calc/ops.py
@@ -1,2 +1,2 @@
 def add(a, b):
-    return a + b
+    return b + a
@@ -40,2 +40,6 @@ def add(a, b):
 def double(x):
     return 2 * x
+
+
+def triple(x):
+    return 3 * x
--- /dev/null
+++ b/calc/extra.py
@@ -0,0 +1,2 @@
+def four():
+    return 4
--- a/run.sh
+++ /dev/null
@@ -1,2 +0,0 @@
-#!/bin/sh
-echo hi
"""


def test_a_unified_diff_edits_creates_and_deletes(repo: Path) -> None:
    # the second hunk's line numbers are wrong: hunks are placed by their text
    applied = apply_edits(repo, diff=DIFF)
    assert applied.modified == ["calc/ops.py"]
    assert applied.created == ["calc/extra.py"]
    assert applied.deleted == ["run.sh"]
    assert (repo / "calc/ops.py").read_text() == OPS.replace("a + b", "b + a") + (
        "\n\ndef triple(x):\n    return 3 * x\n"
    )
    assert (repo / "calc/extra.py").read_text() == "def four():\n    return 4\n"
    assert not (repo / "run.sh").exists()


def test_an_ambiguous_hunk_is_placed_by_its_line_number(repo: Path) -> None:
    (repo / "calc" / "twice.py").write_text("x = 1\ny = 2\nx = 1\ny = 2\n")
    diff = "--- a/calc/twice.py\n+++ b/calc/twice.py\n@@ -3,2 +3,2 @@\n x = 1\n-y = 2\n+y = 3\n"
    apply_edits(repo, diff=diff)
    assert (repo / "calc" / "twice.py").read_text() == "x = 1\ny = 2\nx = 1\ny = 3\n"


@pytest.mark.parametrize(
    ("diff", "reason"),
    [
        ("just some text", "no '--- a/<path>'"),
        ("--- a/calc/ops.py\n+++ b/calc/ops.py\n@@ -1,3 +1,1 @@\n-x\n", "promises 3 old"),
        ("--- a/nope.py\n+++ b/nope.py\n@@ -1 +1 @@\n-a\n+b\n", "does not exist"),
        ("--- /dev/null\n+++ b/calc/ops.py\n@@ -0,0 +1 @@\n+x\n", "already exists"),
        ("--- a/calc/ops.py\n+++ b/calc/renamed.py\n@@ -1 +1 @@\n-a\n+b\n", "renames"),
        ("--- a/.github/ci.yml\n+++ b/.github/ci.yml\n@@ -1 +1 @@\n-a\n+b\n", "protected"),
    ],
)
def test_bad_diffs_are_rejected(repo: Path, diff: str, reason: str) -> None:
    (problem,) = rejected(repo, diff=diff)
    assert reason in problem


def test_parse_accepts_fenced_diffs_and_no_newline_markers() -> None:
    text = (
        "Here you go:\n```diff\n--- a/f.txt\n+++ b/f.txt\n@@ -1 +1 @@\n-old\n"
        "\\ No newline at end of file\n+new\n\\ No newline at end of file\n```\n"
    )
    (patch,) = parse_unified_diff(text)
    assert patch.old_path == patch.new_path == "f.txt"
    assert patch.hunks[0].old_new() == ("old", "new")
