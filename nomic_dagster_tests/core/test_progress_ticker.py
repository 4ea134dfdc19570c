"""The progress ticker: what a long phase is doing, repeated every few seconds."""

from __future__ import annotations

import threading
import time

import pytest

from nomic_dagster.core.events import (
    EventType,
    ProgressTicker,
    bus,
    progress_period_s,
    report_progress,
)


class Lines:
    def __init__(self) -> None:
        self.said: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            self.said.append(line)

    def wait_for(self, text: str, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [line for line in self.said if text in line]
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{text!r} never said; said: {self.said}")


def test_the_ticker_repeats_the_latest_activity_of_the_running_phase() -> None:
    lines = Lines()
    with ProgressTicker(lines, period_s=0.1):
        assert lines.said == []  # nothing runs: nothing to say
        bus.emit(EventType.PHASE_STARTED, "c1", phase="verify")
        lines.wait_for("cycle c1: verify: running (")  # before anything said what it does
        report_progress("running the tests: python -m pytest -q")  # from the test runner
        (first, *_) = lines.wait_for("cycle c1: verify: running the tests: python -m pytest -q (")
        assert first.endswith(" s)...")
        report_progress("asking claude to vote", cycle_id="c1")
        lines.wait_for("cycle c1: verify: asking claude to vote (")
        bus.emit(EventType.PHASE_FINISHED, "c1", phase="verify", duration_s=1.0)
        time.sleep(0.3)
        with lines.lock:
            count = len(lines.said)
        time.sleep(0.3)
        assert len(lines.said) == count  # between phases: silent
    report_progress("after the ticker stopped")
    assert not any("after the ticker" in line for line in lines.said)


def test_a_quiet_ticker_and_the_period_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = Lines()
    with ProgressTicker(lines, period_s=0) as ticker:
        bus.emit(EventType.PHASE_STARTED, "c2", phase="debate")
        report_progress("asking gpt to propose")
        time.sleep(0.2)
        assert ticker.lines() == ["cycle c2: debate: asking gpt to propose (0 s)..."]
    assert lines.said == []  # 0: no ticks at all
    monkeypatch.delenv("NOMIC_PROGRESS_S", raising=False)
    assert progress_period_s() == 5.0
    monkeypatch.setenv("NOMIC_PROGRESS_S", "1.5")
    assert progress_period_s() == 1.5
    monkeypatch.setenv("NOMIC_PROGRESS_S", "soon")
    assert progress_period_s() == 5.0
