"""Byte-for-byte snapshots of what a cycle must never touch in the user's repository."""

from __future__ import annotations

import hashlib
from pathlib import Path

from nomic_dagster_tests.support.repo_builders import run_git


def checkout_snapshot(repo: Path) -> dict[str, str]:
    """Hashes of every file in the checkout (uncommitted and untracked ones included), the
    index file, HEAD, every ref except nomic's cycle branches, and git status."""
    snap: dict[str, str] = {}
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo).as_posix()
        if rel == ".git" or rel.startswith(".git/") or not path.is_file():
            continue
        snap[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    index = repo / ".git" / "index"
    snap["<index>"] = hashlib.sha256(index.read_bytes()).hexdigest() if index.exists() else "-"
    snap["<HEAD>"] = (repo / ".git" / "HEAD").read_text()
    refs = run_git(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
    snap["<refs>"] = "\n".join(r for r in refs if not r.startswith("refs/heads/nomic/"))
    snap["<status>"] = run_git(repo, "status", "--porcelain", "--untracked-files=all")
    return snap


def nomic_branches(repo: Path) -> list[str]:
    return run_git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/nomic/").split()


def worktrees(repo: Path) -> list[str]:
    out = run_git(repo, "worktree", "list", "--porcelain")
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]
