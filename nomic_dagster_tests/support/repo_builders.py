"""Real target repositories for tests: files written into a git repository and committed.

No mocks: a test builds a small repository in `tmp_path`, gets its `RepoContext` from the
real context phase (`gather_context`) or by hand (`build_context`, ast + ruff), and lets an
agent work in it with real subprocesses.
"""

from __future__ import annotations

import ast
import os
import subprocess
import textwrap
from pathlib import Path

from nomic_dagster.agents.base import WorkArea
from nomic_dagster.core.pathrules import is_test_path
from nomic_dagster.core.records import (
    ModuleInfo,
    RepoContext,
    Symbol,
    TestInventory,
    Track,
    Workspace,
)
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.sandbox.commands import ruff_findings

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}

# The target's test command for tests: pytest without the plugins this environment
# autoloads but small targets never use (hypothesis alone costs ~1 s per run).
FAST_TEST_COMMAND = "python -m pytest -q -p no:hypothesispytest -p no:anyio -p no:xdist"


def run_git(repo: Path, *args: str) -> str:
    res = subprocess.run(
        ["git", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
        stdin=subprocess.DEVNULL,
        check=True,
    )
    return res.stdout


def write_files(root: Path, files: dict[str, str]) -> None:
    """Write {relative path: content}; content is dedented so tests can indent it."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(content).lstrip("\n"), encoding="utf-8")


def make_repo(root: Path, files: dict[str, str], message: str = "initial") -> Path:
    """A git repository at `root` (branch main) holding `files`, all committed."""
    root.mkdir(parents=True, exist_ok=True)
    run_git(root, "init", "--quiet", "--initial-branch", "main")
    write_files(root, files)
    commit_all(root, message)
    return root


def commit_all(root: Path, message: str) -> str:
    run_git(root, "add", "-A")
    run_git(root, "commit", "--quiet", "--no-verify", "--allow-empty", "-m", message)
    return head_sha(root)


def head_sha(root: Path) -> str:
    return run_git(root, "rev-parse", "HEAD").strip()


def status(root: Path) -> list[str]:
    """`git status --porcelain` lines, untracked and ignored files included (junk shows)."""
    out = run_git(root, "status", "--porcelain", "--untracked-files=all", "--ignored")
    return [line for line in out.splitlines() if line.strip()]


def changed_files(root: Path) -> list[str]:
    return sorted(line[3:] for line in status(root))


def read(root: Path, rel: str) -> str:
    return (root / rel).read_text(encoding="utf-8")


def settings_for(repo: Path, **overrides: object) -> CycleSettings:
    """Settings for a test target: the fast test command unless told otherwise."""
    values: dict[str, object] = {
        "repo": str(repo),
        "test_timeout_s": 120,
        "test_command": FAST_TEST_COMMAND,
    }
    values.update(overrides)
    return CycleSettings(**values)  # type: ignore[arg-type]


def workspace_for(repo: Path, scratch: Path, cycle_id: str = "test0001") -> Workspace:
    """A Workspace record whose worktree is `repo` itself (tests own the repository)."""
    scratch.mkdir(parents=True, exist_ok=True)
    return Workspace(
        cycle_id=cycle_id,
        track=Track.DEVELOPER,
        origin=str(repo),
        source_repo=str(repo),
        worktree=str(repo),
        branch=f"nomic/developer/{cycle_id}",
        base_branch="main",
        base_sha=head_sha(repo),
        scratch_dir=str(scratch),
    )


def gathered_context(repo: Path, scratch: Path, settings: CycleSettings) -> RepoContext:
    """The context phase's own view of `repo` (runs its baseline tests too)."""
    from nomic_dagster.phases.context import gather_context

    return gather_context(workspace_for(repo, scratch), settings, [])


def build_context(
    repo: Path, max_files: int = 5, test_command: str = "python -m pytest -q"
) -> RepoContext:
    """A RepoContext made by hand from the repository: git file list, ast symbols, ruff."""
    files = sorted(p for p in run_git(repo, "ls-files", "-z").split("\0") if p)
    modules = []
    for rel in files:
        if not rel.endswith(".py"):
            continue
        source = read(repo, rel)
        symbols: list[Symbol] = []
        try:
            tree = ast.parse(source)
        except SyntaxError:
            tree = None
        for node in tree.body if tree else []:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                symbols.append(
                    Symbol(
                        kind="class" if isinstance(node, ast.ClassDef) else "function",
                        name=node.name,
                        signature=node.name,
                        line=node.lineno,
                        public=not node.name.startswith("_"),
                    )
                )
        modules.append(
            ModuleInfo(
                path=rel,
                module=rel.removesuffix(".py").replace("/", "."),
                lines=len(source.splitlines()),
                is_test=is_test_path(rel) or rel.startswith("tests/"),
                symbols=symbols,
            )
        )
    return RepoContext(
        root=str(repo),
        base_sha=head_sha(repo),
        files=files,
        modules=modules,
        findings=sorted(ruff_findings(repo), key=lambda f: (f.path, f.line, f.code)),
        tests=TestInventory(command=test_command),
        churn=[],
        markers=[],
        max_files=max_files,
    )


def work_area(repo: Path, scratch: Path, settings: CycleSettings, context: RepoContext) -> WorkArea:
    scratch.mkdir(parents=True, exist_ok=True)
    return WorkArea(worktree=repo, scratch=scratch, settings=settings, context=context)
