"""Shared fixtures: every test gets its own nomic state folder and a fixed git identity; the
setup that many modules need (a Dagster instance, the event bus, a clean LLM environment) is
here once, the plain helper functions are in support/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from nomic_dagster.core.events import NomicEvent, bus
from nomic_dagster_tests.support.dagster_home import DagsterHome, dagster_home
from nomic_dagster_tests.support.llm_env import clean_llm_env
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


@pytest.fixture
def instance():
    """A temporary Dagster instance (SQLite in a temp dir)."""
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def launch_home(tmp_path: Path) -> Iterator[DagsterHome]:
    """A Dagster home of the test's own for launched runs, its instance open; start a real
    daemon on it with `launch_home.daemon()`."""
    with dagster_home(tmp_path / "home") as home:
        yield home


@pytest.fixture
def events() -> Iterator[list[NomicEvent]]:
    """Every event published on the bus while the test runs, in order."""
    seen: list[NomicEvent] = []
    unsubscribe = bus.subscribe(seen.append)
    yield seen
    unsubscribe()


@pytest.fixture
def llm_max_retries() -> int:
    """How often the SDK clients retry under `llm_env`; a module overrides this fixture."""
    return 0


@pytest.fixture
def llm_env(monkeypatch: pytest.MonkeyPatch, llm_max_retries: int) -> Iterator[None]:
    """A clean LLM environment for tests that talk to the loopback servers (support/llm_env.py).
    A module that needs it for every test says `pytestmark = pytest.mark.usefixtures("llm_env")`."""
    yield from clean_llm_env(monkeypatch, max_retries=llm_max_retries)
