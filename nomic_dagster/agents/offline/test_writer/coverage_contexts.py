"""A pytest plugin for the test-writer's coverage run: one coverage context per test.

Every test gets its own coverage context ("test:<nodeid>") and so does the import of
every collected file ("collect:<nodeid>"), so one run of the target's suite with the new
files tells which lines each new test adds to what the existing suite already ran.

The agent copies this file, alone, into a scratch folder put on PYTHONPATH and loads it
with `-p` (see agent.py), so that nothing else of nomic_dagster is importable in the
target's test run.
"""

from __future__ import annotations

from collections.abc import Iterator

import coverage
import pytest


def _switch(label: str) -> None:
    cov = coverage.Coverage.current()
    if cov is not None:
        cov.switch_context(label)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _switch("test:" + item.nodeid)
    yield
    _switch("")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    _switch("collect:" + collector.nodeid)
    yield
    _switch("")
