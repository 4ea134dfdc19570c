"""Glob rules over repository-relative posix paths (protected paths, test files, junk).

`**` matches any number of path segments, `*` and `?` stay inside one segment. A rule
that ends with `/` (or `/**`) protects a whole folder. Matching is on the normalised
path, never on substrings of free text (the original's ".env" matched "os.environ").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import PurePosixPath

DEFAULT_PROTECTED_PATHS: tuple[str, ...] = (
    ".git/",
    ".github/",
    ".gitlab-ci.yml",
    ".gitlab/",
    ".circleci/",
    ".ci/",
    ".buildkite/",
    "Jenkinsfile",
    "azure-pipelines.yml",
    ".travis.yml",
    ".pre-commit-config.yaml",
    ".env",
    ".env.*",
    "**/.env",
    "**/.env.*",
    "**/*.pem",
    "**/*.key",
    # the loop's own configuration
    "dagster.yaml",
    "workspace.yaml",
    "nomic.yaml",
    ".nomic/",
    "**/.gitmodules",
)

# Files tools leave behind that are never part of an improvement.
JUNK_PATTERNS: tuple[str, ...] = (
    "**/__pycache__/",
    "**/*.pyc",
    "**/.pytest_cache/",
    "**/.hypothesis/",
    "**/.ruff_cache/",
    "**/.mypy_cache/",
    "**/.coverage",
    "**/.coverage.*",
)


def normalize(path: str) -> str:
    """Repository-relative posix form; raises ValueError for paths that leave the root."""
    raw = path.replace("\\", "/")
    if raw.startswith("/"):
        raise ValueError(f"absolute path {path!r}")
    parts: list[str] = []
    for part in PurePosixPath(raw).parts:
        if part in ("", "."):
            continue
        if part == "..":
            raise ValueError(f"path {path!r} leaves the repository")
        parts.append(part)
    return "/".join(parts)


@lru_cache(maxsize=512)
def _compile(rule: str) -> re.Pattern[str]:
    folder = rule.endswith("/")
    rule = rule.rstrip("/")
    if rule.endswith("/**"):
        folder, rule = True, rule[:-3]
    out: list[str] = []
    i = 0
    while i < len(rule):
        if rule.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif rule.startswith("**", i):
            out.append(".*")
            i += 2
        elif rule[i] == "*":
            out.append("[^/]*")
            i += 1
        elif rule[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(rule[i]))
            i += 1
    tail = "(?:/.*)?" if folder else ""
    return re.compile("".join(out) + tail + r"\Z")


def matches(path: str, rule: str) -> bool:
    return _compile(rule).match(normalize(path)) is not None


def first_match(path: str, rules: Iterable[str]) -> str | None:
    """The first rule that matches `path`, or None."""
    norm = normalize(path)
    return next((r for r in rules if _compile(r).match(norm)), None)


def is_junk(path: str) -> bool:
    return first_match(path, JUNK_PATTERNS) is not None


_TEST_FILE = re.compile(r"(^|/)(test_[^/]*\.py|[^/]*_test\.py|conftest\.py)\Z")


def is_test_path(path: str) -> bool:
    """pytest's default discovery: test_*.py, *_test.py, and conftest.py anywhere."""
    return _TEST_FILE.search(normalize(path)) is not None
