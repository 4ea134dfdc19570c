"""AutonomousOrchestrator: a goal becomes subtasks, each subtask a queued track-job run.

    orchestrator = await AutonomousOrchestrator.create(repo="/path/to/repo")
    result = await orchestrator.execute(
        goal="Improve test coverage in debate module", tracks=[Track.QA, Track.CORE]
    )

The target is chosen by the target rule (`infra.git.choose_target`): `repo`, $NOMIC_REPO,
else the git repository the current directory is in (as for the state machine).

The goal is decomposed (`TaskDecomposer`), each subtask routed to a track (file prefix
first, then keywords), and run as a run of the job `nomic_cycle_<track>` on the Dagster
instance. When a daemon is dequeuing the instance's runs (`dagster dev`, `dagster-daemon
run`) the run is queued with `dagster job launch`, so the run queue and per-track tag
limits (dagster.yaml) decide when it starts. Without one a queued run would never start,
so the run is executed instead (`dagster job execute`, in a child process: the run and its
`cycle_records` materialization are on the instance all the same, it only bypasses the
queue). On top of that the orchestrator keeps at most `TrackConfig.max_concurrent_tasks`
of its own runs in flight per track.

A subtask is launched only after every dependency's run finished with SUCCESS; a failed,
canceled or skipped dependency marks its dependants skipped. The result reports every
subtask: run id, run status and the cycle's outcome from the `cycle_records`
materialization of its run.

With `require_approval=True` every run stops after DESIGN (outcome awaiting_approval): the
subtask is reported `awaiting_approval` with the command that approves it, and its
dependants are `not_started` (they need the approved commit first); the orchestration is
then not a success yet. Approving (`nomic approve <cycle_id>` or the `nomic_approve` job)
runs the cycle on; its dependants are a new `execute` away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import yaml
from pydantic import BaseModel, ConfigDict, Field

from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.records import Outcome, Track
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.infra.git import choose_target
from nomic_dagster.orchestration.assets import CYCLE_RECORDS
from nomic_dagster.orchestration.instance import PROJECT_ROOT
from nomic_dagster.orchestration.ops import CYCLE_ID_TAG
from nomic_dagster.planning.decomposer import (
    SubTask,
    TaskDecomposer,
    TaskDecomposition,
)

Status = Literal[
    "pending",
    "running",
    "completed",
    "failed",
    "skipped",
    "timed_out",
    "awaiting_approval",  # the run stopped after DESIGN for a person's decision
    "not_started",  # a dependency awaits approval
]
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
ORCHESTRATION_TAG = "nomic/orchestration_id"
SUBTASK_TAG = "nomic/subtask_id"
DEFINITIONS_MODULE = "nomic_dagster.definitions"
# How a subtask's run is started: queued for the daemon, or executed in a child process.
RunMode = Literal["queue", "execute"]
QUEUE_DAEMON = "QUEUED_RUN_COORDINATOR"


def orchestrated_target(repo: str | None) -> str:
    """The target every run works on, by the target rule (`choose_target`: `repo`, else
    $NOMIC_REPO, else the repository the current directory is in); a local path is made
    absolute here, at the entry point, so that no run resolves it against its own cwd."""
    return choose_target(repo)


def run_mode(instance: dg.DagsterInstance) -> RunMode:
    """How runs start on `instance`: queued when a queued run will start (the instance has
    no run queue, or a daemon that dequeues runs sent a heartbeat recently), else executed."""
    if QUEUE_DAEMON not in instance.get_required_daemon_types():
        return "queue"  # no run queue: `dagster job launch` starts the run itself
    status = instance.get_daemon_statuses([QUEUE_DAEMON]).get(QUEUE_DAEMON)
    return "queue" if status is not None and status.healthy else "execute"


@dataclass
class _Execution:
    """A subtask run executed in a child process (no daemon): what to watch and clean up."""

    process: asyncio.subprocess.Process
    stderr_path: str
    config_path: str

    def stderr_tail(self) -> str:
        return Path(self.stderr_path).read_text(errors="replace")[-2000:]


class TrackConfig(BaseModel):
    """A track's owned folders (routing), keywords (routing fallback) and run concurrency."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    track: Track
    folders: tuple[str, ...]
    keywords: tuple[str, ...]
    max_concurrent_tasks: int = Field(ge=1)


