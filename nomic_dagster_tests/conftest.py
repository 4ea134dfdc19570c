"""Shared fixtures: every test gets its own nomic state folder and a fixed git identity."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from nomic_dagster_tests.support.repo_builders import GIT_ENV

REQUIRE_SERVICES = os.environ.get("NOMIC_REQUIRE_SERVICES") == "1"


def service_missing(reason: str) -> None:
    """Skip when a service is absent, except on CI (NOMIC_REQUIRE_SERVICES=1), where it fails."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (NOMIC_REQUIRE_SERVICES=1: services are required here)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    state = tmp_path_factory.mktemp("nomic_state")
    monkeypatch.setenv("NOMIC_STATE_DIR", str(state))
    monkeypatch.delenv("NOMIC_REPO", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)
    return state


@pytest.fixture(autouse=True)
def _no_stale_defs_state_storage() -> Iterator[None]:
    """Entering a DagsterInstance sets a process-wide "current defs state storage"; a context
    built from an instance and never exited (build_schedule_context, ...) leaves it pointing
    at a disposed instance, and every later `Definitions` load then fails ("undefined
    DagsterInstance weakref"). Each test starts with none, whatever ran before it."""
    from dagster._core.storage.defs_state.base import _current_storage

    _current_storage.set(None)
    yield
    _current_storage.set(None)


@pytest.fixture
def state_dir(_isolated_env: Path) -> Path:
    return _isolated_env


def git_out(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


@pytest.fixture
def instance():
    """A temporary Dagster instance (SQLite in a temp dir)."""
    with dg.instance_for_test() as inst:
        yield inst
