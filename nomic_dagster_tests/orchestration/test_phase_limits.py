"""The phase table in Dagster: every op of the built jobs reads it, a phase past its
timeout is stopped, retried and recorded once, and a retry never records a cycle twice.
Real Dagster runs on a temporary SQLite instance, real git repositories and subprocesses."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import dagster as dg
import pytest

from nomic_dagster.core.events import EventType, bus
from nomic_dagster.core.phases import PHASES, PhaseSpec, resume_phases, worst_case_s
from nomic_dagster.core.records import Outcome, Phase, Track
from nomic_dagster.cycle.history import CycleHistory
from nomic_dagster.definitions import build_defs
from nomic_dagster.orchestration.jobs import nomic_cycle_graph
from nomic_dagster.orchestration.ops import LLM_POOL, phase_op, record_cycle_op
from nomic_dagster.orchestration.phase_limits import MAX_RUNTIME_TAG, TIMEOUT_TAG
from nomic_dagster.orchestration.resources import NomicResource, default_agent_resources
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND, make_repo, run_git

CYCLE_RECORDS = dg.AssetKey("cycle_records")


def _materializations(instance: dg.DagsterInstance, cycle_id: str) -> int:
    return len(
        instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=CYCLE_RECORDS, asset_partitions=[cycle_id]),
            limit=10,
        ).records
    )


def _events(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType, step: str):
    return [e for e in instance.all_logs(run_id, of_type=kind) if e.step_key == step]


def _records(state_dir: Path, cycle_id: str):
    return [r for r in CycleHistory(state_dir).all() if r.cycle_id == cycle_id]


def _assert_op_reads_the_table(op: dg.OpDefinition, spec: PhaseSpec) -> None:
    assert op.description == spec.description
    assert op.pool == (LLM_POOL if spec.calls_models else None)
    assert op.retry_policy is not None and op.retry_policy.max_retries == spec.max_retries
    assert op.tags["nomic/phase"] == spec.phase.value
    assert float(op.tags[TIMEOUT_TAG]) == spec.timeout_s


def _upstream(job: dg.JobDefinition, node: str) -> list[str]:
    deps = job.graph.dependency_structure.input_to_upstream_outputs_for_node(node)
    return sorted({o.node.name for outs in deps.values() for o in outs})


def test_every_op_of_the_built_jobs_reads_the_phase_table(state_dir: Path, instance) -> None:
    defs = build_defs({"nomic": NomicResource(state_dir=str(state_dir))})
    for name in ["nomic_cycle", *(f"nomic_cycle_{t.value}" for t in Track)]:
        job = defs.get_job_def(name)
        assert job.tags[MAX_RUNTIME_TAG] == f"{worst_case_s():.0f}"
        phase_nodes = [n.name for n in job.graph.nodes if n.name != "record_cycle_op"]
        assert sorted(phase_nodes) == sorted(f"{p.value}_op" for p in PHASES)
        for phase, spec in PHASES.items():
            _assert_op_reads_the_table(job.graph.node_named(f"{phase.value}_op").definition, spec)
        order = list(PHASES)  # each phase op takes the state of the one before it in the table
        for before, after in itertools.pairwise(order):
            assert _upstream(job, f"{after.value}_op") == [f"{before.value}_op"]
    approve = defs.get_job_def("nomic_approve")
    assert approve.tags[MAX_RUNTIME_TAG] == f"{worst_case_s(resume_phases()):.0f}"
    assert sorted(n.name for n in approve.graph.nodes) == sorted(
        ["decide_op", "record_cycle_op", *(f"{p.value}_op" for p in resume_phases())]
    )
    assert _upstream(approve, f"{resume_phases()[0].value}_op") == ["decide_op"]
    for phase in resume_phases():
        _assert_op_reads_the_table(
            approve.graph.node_named(f"{phase.value}_op").definition, PHASES[phase]
        )


def test_the_instance_config_enables_run_monitoring_for_max_runtime() -> None:
    import yaml

    root = Path(__file__).resolve().parents[2]
    for path in (root / "dagster.yaml", root / "deploy" / "postgres" / "dagster.yaml"):
        monitoring = yaml.safe_load(path.read_text())["run_monitoring"]
        assert monitoring["enabled"] is True, path


@pytest.fixture
def resources(state_dir: Path) -> dict:
    return {"nomic": NomicResource(state_dir=str(state_dir)), **default_agent_resources()}


def test_a_phase_past_its_timeout_is_stopped_retried_then_recorded_once(
    tmp_path: Path, state_dir: Path, instance, resources: dict
) -> None:
    finished = tmp_path / "suite_finished"
    suite = (
        "import pathlib, time\n"
        "time.sleep(6)\n"
        f"pathlib.Path({str(finished)!r}).write_text('the suite ran to its end')\n"
    )
    repo = make_repo(tmp_path / "slow", {"app.py": "X = 1\n", "slow_suite.py": suite})
    short = PHASES[Phase.CONTEXT].model_copy(update={"timeout_s": 1.5, "max_retries": 1})

    @dg.job
    def slow_context():
        _, ended = phase_op(Phase.CONTEXT, short)()
        record_cycle_op([ended])

    timeouts: list[dict] = []
    unsubscribe = bus.subscribe(lambda e: e.type is EventType.TIMEOUT and timeouts.append(e.data))
    started = time.monotonic()
    try:
        result = slow_context.execute_in_process(
            instance=instance,
            resources=resources,
            run_config={
                "ops": {
                    "context_op": {
                        "config": {
                            "repo": str(repo),
                            "test_command": "python slow_suite.py",
                            "test_timeout_s": 60,
                            "agents": [ta.spec(ta.GoodAgent)],
                        }
                    }
                }
            },
            tags={"nomic/cycle_id": "c-slow"},
            raise_on_error=False,
        )
    finally:
        unsubscribe()
    elapsed = time.monotonic() - started
    assert not result.success  # an error outcome fails the run, after it is recorded
    restarted = _events(instance, result.run_id, dg.DagsterEventType.STEP_RESTARTED, "context_op")
    assert len(restarted) == 1  # the table's one retry, through the op's RetryPolicy
    assert [t["attempt"] for t in timeouts] == [1, 2]
    [record] = _records(state_dir, "c-slow")
    assert record.outcome is Outcome.ERROR
    assert "context exceeded its limit of 1.5 s (2 attempts)" in record.reason
    assert _materializations(instance, "c-slow") == 1
    assert elapsed < 12  # two 1.5 s attempts, not two 6 s suites
    time.sleep(max(0.0, 7.5 - elapsed))
    assert not finished.exists(), "the suite of a timed-out attempt went on running"
    worktrees = run_git(repo, "worktree", "list", "--porcelain").count("worktree ")
    assert worktrees == 1  # both attempts' worktrees are gone


@pytest.fixture
def gate_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "gate", ta.GATE_REPO)


def _cycle_config(repo: Path, agent: type) -> dict:
    return {
        "ops": {
            "context_op": {
                "config": {
                    "repo": str(repo),
                    "test_command": FAST_TEST_COMMAND,
                    "agents": [ta.spec(agent)],
                }
            }
        }
    }


def test_a_recorded_failure_is_not_retried(
    gate_repo: Path, state_dir: Path, instance, resources: dict
) -> None:
    """verify_op has three retries, but a cycle that failed verification is a recorded
    outcome: the step fails once, the cycle has one record and one materialization."""
    job = build_defs({"nomic": NomicResource(state_dir=str(state_dir))}).get_job_def("nomic_cycle")
    assert job.graph.node_named("verify_op").definition.retry_policy.max_retries == 3
    result = job.execute_in_process(
        instance=instance,
        run_config=_cycle_config(gate_repo, ta.Breaker),
        tags={"nomic/cycle_id": "c-broken"},
        raise_on_error=False,
    )
    assert not result.success
    failures = _events(instance, result.run_id, dg.DagsterEventType.STEP_FAILURE, "verify_op")
    assert len(failures) == 1
    assert not _events(instance, result.run_id, dg.DagsterEventType.STEP_RESTARTED, "verify_op")
    [record] = _records(state_dir, "c-broken")
    assert record.outcome is Outcome.VERIFICATION_FAILED
    assert _materializations(instance, "c-broken") == 1


class _LosesTheFirstDebateOutput(dg.ConfigurableIOManager):
    """In memory, except that storing debate_op's first output fails (a full disk)."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._values: dict[tuple[str, str], object] = {}
        self._failed = False

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if context.step_key == "debate_op" and not self._failed:
            self._failed = True
            raise OSError("No space left on device")
        self._values[(context.step_key, context.name)] = obj

    def load_input(self, context: dg.InputContext) -> object:
        upstream = context.upstream_output
        assert upstream is not None
        return self._values[(upstream.step_key, upstream.name)]


