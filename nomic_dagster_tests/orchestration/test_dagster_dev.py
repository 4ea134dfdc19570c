"""Autonomy under `dagster dev`: the webserver, the daemon and a code server in a
subprocess, on a temporary instance, planning for a small target repository.

A person does one thing over GraphQL, as in the UI: switches the planner sensor on. From
there the system runs by itself: on the fresh instance the sensor launches the first plan
(the `nomic_refresh_learning` job, once), on a later tick the planner's goals as queued
cycle runs held to the track's run limit, a cycle commits, the automation sensor
refreshes the learning tables and the priorities from it. The asset graph is read back
over GraphQL.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import pytest
import yaml

from nomic_dagster.orchestration.instance import isolated_home
from nomic_dagster.orchestration.sensors import (
    AUTOMATION_SENSOR,
    FIRST_PLAN_RUN_KEY,
    PLANNER_SENSOR,
    REFRESH_LEARNING_JOB,
    SENSOR_NAME_TAG,
)
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND, GIT_ENV, make_repo

# Upper bounds, for a 2-core machine running the rest of the suite beside this test (the
# first plan, a cycle and a learning refresh each start a run process): every wait ends as
# soon as its condition holds.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DAGSTER = str(Path(sys.executable).parent / "dagster")
TRACK = "developer"
TRACK_LIMIT = 1  # the copied dagster.yaml holds the developer track to one run at a time
T = TypeVar("T")

# Unused imports and a FIXME: two developer goals (lint-fix, resolve-markers) for the scan.
TARGET = {
    "shapes/__init__.py": '"""Shapes."""\n',
    "shapes/geometry.py": (
        '"""Areas."""\nimport math\nimport os\nimport sys\n\n\n'
        "def circle_area(r: float) -> float:\n    # FIXME: negative radii\n"
        "    return round(math.pi * r * r, 4)\n"
    ),
    "tests/test_geometry.py": (
        "from shapes.geometry import circle_area\n\n\n"
        "def test_circle_area():\n    assert circle_area(1.0) == 3.1416\n"
    ),
}

WORKSPACE_MODULE = """\
from nomic_dagster.definitions import build_defs
from nomic_dagster.orchestration.autonomy import PlannerResource
from nomic_dagster.orchestration.resources import NomicResource

defs = build_defs(
    {{
        "nomic": NomicResource(state_dir={state!r}),
        "planner": PlannerResource(
            repo={repo!r},
            tracks=[{track!r}],
            agents=["lint-fixer"],
            max_goals=2,
            test_command={test_command!r},
        ),
    }}
)
"""

ASSET_GRAPH = "{ assetNodes { assetKey { path } dependencyKeys { path } } }"
REPOSITORIES = (
    "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
)
LEARNING_ASSETS = ["agent_performance", "pattern_reinforcements", "meta_planner_priorities"]
START_SENSOR = """
mutation($s: SensorSelector!) {
  startSensor(sensorSelector: $s) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float, log: Path) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{tail}")


