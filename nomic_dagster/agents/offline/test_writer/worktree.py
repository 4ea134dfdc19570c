"""What the agent does to the worktree besides writing test files: lint and format them,
and remove whatever else its runs left there (caches, coverage data, stray files)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from nomic_dagster.sandbox.commands import CommandResult, run_command

RUFF_TIMEOUT_S = 120


def snapshot(root: Path) -> set[str]:
    """Every file and folder under root (folders end with /), .git excluded."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel == "." else f"{rel}/"
        dirnames[:] = [d for d in dirnames if d != ".git"]
        out.update(f"{prefix}{d}/" for d in dirnames)
        out.update(f"{prefix}{f}" for f in filenames if f != ".git")  # a worktree's .git file
    return out


def clean_new(root: Path, before: set[str], keep: set[str]) -> None:
    """Remove whatever appeared under root since `before`, except `keep` and its folders."""
    for rel in sorted(snapshot(root) - before - keep):
        path = root / rel.rstrip("/")
        if rel.endswith("/"):
            if not any(k.startswith(rel) for k in keep):
                shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)


def ruff_new_files(worktree: Path, files: list[str]) -> str:
    """Fix and format the new files; '' when ruff is clean, else what it still reports."""

    def ruff(command: str, *options: str) -> CommandResult:
        argv = [sys.executable, "-m", "ruff", command, "--no-cache", *options, "--quiet", *files]
        return run_command(argv, worktree, RUFF_TIMEOUT_S)

    ruff("check", "--fix", "--force-exclude")
    if not ruff("format", "--force-exclude").ok:
        # the target's ruff config cannot be used: default rules then
        ruff("check", "--isolated", "--fix")
        ruff("format", "--isolated")
    check = ruff("check", "--force-exclude")
    if check.ok:
        return ""
    default = ruff("check", "--isolated")
    if not default.ok:
        return "ruff (default rules): " + default.output.strip()[:400]
    return "ruff (repository rules): " + check.output.strip()[:300]
