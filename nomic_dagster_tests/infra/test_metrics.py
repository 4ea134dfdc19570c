"""Prometheus metrics: scraped over HTTP after real cycles (plain driver and a Dagster run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nomic_dagster.core.events import EventType, NomicEvent, bus
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.cycle.steps import run_cycle
from nomic_dagster.definitions import build_defs
from nomic_dagster.drivers.recovery import RecoveryManager
from nomic_dagster.infra import metrics
from nomic_dagster.orchestration.resources import NomicResource
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND, make_repo, settings_for
from nomic_dagster_tests.support.run_configs import fast_cycle_config

ROOT = Path(__file__).resolve().parents[2]
NOMIC = str(Path(sys.executable).parent / "nomic")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture(scope="module")
def server() -> metrics.MetricsServer:
    srv = metrics.start_metrics_server(port=0)  # a free port
    yield srv
    srv.stop()


@pytest.mark.slow
def test_plain_cycles_move_the_counters_seen_over_http(
    server: metrics.MetricsServer, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    in_progress_during_debate: list[float] = []

    def peek(event: NomicEvent) -> None:
        if event.type is EventType.PHASE_STARTED and event.data.get("phase") == "debate":
            in_progress_during_debate.append(metrics.sample("nomic_cycles_in_progress"))

    before = scrape(server.url)
    unsubscribe = bus.subscribe(peek)
    try:
        ok = run_cycle(settings_for(repo, agents=[ta.spec(ta.GoodAgent)]))
        broken = run_cycle(settings_for(repo, agents=[ta.spec(ta.GarbageDesigner)]))
        flaky = run_cycle(
            settings_for(repo, agents=[ta.spec(ta.GoodAgent), ta.spec(ta.ProposeRaiser)])
        )
        bad = run_cycle(CycleSettings(repo=str(tmp_path / "nowhere")))
    finally:
        unsubscribe()
    after = scrape(server.url)
    assert ok.outcome.value == "committed" and flaky.outcome.value == "committed"
    assert broken.outcome.value == "error" and bad.outcome.value == "bad_input"

    assert delta(before, after, "nomic_cycles_total", outcome="committed") == 2
    assert delta(before, after, "nomic_cycles_total", outcome="error") == 1
    assert delta(before, after, "nomic_cycles_total", outcome="bad_input") == 1
    # other tests in this worker may leave cycles open (paused ones): compare, not equal 0
    assert value(after, "nomic_cycles_in_progress") == value(before, "nomic_cycles_in_progress")
    assert in_progress_during_debate
    assert min(in_progress_during_debate) == value(before, "nomic_cycles_in_progress") + 1
    for phase in ("context", "debate", "design", "implement", "verify", "commit"):
        count = delta(before, after, "nomic_phase_duration_seconds_count", phase=phase)
        assert count >= 2 if phase != "context" else count == 4, phase
    assert (
        delta(before, after, "nomic_phase_duration_seconds_bucket", phase="verify", le="+Inf") == 2
    )
    assert delta(before, after, "nomic_gate_decisions_total", gate="tests_pass", passed="true") == 2
    assert delta(before, after, "nomic_gate_decisions_total", gate="scope", passed="true") == 2
    assert (
        delta(before, after, "nomic_errors_total", phase="design", error_type="AttributeError") == 1
    )
    assert delta(before, after, "nomic_errors_total", phase="context", error_type="BadInput") == 1
    assert delta(before, after, "nomic_agent_failures_total", agent="propose-raiser") == 1
    assert (
        delta(
            before, after, "nomic_phase_transitions_total", from_phase="verify", to_phase="commit"
        )
        == 2
    )
    assert (
        delta(
            before,
            after,
            "nomic_phase_transitions_total",
            from_phase="commit",
            to_phase="completed",
        )
        == 2
    )
    assert (
        delta(
            before, after, "nomic_phase_transitions_total", from_phase="design", to_phase="failed"
        )
        == 1
    )
    assert delta(before, after, "nomic_cycle_duration_seconds_count", outcome="committed") == 2


@pytest.mark.slow
def test_a_dagster_run_moves_the_same_counters(
    server: metrics.MetricsServer, tmp_path: Path, state_dir: Path
) -> None:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    before = scrape(server.url)
    with dg.instance_for_test() as instance:
        # built while this instance is current (not a finished test's): see test_cycle_job
        defs = build_defs({"nomic": NomicResource(state_dir=str(state_dir))})
        job = defs.get_job_def("nomic_cycle")
        result = job.execute_in_process(
            instance=instance,
            run_config=fast_cycle_config(repo=str(repo), agents=[ta.spec(ta.Breaker)]),
            tags={"nomic/cycle_id": "metrics-dg"},
            raise_on_error=False,
        )
    # verification_failed fails the verify step (so it can be re-executed from failure)
    assert not result.success
    after = scrape(server.url)
    assert delta(before, after, "nomic_cycles_total", outcome="verification_failed") == 1
    assert delta(before, after, "nomic_phase_duration_seconds_count", phase="verify") == 1
    assert (
        delta(before, after, "nomic_gate_decisions_total", gate="tests_pass", passed="false") == 1
    )
    assert (
        delta(before, after, "nomic_phase_transitions_total", from_phase="idle", to_phase="context")
        == 1
    )


def test_state_machine_and_breaker_events_are_counted(server: metrics.MetricsServer) -> None:
    """The events the state machine and the breakers emit, on the same bus, reach /metrics."""
    before = scrape(server.url)
    bus.emit(EventType.CYCLE_STARTED, "sm-1")
    bus.emit(EventType.TRANSITION, "sm-1", from_state="idle", to_state="context")
    bus.emit(EventType.PHASE_STARTED, "sm-1", phase="context")  # not counted twice
    bus.emit(EventType.RETRY, "sm-1", phase="context", attempt=1)
    bus.emit(EventType.TIMEOUT, "sm-1", phase="context", timeout_s=5)
    bus.emit(EventType.TRANSITION, "sm-1", from_state="context", to_state="recovery")
    RecoveryManager().decide_sync(TimeoutError("slow"), "context", 0, 2, False, cycle_id="sm-1")
    from nomic_dagster.infra.breakers import CircuitBreaker

    breaker = CircuitBreaker("metrics-agent", threshold=1)
    breaker.record_failure("down")
    opened = scrape(server.url)
    breaker.record_success()
    bus.emit(EventType.CYCLE_FINISHED, "sm-1", outcome="error", duration_s=1.0)
    after = scrape(server.url)

    assert (
        delta(before, after, "nomic_phase_transitions_total", from_phase="idle", to_phase="context")
        == 1
    )
    assert (
        delta(
            before,
            after,
            "nomic_phase_transitions_total",
            from_phase="context",
            to_phase="recovery",
        )
        == 1
    )
    assert delta(before, after, "nomic_retries_total", phase="context") == 1
    assert delta(before, after, "nomic_errors_total", phase="context", error_type="timeout") == 1
    assert delta(before, after, "nomic_recovery_decisions_total", action="retry") == 1
    assert (
        value(opened, "nomic_circuit_breakers_open") - value(before, "nomic_circuit_breakers_open")
        == 1
    )
    assert value(after, "nomic_circuit_breakers_open") == value(
        before, "nomic_circuit_breakers_open"
    )


def test_install_is_idempotent_and_build_defs_serves_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert metrics.install() is False  # already subscribed at import
    before = metrics.sample("nomic_cycles_total", {"outcome": "no_consensus"})
    bus.emit(EventType.CYCLE_FINISHED, "idem", outcome="no_consensus", duration_s=0.1)
    assert metrics.sample("nomic_cycles_total", {"outcome": "no_consensus"}) == before + 1

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("NOMIC_METRICS_PORT", str(port))
    build_defs()
    served = metrics._servers[("127.0.0.1", port)]
    try:
        assert value(scrape(served.url), "nomic_cycles_total", outcome="no_consensus") >= 1
        build_defs()  # a second build reuses the server
        assert metrics._servers[("127.0.0.1", port)] is served
    finally:
        served.stop()


@pytest.mark.slow
def test_multiprocess_mode_one_endpoint_for_every_process(tmp_path: Path) -> None:
    """`nomic run` in one process, `nomic metrics-server` in another, one folder between them."""
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    mp = tmp_path / "prom"
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(mp),
        "PYTHONPATH": str(ROOT),
    }
    run = subprocess.run(
        [
            *(NOMIC, "run", "--repo", str(repo), "--agents", ta.spec(ta.GoodAgent), "-q"),
            *("--test-command", FAST_TEST_COMMAND),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    server = subprocess.Popen(
        [NOMIC, "metrics-server", "--port", "0", "--multiproc-dir", str(mp)],
        env={k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()  # type: ignore[union-attr]
        assert "serving nomic metrics at http://127.0.0.1:" in line, line
        url = line.split(" at ", 1)[1].split()[0]
        samples = scrape(url)
        assert value(samples, "nomic_cycles_total", outcome="committed") == 1
        assert value(samples, "nomic_phase_duration_seconds_count", phase="commit") == 1
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=20) == 130