class DevServer:
    def __init__(self, port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert "errors" not in answer, answer
        return answer["data"]

    def up(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False


@pytest.fixture
def dagster_dev(tmp_path: Path) -> Iterator[tuple[DevServer, Path, Path]]:
    """`dagster dev` on a temporary DAGSTER_HOME; the whole process group is killed after."""
    home = isolated_home(tmp_path / "dagster_home")
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    for limit in config["concurrency"]["runs"]["tag_concurrency_limits"]:
        if limit["value"] == TRACK:
            limit["limit"] = TRACK_LIMIT
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    state = tmp_path / "nomic_state"
    repo = make_repo(tmp_path / "target", TARGET)
    code = tmp_path / "code"
    code.mkdir()
    (code / "autonomy_defs.py").write_text(
        textwrap.dedent(
            WORKSPACE_MODULE.format(
                state=str(state), repo=str(repo), track=TRACK, test_command=FAST_TEST_COMMAND
            )
        )
    )
    port = free_port()
    log = tmp_path / "dagster_dev.log"
    env = {
        **os.environ,
        **GIT_ENV,
        "DAGSTER_HOME": str(home),
        "NOMIC_STATE_DIR": str(state),
        "NOMIC_REPO": str(repo),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("NOMIC_METRICS_PORT", None)
    with log.open("w") as out:
        process = subprocess.Popen(
            [DAGSTER, "dev", "-f", "autonomy_defs.py", "-h", "127.0.0.1", "-p", str(port)],
            cwd=code,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: killed as one below
            # A background shell may leave SIGINT ignored, and dagster dev maps SIGTERM to it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        server = DevServer(port, log)
        wait_for("the webserver", server.up, 180, log)
        yield server, home, repo
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(ProcessLookupError):  # what is left: code servers, run workers
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=10)


def overlap(instance: dg.DagsterInstance, runs: list[dg.RunRecord]) -> int:
    """The most runs that were executing at one moment, from their start and end times."""
    edges: list[tuple[float, int]] = []
    for run in runs:
        stats = instance.get_run_stats(run.dagster_run.run_id)
        if stats.start_time is not None:
            edges += [(stats.start_time, 1), (stats.end_time or time.time(), -1)]
    most = current = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):  # an end before a start
        current += step
        most = max(most, current)
    return most


def materializations(instance: dg.DagsterInstance, key: str) -> list[dg.EventLogRecord]:
    return list(instance.fetch_materializations(dg.AssetKey(key), limit=100).records)


def test_dagster_dev_plans_launches_and_learns_by_itself(
    dagster_dev: tuple[DevServer, Path, Path],
) -> None:
    server, home, repo = dagster_dev
    started = time.monotonic()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        nodes = server.graphql(REPOSITORIES)["repositoriesOrError"]["nodes"]
        where = {
            "repositoryLocationName": nodes[0]["location"]["name"],
            "repositoryName": nodes[0]["name"],
        }
        assert not materializations(instance, "meta_planner_priorities")  # a fresh instance
        # a person switches autonomy on (the UI's toggle is this mutation); nothing else
        selector = {**where, "sensorName": PLANNER_SENSOR}
        started_sensor = server.graphql(START_SENSOR, {"s": selector})["startSensor"]
        assert started_sensor["sensorState"]["status"] == "RUNNING", started_sensor

        # the daemon launches the planner's goals as queued runs, one developer run at a time
        most_at_once = 0
        planner_runs: list[dg.RunRecord] = []

        def one_committed() -> list[dict[str, Any]]:
            nonlocal most_at_once, planner_runs
            planner_runs = list(
                instance.get_run_records(dg.RunsFilter(tags={"nomic/goal_source": "planner"}))
            )
            running = [
                r
                for r in planner_runs
                if r.dagster_run.status
                in (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)
            ]
            most_at_once = max(most_at_once, len(running))
            records = [
                m.asset_materialization.metadata["record"].value
                for m in materializations(instance, "cycle_records")
            ]
            return [r for r in records if r["outcome"] == "committed"]

        committed = wait_for("a committed planner cycle", one_committed, 300, server.log)
        assert 1 <= len(planner_runs) <= 2  # max_goals
        # the first plan came from the planner sensor, once, though it ticked again since
        first_plans = instance.get_run_records(dg.RunsFilter(job_name=REFRESH_LEARNING_JOB))
        assert len(first_plans) == 1
        first_plan = first_plans[0].dagster_run
        assert first_plan.tags[SENSOR_NAME_TAG] == PLANNER_SENSOR
        assert first_plan.tags["dagster/run_key"] == FIRST_PLAN_RUN_KEY
        assert first_plan.status == dg.DagsterRunStatus.SUCCESS
        # its goals waited for an automation tick after the plan, so their cycle records land
        # in a later automation window than the plan's own materialization (sensors.py)
        plan_at = next(
            m.timestamp
            for m in materializations(instance, "meta_planner_priorities")
            if m.run_id == first_plan.run_id
        )
        launched_at = min(r.create_timestamp.timestamp() for r in planner_runs)
        assert instance.schedule_storage is not None
        evaluations = instance.schedule_storage.get_auto_materialize_asset_evaluations(
            dg.AssetKey("meta_planner_priorities"), limit=100
        )
        assert any(plan_at < e.timestamp < launched_at for e in evaluations)
        for run in planner_runs:
            tags = run.dagster_run.tags
            assert tags["nomic/trigger"] == "planner" and tags["nomic/track"] == TRACK
            assert tags["dagster/sensor_name"] == PLANNER_SENSOR
            assert run.dagster_run.job_name == f"nomic_cycle_{TRACK}"
        assert most_at_once <= TRACK_LIMIT
        assert overlap(instance, planner_runs) <= TRACK_LIMIT  # from the runs' own start/end
        cycle = committed[0]
        assert cycle["track"] == TRACK and cycle["repo"] == str(repo)
        assert cycle["cycle_id"] in {r.dagster_run.tags["nomic/cycle_id"] for r in planner_runs}

        # the committed cycle refreshes the learning tables, and they the priorities
        landed_at = max(
            m.timestamp
            for m in materializations(instance, "cycle_records")
            if m.asset_materialization.metadata["outcome"].value == "committed"
        )

        def refreshed() -> bool:
            return all(
                any(m.timestamp > landed_at for m in materializations(instance, key))
                for key in LEARNING_ASSETS
            )

        wait_for("the learning assets after the cycle", refreshed, 240, server.log)
        newest = materializations(instance, "meta_planner_priorities")[0]
        refresh = instance.get_run_by_id(newest.run_id)
        assert refresh is not None
        assert refresh.tags.get("dagster/sensor_name") == AUTOMATION_SENSOR  # not a person
        priorities = newest.asset_materialization.metadata["priorities"].value
        # the kind's history, from the cycles the daemon just ran, now weighs in the ranking
        assert re.search(r"lint-fix landed [12] of [12] tries", priorities), priorities
        performance = materializations(instance, "agent_performance")[0]
        assert performance.asset_materialization.metadata["commits_landed"].value >= 1

    # the lineage a person follows in the UI: cycle -> learning tables -> next priorities
    graph = {
        tuple(n["assetKey"]["path"]): {tuple(d["path"]) for d in n["dependencyKeys"]}
        for n in server.graphql(ASSET_GRAPH)["assetNodes"]
    }
    assert graph[("agent_performance",)] == {("cycle_records",)}
    assert graph[("pattern_reinforcements",)] == {("cycle_records",)}
    assert graph[("meta_planner_priorities",)] == {
        ("agent_performance",),
        ("pattern_reinforcements",),
    }
    assert time.monotonic() - started < 240
