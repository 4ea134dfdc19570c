"""Human approval (a cycle paused after DESIGN, decided on durably, resumed at IMPLEMENT)
and re-execution from failure, through the domain API, the CLI in a subprocess and Dagster
jobs on a real instance. Scripted agents note every call, so the tests count debates and
designs: an approved or re-executed cycle must not run (or pay for) them again."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.events import EventType, NomicEvent, bus
from nomic_dagster.core.records import Outcome, Track
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.cycle.approvals import ApprovalStore, design_hash
from nomic_dagster.cycle.history import CycleHistory
from nomic_dagster.cycle.steps import run_cycle
from nomic_dagster.definitions import build_defs, nomic_cycle_job
from nomic_dagster.drivers.approval_flow import approve, reject, resume_approved
from nomic_dagster.orchestration.instance import PROJECT_ROOT, isolated_home
from nomic_dagster.orchestration.orchestrator import AutonomousOrchestrator, OrchestrationResult
from nomic_dagster.orchestration.resources import NomicResource
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.approval_agents import CountingAgent, FlakyImplementer, calls
from nomic_dagster_tests.support.daemon import wait_for_queue_daemon
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND, make_repo, run_git
from nomic_dagster_tests.support.snapshots import nomic_branches

CYCLE_RECORDS = dg.AssetKey("cycle_records")
DEBATE_AND_DESIGN = ["propose", "vote", "vote", "design"]  # one agent: propose, two votes


def spec(cls: type) -> str:
    return f"{cls.__module__}:{cls.__name__}"


@pytest.fixture
def calls_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.txt"
    monkeypatch.setenv("NOMIC_TEST_CALLS", str(path))
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "target", ta.GATE_REPO)


def settings_for(repo: Path, agent: type = CountingAgent, **extra: object) -> CycleSettings:
    return CycleSettings(
        repo=str(repo),
        agents=[spec(agent)],
        test_command=FAST_TEST_COMMAND,
        require_approval=True,
        **extra,
    )


def paused_cycle(repo: Path, **extra: object) -> str:
    record = run_cycle(settings_for(repo, **extra))
    assert record.outcome is Outcome.AWAITING_APPROVAL, record.reason
    return record.cycle_id


def materialization(instance: dg.DagsterInstance, cycle_id: str) -> dg.AssetMaterialization:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=CYCLE_RECORDS, asset_partitions=[cycle_id]), limit=1
    ).records
    assert records, f"no cycle_records materialization for {cycle_id}"
    mat = records[0].asset_materialization
    assert mat is not None
    return mat


def executed_steps(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    return {
        e.step_key
        for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
        if e.step_key
    }


# ---------------------------------------------------------------- the domain API


def test_approval_resumes_a_cycle_without_a_second_debate(
    repo: Path, calls_file: Path, state_dir: Path
) -> None:
    cycle_id = paused_cycle(repo)
    # paused: nothing landed, the worktree is gone, the history has no record yet
    assert calls(calls_file) == DEBATE_AND_DESIGN
    assert nomic_branches(repo) == []
    assert not (state_dir / "worktrees" / cycle_id).exists()
    assert CycleHistory(state_dir).get(cycle_id) is None
    (pending,) = ApprovalStore().pending()
    assert pending.cycle_id == cycle_id and pending.status == "awaiting"
    assert pending.planned_files == ["calc/ops.py"]
    assert pending.design_hash == design_hash(pending.design)

    phases: list[str] = []

    def listen(event: NomicEvent) -> None:
        if event.type is EventType.PHASE_STARTED and event.cycle_id == cycle_id:
            phases.append(event.data["phase"])

    unsubscribe = bus.subscribe(listen)
    try:
        decision, record = approve(cycle_id, who="alice", note="looks right")
    finally:
        unsubscribe()

    assert record is not None and record.outcome is Outcome.COMMITTED, record
    assert phases == ["implement", "verify", "commit"]
    # context, debate and design ran once, before the pause; only IMPLEMENT called again
    assert calls(calls_file) == [*DEBATE_AND_DESIGN, "implement"]
    assert decision.who == "alice" and decision.design_hash == pending.design_hash
    assert run_git(repo, "rev-parse", f"nomic/developer/{cycle_id}").strip() == record.commit_sha
    assert set(record.phase_durations) == {
        "context",
        "debate",
        "design",
        "implement",
        "verify",
        "commit",
    }
    assert CycleHistory(state_dir).get(cycle_id) == record
    assert ApprovalStore().pending() == []
    parked = ApprovalStore().get(cycle_id)
    assert parked is not None and parked.status == "finished" and parked.outcome == "committed"
    with pytest.raises(BadInput, match="finished"):
        approve(cycle_id, who="alice")


def test_a_changed_design_is_refused(repo: Path, calls_file: Path) -> None:
    cycle_id = paused_cycle(repo)
    store = ApprovalStore()
    with pytest.raises(BadInput, match="changed") as refused:
        store.decide(cycle_id, "approve", "alice", expected_hash="00000000")
    assert "nomic pending" in refused.value.fix
    # approved for the stored design, then the stored design changes before the run
    store.decide(
        cycle_id, "approve", "alice", expected_hash=design_hash(store.get(cycle_id).design)[:12]
    )  # type: ignore[union-attr]
    state = store.state(cycle_id)
    assert state.design is not None
    other = state.model_copy(
        update={"design": state.design.model_copy(update={"files": ["calc/other.py"]})}
    )
    with sqlite3.connect(store.path) as db:
        db.execute(
            "UPDATE approval_cycles SET state_json = ? WHERE cycle_id = ?",
            (other.model_dump_json(), cycle_id),
        )
    with pytest.raises(BadInput, match="changed after alice approved it"):
        resume_approved(cycle_id)
    assert calls(calls_file) == DEBATE_AND_DESIGN  # nothing implemented
    assert nomic_branches(repo) == []


def test_an_expired_approval_is_refused(repo: Path, calls_file: Path, state_dir: Path) -> None:
    cycle_id = paused_cycle(repo)
    decision, record = approve(cycle_id, who="alice", expires_in_hours=1e-6, run=False)
    assert record is None and decision.expires_at is not None
    time.sleep(0.05)
    with pytest.raises(BadInput, match="expired") as refused:
        resume_approved(cycle_id)
    assert f"nomic approve {cycle_id}" in refused.value.fix
    assert ApprovalStore().get(cycle_id).status == "approved"  # type: ignore[union-attr]
    # approved again, without an expiry this time: the cycle runs
    _, record = approve(cycle_id, who="bob")
    assert record is not None and record.outcome is Outcome.COMMITTED
    assert calls(calls_file) == [*DEBATE_AND_DESIGN, "implement"]
    assert [d.who for d in ApprovalStore().decisions(cycle_id)] == ["alice", "bob"]


def test_a_rejection_is_recorded_with_who_and_when(
    repo: Path, calls_file: Path, state_dir: Path
) -> None:
    cycle_id = paused_cycle(repo, approval_expiry_hours=24)
    decision, record = reject(cycle_id, who="bob", note="too risky")
    assert record.outcome is Outcome.REJECTED_BY_HUMAN
    assert "bob" in record.reason and "too risky" in record.reason
    assert decision.decision == "reject" and decision.expires_at is None
    assert CycleHistory(state_dir).get(cycle_id) == record
    (stored,) = ApprovalStore().decisions(cycle_id)
    assert (stored.who, stored.note, stored.decided_at) == ("bob", "too risky", decision.decided_at)
    assert ApprovalStore().pending() == []
    assert calls(calls_file) == DEBATE_AND_DESIGN
    assert nomic_branches(repo) == []
    with pytest.raises(BadInput, match="no design waiting"):
        approve(cycle_id, who="alice")


def test_only_one_approved_run_claims_the_cycle(repo: Path, calls_file: Path) -> None:
    cycle_id = paused_cycle(repo)
    store = ApprovalStore()
    with pytest.raises(BadInput, match="awaiting, not approved"):
        store.claim(cycle_id)  # nobody approved it yet
    store.decide(cycle_id, "approve", "alice")
    store.decide(cycle_id, "approve", "bob")  # a second approver, before the run
    state, decision = store.claim(cycle_id)
    assert decision.who == "bob" and state.cycle_id == cycle_id
    with pytest.raises(BadInput, match="running, not approved"):
        store.claim(cycle_id)  # the second `nomic approve` does not start it again
    assert calls(calls_file) == DEBATE_AND_DESIGN


def test_a_claim_is_given_back_when_its_run_does_not_start(repo: Path, calls_file: Path) -> None:
    """An approved run that fails before IMPLEMENT (here: its worktree cannot be put back)
    leaves the cycle approved, not stuck `running`: the next `nomic approve` runs it."""
    cycle_id = paused_cycle(repo)
    store = ApprovalStore()
    store.decide(cycle_id, "approve", "alice")
    parked = store.state(cycle_id)
    assert parked.workspace is not None
    blocker = Path(parked.workspace.worktree)
    shutil.rmtree(blocker, ignore_errors=True)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the worktree goes\n")  # git cannot add it back
    with pytest.raises(Exception):  # noqa: B017 - whatever git says, the claim is given back
        resume_approved(cycle_id)
    assert store.get(cycle_id).status == "approved"  # type: ignore[union-attr]
    blocker.unlink()
    record = resume_approved(cycle_id)
    assert record.outcome is Outcome.COMMITTED, record.reason
    assert calls(calls_file) == [*DEBATE_AND_DESIGN, "implement"]


def test_a_decided_cycle_is_never_parked_again(repo: Path) -> None:
    """Re-parking (a re-executed run) keeps an approval of the same design and never
    reopens a cycle that already ran."""
    cycle_id = paused_cycle(repo)
    store = ApprovalStore()
    state = store.state(cycle_id)
    store.decide(cycle_id, "approve", "alice")
    assert store.park(state).status == "approved"  # same design: the approval stands
    resume_approved(cycle_id)
    assert store.get(cycle_id).status == "finished"  # type: ignore[union-attr]
    with pytest.raises(BadInput, match="already finished"):
        store.park(state)


def test_the_settings_expiry_applies_when_the_approver_sets_none(repo: Path) -> None:
    cycle_id = paused_cycle(repo, approval_expiry_hours=24)
    decision, _ = approve(cycle_id, who="erin", run=False)
    assert decision.expires_at is not None
    assert abs((decision.expires_at - decision.decided_at).total_seconds() - 24 * 3600) < 1


# ---------------------------------------------------------------- the CLI, another process


def nomic(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nomic_dagster.cli.main", *args, "--state-dir", str(state_dir)],
        cwd=Path(__file__).resolve().parents[2],  # nomic_dagster_tests importable
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_cli_pending_approve_in_other_processes(
    repo: Path, calls_file: Path, state_dir: Path
) -> None:
    cycle_id = paused_cycle(repo)
    listed = nomic("pending", state_dir=state_dir)
    assert listed.returncode == 0, listed.stderr
    assert cycle_id in listed.stdout and "calc/ops.py" in listed.stdout
    assert f"nomic approve {cycle_id}" in listed.stdout

    wrong = nomic(
        "approve", cycle_id, "--by", "carol", "--design-hash", "ffff", state_dir=state_dir
    )
    assert wrong.returncode == 1 and "changed" in wrong.stderr and "fix:" in wrong.stderr

    done = nomic("approve", cycle_id, "--by", "carol", "-q", state_dir=state_dir)
    assert done.returncode == 0, done.stderr
    assert "approved by carol" in done.stdout
    record = CycleHistory(state_dir).get(cycle_id)
    assert record is not None and record.outcome is Outcome.COMMITTED
    assert record.commit_sha and record.commit_sha[:12] in done.stdout
    # the decision made in that process is here, in this one
    (decision,) = ApprovalStore(state_dir).decisions(cycle_id)
    assert decision.who == "carol"
    assert calls(calls_file) == [*DEBATE_AND_DESIGN, "implement"]
    empty = nomic("pending", "--json", state_dir=state_dir)
    assert json.loads(empty.stdout) == []


# ---------------------------------------------------------------- Dagster


def cycle_run_config(repo: Path, agent: type, **extra: object) -> dict:
    fields = {
        "repo": str(repo),
        "agents": [spec(agent)],
        "test_command": FAST_TEST_COMMAND,
        **extra,
    }
    return {"ops": {"context_op": {"config": fields}}}


def test_approve_job_resumes_the_cycle_on_a_real_instance(
    repo: Path, calls_file: Path, state_dir: Path, instance: dg.DagsterInstance
) -> None:
    defs = build_defs({"nomic": NomicResource(state_dir=str(state_dir))})
    paused = defs.get_job_def("nomic_cycle").execute_in_process(
        instance=instance,
        run_config=cycle_run_config(repo, CountingAgent, require_approval=True),
        tags={"nomic/cycle_id": "c-appr"},
    )
    assert paused.success  # a pause is not a failure
    assert paused.output_for_node("record_cycle_op").outcome is Outcome.AWAITING_APPROVAL
    md = materialization(instance, "c-appr").metadata
    assert md["outcome"].value == "awaiting_approval"
    assert "nomic approve c-appr" in md["approve_with"].value
    design_md = next(
        e.event_specific_data.metadata  # type: ignore[union-attr]
        for e in paused.all_events
        if e.event_type_value == "STEP_OUTPUT" and e.step_key == "design_op"
    )
    assert design_md["planned_files"].value == ["calc/ops.py"]
    assert design_md["design_hash"].value == ApprovalStore(state_dir).get("c-appr").design_hash  # type: ignore[union-attr]

    approved = defs.get_job_def("nomic_approve").execute_in_process(
        instance=instance,
        run_config={"ops": {"decide_op": {"config": {"cycle_id": "c-appr", "who": "dana"}}}},
    )
    assert approved.success
    record = approved.output_for_node("record_cycle_op")
    assert record.outcome is Outcome.COMMITTED, record.reason
    assert executed_steps(instance, approved.run_id) == {
        "decide_op",
        "implement_op",
        "verify_op",
        "commit_op",
        "record_cycle_op",
    }
    assert calls(calls_file) == [*DEBATE_AND_DESIGN, "implement"]
    assert materialization(instance, "c-appr").metadata["outcome"].value == "committed"
    run = instance.get_run_by_id(approved.run_id)
    assert run is not None
    assert run.tags["nomic/cycle_id"] == "c-appr" and run.tags["nomic/track"] == "developer"
    trailers = run_git(repo, "log", "-1", "--format=%(trailers:only,unfold)", record.commit_sha)
    assert f"Nomic-Run-Id: {approved.run_id}" in trailers
    (decision,) = ApprovalStore(state_dir).decisions("c-appr")
    assert decision.who == "dana"


def test_reexecution_from_failure_reruns_implement_only(
    repo: Path,
    calls_file: Path,
    state_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    instance: dg.DagsterInstance,
) -> None:
    monkeypatch.setenv("NOMIC_TEST_FLAKY_MARKER", str(tmp_path / "flaky-marker"))
    job = dg.reconstructable(nomic_cycle_job)
    first = dg.execute_job(
        job,
        instance=instance,
        run_config=cycle_run_config(repo, FlakyImplementer),
        tags={"nomic/cycle_id": "c-flaky"},
        raise_on_error=False,
    )
    assert not first.success
    failed = {e.step_key for e in first.all_events if e.event_type_value == "STEP_FAILURE"}
    assert failed == {"implement_op"}
    assert materialization(instance, "c-flaky").metadata["outcome"].value == (
        "implementation_failed"
    )
    history = CycleHistory(state_dir)
    assert history.get("c-flaky").outcome is Outcome.IMPLEMENTATION_FAILED  # type: ignore[union-attr]
    assert calls(calls_file) == [*DEBATE_AND_DESIGN, "implement"]
    paid = FlakyImplementer.IMPLEMENT_USD
    assert history.get("c-flaky").cost_usd == pytest.approx(paid)  # type: ignore[union-attr]

    again = dg.execute_job(
        job,
        instance=instance,
        reexecution_options=dg.ReexecutionOptions.from_failure(first.run_id, instance),
        raise_on_error=False,
    )
    assert again.success
    assert executed_steps(instance, again.run_id) == {
        "implement_op",
        "verify_op",
        "commit_op",
        "record_cycle_op",
    }
    # the stored debate and design were re-used: only IMPLEMENT called the agent again
    assert calls(calls_file) == [*DEBATE_AND_DESIGN, "implement", "implement"]
    md = materialization(instance, "c-flaky").metadata
    assert md["outcome"].value == "committed"
    record = history.get("c-flaky")
    assert record is not None and record.outcome is Outcome.COMMITTED
    assert [r.cycle_id for r in history.all()] == ["c-flaky"]  # replaced, not appended
    assert record.run_id == again.run_id
    # the failed attempt's spend still counts: the budget spans the re-execution
    assert record.cost_usd == pytest.approx(2 * paid)
    assert record.cost_by_phase == {
        "implement": pytest.approx(paid),
        "earlier_attempts": pytest.approx(paid),
    }
    assert run_git(repo, "rev-parse", "nomic/developer/c-flaky").strip() == record.commit_sha


# ---------------------------------------------------------------- the orchestrator


@pytest.mark.slow
def test_orchestrator_with_require_approval_stops_subtasks_awaiting_approval(
    tmp_path: Path, calls_file: Path
) -> None:
    """Real daemon, real `dagster job launch`: the first subtask's run stops after DESIGN,
    its dependant is not started, and approving the cycle then runs it to a commit."""
    home = isolated_home(tmp_path / "home")
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs()  # create the SQLite storages before the daemon opens them
        assert instance.event_log_storage is not None and instance.schedule_storage is not None
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_queue_daemon(instance)  # the runs are queued, not executed

            async def go() -> OrchestrationResult:
                orch = await AutonomousOrchestrator.create(
                    repo=str(repo),
                    instance=instance,
                    cycle_config={
                        "agents": [spec(CountingAgent)],
                        "test_command": FAST_TEST_COMMAND,
                    },
                    timeout_s=240,
                )
                return await orch.execute(
                    goal="Improve test coverage in debate module",
                    tracks=[Track.QA, Track.CORE],
                    require_approval=True,
                )

            result = asyncio.run(go())
        finally:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()

    first, second = result.subtasks
    assert second.subtask.dependencies == [first.subtask.id]
    assert (first.status, first.outcome) == ("awaiting_approval", "awaiting_approval")
    assert f"nomic approve {first.cycle_id}" in first.reason
    assert second.status == "not_started" and second.run_id is None
    assert result.approval_enforced and not result.success
    assert result.awaiting_approval == [first.cycle_id]
    assert nomic_branches(repo) == []
    assert calls(calls_file) == DEBATE_AND_DESIGN  # the second subtask never debated

    # the runs (launched with this test's $NOMIC_STATE_DIR) parked the cycle where we look
    _, record = approve(first.cycle_id, who="frank")
    assert record is not None and record.outcome is Outcome.COMMITTED, record
    assert nomic_branches(repo) == [f"nomic/qa/{first.cycle_id}"]