# Keyword routing order is the reference's (SME, developer, self_hosted, QA, core,
# security); concurrency equals the tag limits in dagster.yaml.
DEFAULT_TRACK_CONFIGS: dict[Track, TrackConfig] = {
    c.track: c
    for c in (
        TrackConfig(
            track=Track.SME,
            folders=("ui/", "frontend/", "web/", "live/", "server/handlers/"),
            keywords=("ui", "frontend", "user", "dashboard", "workspace", "admin"),
            max_concurrent_tasks=2,
        ),
        TrackConfig(
            track=Track.DEVELOPER,
            folders=("sdk/", "docs/", "tests/sdk/", "examples/"),
            keywords=("sdk", "api", "documentation", "docs", "client"),
            max_concurrent_tasks=2,
        ),
        TrackConfig(
            track=Track.SELF_HOSTED,
            folders=("scripts/", "docker/", "deploy/", "docs/deployment/", "backup/"),
            keywords=("docker", "deploy", "deployment", "backup", "restore", "ops", "kubernetes"),
            max_concurrent_tasks=1,
        ),
        TrackConfig(
            track=Track.QA,
            folders=("tests/", "test/", "e2e/", ".github/workflows/"),
            keywords=("test", "tests", "testing", "e2e", "ci", "coverage", "quality"),
            max_concurrent_tasks=3,
        ),
        TrackConfig(
            track=Track.CORE,
            folders=("core/", "debate/", "agents/", "memory/"),
            keywords=("debate", "consensus", "arena", "agent", "agents", "memory", "core"),
            max_concurrent_tasks=1,
        ),
        TrackConfig(
            track=Track.SECURITY,
            folders=("security/", "audit/", "auth/", "rbac/"),
            keywords=(
                "security",
                "vuln",
                "vulnerability",
                "auth",
                "encrypt",
                "secret",
                "owasp",
                "xss",
                "csrf",
                "injection",
            ),
            max_concurrent_tasks=2,
        ),
    )
}


def route(subtask: SubTask, configs: dict[Track, TrackConfig] | None = None) -> Track:
    """The subtask's track: the longest owned folder any file starts with, else the first
    track (in config order) with a keyword among the title's words, then the description's
    (whole words: "ui" does not match "build"), else developer."""
    configs = configs or DEFAULT_TRACK_CONFIGS
    best: tuple[int, Track] | None = None
    for path in subtask.file_scope:
        norm = path.lstrip("./")
        for cfg in configs.values():
            for folder in cfg.folders:
                if norm.startswith(folder) and (best is None or len(folder) > best[0]):
                    best = (len(folder), cfg.track)
    if best is not None:
        return best[1]
    for text in (subtask.title, subtask.description):
        words = set(re.findall(r"[a-z0-9]+", text.lower()))
        for cfg in configs.values():
            if words & set(cfg.keywords):
                return cfg.track
    return Track.DEVELOPER


class SubTaskResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subtask: SubTask
    track: Track
    status: Status = "pending"
    cycle_id: str
    run_id: str | None = None
    run_status: str | None = None
    outcome: str | None = None
    reason: str = ""
    branch: str | None = None
    commit_sha: str | None = None
    started_at: float | None = None  # the run's start time (epoch seconds)
    finished_at: float | None = None


class OrchestrationResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    orchestration_id: str
    goal: str
    tracks: list[Track]
    require_approval: bool
    approval_enforced: bool = False  # True when require_approval: every run stops after DESIGN
    decomposition: TaskDecomposition
    subtasks: list[SubTaskResult]
    duration_seconds: float
    success: bool
    summary: str

    @property
    def completed(self) -> int:
        return sum(r.status == "completed" for r in self.subtasks)

    @property
    def failed(self) -> int:
        return sum(r.status in ("failed", "timed_out") for r in self.subtasks)

    @property
    def skipped(self) -> int:
        return sum(r.status == "skipped" for r in self.subtasks)

    @property
    def awaiting_approval(self) -> list[str]:
        """Cycle ids waiting for a person: `nomic approve <cycle_id>`."""
        return [r.cycle_id for r in self.subtasks if r.status == "awaiting_approval"]