def test_a_phase_whose_output_was_lost_is_not_run_again(
    gate_repo: Path, state_dir: Path, instance, resources: dict
) -> None:
    """debate ran, storing its result failed: the retry must not debate (and pay) again."""
    job = nomic_cycle_graph.to_job(
        name="lossy_cycle",
        resource_defs={
            **{k: dg.ResourceDefinition.hardcoded_resource(v) for k, v in resources.items()},
            "io_manager": _LosesTheFirstDebateOutput(),
        },
        executor_def=dg.in_process_executor,
    )
    started: list[str] = []
    unsubscribe = bus.subscribe(
        lambda e: e.type is EventType.PHASE_STARTED and started.append(e.data["phase"])
    )
    try:
        result = job.execute_in_process(
            instance=instance,
            run_config=_cycle_config(gate_repo, ta.GoodAgent),
            tags={"nomic/cycle_id": "c-lossy"},
            raise_on_error=False,
        )
    finally:
        unsubscribe()
    assert not result.success
    assert started == ["context", "debate"]  # debate once; nothing after it
    assert (
        len(_events(instance, result.run_id, dg.DagsterEventType.STEP_RESTARTED, "debate_op")) == 1
    )
    [record] = _records(state_dir, "c-lossy")
    assert record.outcome is Outcome.ERROR
    assert "debate finished in an earlier attempt" in record.reason
    assert _materializations(instance, "c-lossy") == 1
    assert not run_git(gate_repo, "branch", "--list", "nomic/*").strip()