class AutonomousOrchestrator:
    """Runs a goal as track-job runs on a Dagster instance. Build with `await create(...)`."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        repo: str | None = None,
        decomposer: TaskDecomposer | None = None,
        track_configs: dict[Track, TrackConfig] | None = None,
        cycle_config: dict[str, Any] | None = None,
        workspace: Path | None = None,
        poll_interval_s: float = 0.5,
        timeout_s: float = 3600.0,
        use_debate_decomposition: bool = False,
    ) -> None:
        self.instance = instance
        self.repo = orchestrated_target(repo)
        self._executions: dict[str, _Execution] = {}
        self.track_configs = track_configs or DEFAULT_TRACK_CONFIGS
        self.cycle_config = dict(cycle_config or {})
        if decomposer is None and use_debate_decomposition:
            # the agents' scan of the target the runs will work on (see TaskDecomposer)
            scan = CycleSettings.model_validate({**self.cycle_config, "repo": self.repo})
            decomposer = TaskDecomposer(complexity_threshold=4, use_debate=True, scan_settings=scan)
        self.decomposer = decomposer or TaskDecomposer(complexity_threshold=4)
        self.workspace = workspace or PROJECT_ROOT / "workspace.yaml"
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s

    @classmethod
    async def create(
        cls,
        repo: str | None = None,
        instance: dg.DagsterInstance | None = None,
        **kwargs: Any,
    ) -> AutonomousOrchestrator:
        """`repo` defaults to the repository the current directory is in (see
        `orchestrated_target`). `instance` defaults to `DagsterInstance.get()`
        ($DAGSTER_HOME). `cycle_config` holds extra `context_op` config for every run
        (agents, test_command, ...). `use_debate_decomposition=True` decomposes through
        those agents' scan of `repo`."""
        if instance is None:
            if not os.environ.get("DAGSTER_HOME"):
                raise BadInput(
                    "no Dagster instance: DAGSTER_HOME is not set",
                    "pass instance=... or `source scripts/env.sh`",
                )
            instance = dg.DagsterInstance.get()
        if instance.root_directory is None:
            raise BadInput(
                "the Dagster instance has no root directory to launch runs against",
                "use a DAGSTER_HOME-based instance (DagsterInstance.from_config(home))",
            )
        return cls(instance=instance, repo=repo, **kwargs)

    async def execute(
        self,
        goal: str,
        tracks: Sequence[Track] | None = None,
        require_approval: bool = False,
    ) -> OrchestrationResult:
        """Decompose `goal`, run each subtask on its track in dependency order, and report.

        Subtasks routed to a track outside `tracks` (all tracks when None) are skipped.
        `require_approval`: every run stops after DESIGN; those subtasks end
        `awaiting_approval`, their dependants `not_started`, and `success` is False until
        they are approved (see the module docstring).
        """
        started = time.monotonic()
        orch_id = uuid.uuid4().hex[:6]
        allowed = list(tracks) if tracks else list(Track)
        decomposition = await asyncio.to_thread(self.decomposer.analyze, goal)
        results: dict[str, SubTaskResult] = {}
        for n, sub in enumerate(decomposition.subtasks, start=1):
            track = route(sub, self.track_configs)
            res = SubTaskResult(subtask=sub, track=track, cycle_id=f"o{orch_id}-{n}")
            if track not in allowed:
                res.status, res.reason = "skipped", f"track {track.value} not requested"
            results[sub.id] = res

        deadline = started + self.timeout_s
        try:
            while True:
                self._refresh(results)
                self._skip_blocked(results)
                for res in self._ready(results):
                    await self._launch(res, orch_id, require_approval)
                if all(r.status not in ("pending", "running") for r in results.values()):
                    break
                if time.monotonic() > deadline:
                    for r in results.values():
                        if r.status in ("pending", "running"):
                            r.status = "timed_out"
                            r.reason = f"not finished after {self.timeout_s}s"
                    break
                await asyncio.sleep(self.poll_interval_s)
        finally:
            await self._end_executions()

        ordered = [results[s.id] for s in decomposition.subtasks]
        success = bool(ordered) and all(r.status in ("completed", "skipped") for r in ordered)
        summary = "; ".join(
            f"{r.subtask.id} [{r.track.value}] {r.status}"
            + (f" ({r.outcome})" if r.outcome else "")
            + (f": nomic approve {r.cycle_id}" if r.status == "awaiting_approval" else "")
            for r in ordered
        )
        return OrchestrationResult(
            orchestration_id=orch_id,
            goal=goal,
            tracks=allowed,
            require_approval=require_approval,
            approval_enforced=require_approval,
            decomposition=decomposition,
            subtasks=ordered,
            duration_seconds=round(time.monotonic() - started, 3),
            success=success,
            summary=summary or "no subtasks",
        )

    # -- scheduling ---------------------------------------------------------------------

    def _ready(self, results: dict[str, SubTaskResult]) -> list[SubTaskResult]:
        running: dict[Track, int] = {}
        for r in results.values():
            if r.status == "running":
                running[r.track] = running.get(r.track, 0) + 1
        ready = []
        for r in results.values():
            if r.status != "pending":
                continue
            deps = [results.get(d) for d in r.subtask.dependencies]
            if not all(d is not None and d.status == "completed" for d in deps):
                continue
            limit = self.track_configs[r.track].max_concurrent_tasks
            if running.get(r.track, 0) >= limit:
                continue
            running[r.track] = running.get(r.track, 0) + 1
            ready.append(r)
        return ready

    @staticmethod
    def _skip_blocked(results: dict[str, SubTaskResult]) -> None:
        changed = True
        while changed:
            changed = False
            for r in results.values():
                if r.status != "pending":
                    continue
                for dep_id in r.subtask.dependencies:
                    dep = results.get(dep_id)
                    if dep is not None and dep.status in ("awaiting_approval", "not_started"):
                        r.status = "not_started"
                        r.reason = f"dependency {dep_id} awaits approval (cycle {dep.cycle_id})"
                        changed = True
                        break
                    if dep is None or dep.status in ("failed", "skipped", "timed_out"):
                        r.status = "skipped"
                        r.reason = f"dependency {dep_id} did not complete"
                        changed = True
                        break

    async def _launch(
        self, res: SubTaskResult, orch_id: str, require_approval: bool = False
    ) -> None:
        sub = res.subtask
        config: dict[str, Any] = {**self.cycle_config, "goal": f"{sub.title}: {sub.description}"}
        if require_approval:
            config["require_approval"] = True
        config["repo"] = self.repo
        tags = {CYCLE_ID_TAG: res.cycle_id, ORCHESTRATION_TAG: orch_id, SUBTASK_TAG: sub.id}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            yaml.safe_dump({"ops": {"context_op": {"config": config}}}, fh)
            config_path = fh.name
        if run_mode(self.instance) == "execute":
            await self._execute(res, config_path, tags)
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "dagster"),
                "job", "launch", "-w", str(self.workspace),
                "-j", f"nomic_cycle_{res.track.value}",
                "-c", config_path, "--tags", json.dumps(tags),
                cwd=str(self.workspace.parent),
                env={**os.environ, "DAGSTER_HOME": str(self.instance.root_directory)},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await proc.communicate()
        finally:
            os.unlink(config_path)
        run = self._find_run(res.cycle_id)
        if proc.returncode != 0 or run is None:
            res.status = "failed"
            res.reason = f"launch failed: {(err or out).decode(errors='replace')[-2000:]}"
            return
        res.status, res.run_id = "running", run.run_id
        res.run_status = run.status.value

    async def _execute(self, res: SubTaskResult, config_path: str, tags: dict[str, str]) -> None:
        """Start the run with `dagster job execute` in a child process (no daemon would start
        a queued one); `_refresh` follows it on the instance like a queued run."""
        with tempfile.NamedTemporaryFile("wb", suffix=".stderr", delete=False) as err:
            proc = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "dagster"),
                "job", "execute", "-m", DEFINITIONS_MODULE,
                "-j", f"nomic_cycle_{res.track.value}",
                "-c", config_path, "--tags", json.dumps(tags),
                cwd=str(PROJECT_ROOT),
                env={**os.environ, "DAGSTER_HOME": str(self.instance.root_directory)},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # its step processes are stopped with it
            )  # fmt: skip
        self._executions[res.cycle_id] = _Execution(
            process=proc, stderr_path=err.name, config_path=config_path
        )
        res.status = "running"

    def _follow_execution(self, res: SubTaskResult) -> None:
        """An executed run's id once the run exists; a child that exited without making
        one is a failed launch (bad run config, ...)."""
        run = self._find_run(res.cycle_id)
        if run is not None:
            res.run_id, res.run_status = run.run_id, run.status.value
            return
        execution = self._executions.get(res.cycle_id)
        if execution is not None and execution.process.returncode is not None:
            res.status = "failed"
            res.reason = f"launch failed: {execution.stderr_tail()}"

    def _execution_died(self, res: SubTaskResult, run: dg.DagsterRun) -> bool:
        """The child executing an unfinished run has exited (killed): the run never ends."""
        execution = self._executions.get(res.cycle_id)
        if execution is None or execution.process.returncode is None:
            return False
        latest = self.instance.get_run_by_id(run.run_id)  # written before the child exited
        if latest is not None and latest.status in DONE:
            return False
        res.status = "failed"
        res.reason = (
            f"the process executing run {run.run_id} exited with code "
            f"{execution.process.returncode} before the run ended: {execution.stderr_tail()}"
        )
        return True

    async def _end_executions(self) -> None:
        """Stop the children of runs still in flight (a timeout) and remove their files."""
        for execution in self._executions.values():
            if execution.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                    os.killpg(execution.process.pid, signal.SIGTERM)
                await execution.process.wait()
            for path in (execution.stderr_path, execution.config_path):
                Path(path).unlink(missing_ok=True)
        self._executions.clear()

    def _find_run(self, cycle_id: str) -> dg.DagsterRun | None:
        runs = self.instance.get_runs(filters=dg.RunsFilter(tags={CYCLE_ID_TAG: cycle_id}))
        return runs[0] if runs else None

    def _refresh(self, results: dict[str, SubTaskResult]) -> None:
        for res in results.values():
            if res.status == "running" and res.run_id is None:
                self._follow_execution(res)
            if res.status != "running" or res.run_id is None:
                continue
            record = self.instance.get_run_record_by_id(res.run_id)
            if record is None:
                continue
            run = record.dagster_run
            res.run_status = run.status.value
            if run.status not in DONE:
                self._execution_died(res, run)
                continue
            res.started_at, res.finished_at = record.start_time, record.end_time
            res.status = "completed" if run.status == dg.DagsterRunStatus.SUCCESS else "failed"
            self._read_outcome(res)
            if res.status == "completed" and res.outcome == Outcome.AWAITING_APPROVAL.value:
                res.status = "awaiting_approval"
                res.reason = f"design awaits approval: nomic approve {res.cycle_id}"

    def _read_outcome(self, res: SubTaskResult) -> None:
        events = self.instance.all_logs(
            res.run_id or "", of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        )
        for event in events:
            mat = event.asset_materialization
            if mat is None or mat.asset_key != CYCLE_RECORDS:
                continue
            md = mat.metadata

            def text(key: str, md: dict[str, Any] = md) -> str | None:
                value = md.get(key)
                return str(value.value) if value is not None and value.value != "" else None

            res.outcome = text("outcome")
            res.reason = text("reason") or res.reason
            res.branch = text("branch")
            res.commit_sha = text("commit_sha")
        if res.outcome is None and res.status == "failed":
            res.reason = res.reason or f"run {res.run_id} ended {res.run_status}"
