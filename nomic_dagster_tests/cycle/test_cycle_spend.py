"""What a cycle's model calls cost, wherever its phases run.

The calls travel in the cycle's state, tagged with their phase, so the cost in the record
and in the run metadata is complete and the budget spans the whole cycle even when every
phase runs in its own process: Dagster's multiprocess executor, the state machine's child
processes. Real SDK clients against the loopback servers; real Dagster instances.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from nomic_dagster.core.records import Goal, Outcome, Proposal, RepoContext
from nomic_dagster.cycle.finish import finish_cycle
from nomic_dagster.cycle.steps import drive_cycle, run_cycle
from nomic_dagster.definitions import build_defs
from nomic_dagster.drivers.loop import NomicLoop
from nomic_dagster.drivers.state_machine import create_nomic_state_machine
from nomic_dagster.orchestration.instance import isolated_home
from nomic_dagster.orchestration.ops import LLM_POOL
from nomic_dagster.orchestration.provider_pools import provider_pool
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support import llm_scripts as ls
from nomic_dagster_tests.support.fake_llm_servers import FakeAnthropicServer, FakeOpenAIServer
from nomic_dagster_tests.support.repo_builders import make_repo, settings_for
from nomic_dagster_tests.support.run_configs import cycle_config, fast_cycle_config

DAGSTER = str(Path(sys.executable).parent / "dagster")
EXECUTE = ["job", "execute", "-m", "nomic_dagster.definitions", "-j", "nomic_cycle"]
ROOT = Path(__file__).resolve().parents[2]
LLM_PHASES_OPS = ("debate", "design", "implement")
ANTHROPIC_KEY = "sk-ant-test-spend-0123456789"
OPENAI_KEY = "sk-test-spend-0123456789abcdef"


pytestmark = pytest.mark.usefixtures("llm_env")  # conftest: a clean LLM environment


@pytest.fixture
def servers(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[FakeAnthropicServer, FakeOpenAIServer]]:
    gpt = ls.winning_steps(
        "claude:1",
        submit_proposals=ls.proposals(
            ls.proposal(kind="docs", title="Add docstrings", files=["calc/ops.py"], benefit=0.3)
        ),
    )
    with (
        FakeAnthropicServer(ls.anthropic_script(ls.winning_steps("claude:1"))) as claude_server,
        FakeOpenAIServer(ls.openai_script(gpt)) as gpt_server,
    ):
        monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", claude_server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", gpt_server.base_url)
        yield claude_server, gpt_server


def nomic_cycle_job() -> dg.JobDefinition:
    # Reconstructable in the executor's child processes: NOMIC_STATE_DIR (set per test by
    # conftest) places their state where the test looks.
    return build_defs().get_job_def("nomic_cycle")


@pytest.mark.slow
def test_multiprocess_run_records_every_call_and_its_phase(
    tmp_path: Path, instance: dg.DagsterInstance, servers
) -> None:
    claude_server, gpt_server = servers
    repo = make_repo(tmp_path / "target", ls.CALC_REPO)
    with dg.execute_job(
        dg.reconstructable(nomic_cycle_job),
        instance=instance,
        run_config={
            **fast_cycle_config(repo=str(repo), agents=["claude", "gpt"]),
            "execution": {"config": {"multiprocess": {"max_concurrent": 1}}},
        },
        tags={"nomic/cycle_id": "c-mp"},
    ) as result:
        assert result.success
        record = result.output_for_node("record_cycle_op")
    assert record.outcome is Outcome.COMMITTED, record.reason
    sent = len(claude_server.api_requests()) + len(gpt_server.api_requests())
    # Every request made in the debate, design and implement processes is in the record.
    assert record.llm_calls == sent > 0
    assert set(record.cost_by_phase) == {"debate", "design", "implement"}
    assert sum(record.cost_by_phase.values()) == pytest.approx(record.cost_usd)
    assert record.cost_usd > 0 and set(record.cost_by_agent) == {"claude", "gpt"}
    assert sum(record.tokens_by_phase.values()) == record.tokens > 0
    assert sum(record.tokens_by_agent.values()) == record.tokens

    # The UI shows each phase's own cost on its step's output.
    step_cost = {}
    call_rows = 0
    for event in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_OUTPUT):
        data = event.dagster_event.event_specific_data
        md = {k: v.value for k, v in data.metadata.items()}
        if "cost_usd" in md:
            step_cost[event.step_key] = md["cost_usd"]
            call_rows += sum(
                line.startswith(("| claude ", "| gpt ")) for line in md["calls"].splitlines()
            )
    assert set(step_cost) == {"debate_op", "design_op", "implement_op"}
    assert step_cost["debate_op"] == pytest.approx(record.cost_by_phase["debate"])
    assert sum(step_cost.values()) == pytest.approx(record.cost_usd)
    assert call_rows == record.llm_calls  # each call is a row of its step's `calls` table


@pytest.mark.slow
def test_the_budget_spans_phases_run_in_child_processes(tmp_path: Path, servers) -> None:
    """The state machine runs each phase in a child process: a budget that the debate
    nearly spends must still stop the design, which runs in a fresh process."""
    claude_server, _ = servers
    repo = make_repo(tmp_path / "target", ls.CALC_REPO)
    probe = drive_cycle(settings_for(repo, agents=["claude"]))
    assert finish_cycle(probe).outcome is Outcome.COMMITTED, probe.reason
    debate = [c for c in probe.llm_calls if c.phase == "debate"]
    (design,) = [c for c in probe.llm_calls if c.phase == "design"]
    debate_usd = sum(c.usage.usd for c in debate)
    assert len(debate) == 3 and debate_usd > 0

    before = len(claude_server.api_requests())
    # Room for the debate's calls (each reserves its worst case before it is sent), not
    # for the design's worst case after them.
    limit = max(sum(c.usage.usd for c in debate[:k]) + debate[k].worst_case_usd for k in range(3))
    assert debate_usd + design.worst_case_usd > limit
    limited = settings_for(repo, agents=["claude"], budget_usd=limit)
    machine = create_nomic_state_machine(checkpoint_dir=tmp_path / "ckpt")
    record = asyncio.run(machine.run(settings=limited))
    assert record is not None
    assert record.outcome is Outcome.BUDGET_EXHAUSTED, record.reason
    steps = [r.step for r in claude_server.api_requests()[before:]]
    assert "submit_design" not in steps and steps.count("submit_proposals") == 1
    assert record.cost_usd <= limit
    assert record.cost_by_phase == {"debate": pytest.approx(record.cost_usd)}


@pytest.mark.slow
def test_a_loop_budget_spans_its_cycles(tmp_path: Path, servers) -> None:
    """NomicLoop(budget_usd=...) is a budget per run: each cycle may spend what the earlier
    ones left, and the loop stops when a cycle could not make a call."""
    claude_server, _ = servers
    repo = make_repo(tmp_path / "target", ls.CALC_REPO)
    probe = drive_cycle(settings_for(repo, agents=["claude"]))
    assert finish_cycle(probe).outcome is Outcome.COMMITTED, probe.reason
    calls = probe.llm_calls
    # Just enough for one whole cycle: every call's worst case fits after the ones before.
    budget = max(
        sum(c.usage.usd for c in calls[:k]) + calls[k].worst_case_usd for k in range(len(calls))
    )
    before = len(claude_server.api_requests())
    # A twin of the probe's repository, so no earlier cycle lengthens the prompts.
    twin = make_repo(tmp_path / "twin", ls.CALC_REPO)
    loop = NomicLoop(
        settings=settings_for(twin, agents=["claude"]),
        max_cycles=3,
        budget_usd=budget,
        checkpoint_dir=tmp_path / "ckpt",
    )
    records = asyncio.run(loop.run())
    assert [r.outcome for r in records] == [Outcome.COMMITTED, Outcome.BUDGET_EXHAUSTED]
    # Every request sent is in a record; the second cycle stopped at a call it could not
    # afford, and the run as a whole stayed under its budget.
    sent = len(claude_server.api_requests()) - before
    assert sent == records[0].llm_calls + records[1].llm_calls
    assert records[0].llm_calls == len(calls) and "budget exhausted" in records[1].reason
    assert loop.spent_usd == pytest.approx(records[0].cost_usd + records[1].cost_usd)
    assert loop.spent_usd <= budget


# ---------------------------------------------------------------- the model-call pool


def run_two_cycles_at_once(
    tmp_path: Path, files: dict[str, str], agents: list[str], env: dict[str, str]
) -> None:
    """Two `dagster job execute -j nomic_cycle` processes started together, each on its own
    copy of `files`; both must succeed."""
    runs = []
    for n in (1, 2):
        repo = make_repo(tmp_path / f"target{n}", files)
        fields = {"repo": str(repo), "agents": agents}
        fields["test_command"] = settings_for(repo).test_command
        run_config = tmp_path / f"run{n}.yaml"
        run_config.write_text(yaml.safe_dump(cycle_config(**fields)))
        runs.append(
            subprocess.Popen(
                [DAGSTER, *EXECUTE, "-c", str(run_config)],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for proc in runs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-4000:]


class TimedAgent(ta.ScriptedAgent):
    """A good agent whose proposal takes a second, as a model call would; it writes when
    each call started and ended to $NOMIC_TEST_INTERVALS."""

    name = "timed"

    def propose(self, context: RepoContext, goal: Goal) -> list[Proposal]:
        started = time.time()
        time.sleep(1.0)
        with open(os.environ["NOMIC_TEST_INTERVALS"], "a", encoding="utf-8") as fh:
            fh.write(f"{started} {time.time()}\n")
        return super().propose(context, goal)


@pytest.mark.slow
def test_the_llm_pool_limits_model_calling_steps_across_runs(
    tmp_path: Path, state_dir: Path
) -> None:
    """`nomic_llm` pool, limit 1: two `dagster job execute` runs started together (separate
    processes, one instance) never debate at the same time."""
    home = isolated_home(tmp_path / "home")
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    config["concurrency"]["pools"] = {"default_limit": 1}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(home)):
        pass  # create the SQLite storage once, not in both processes at the same moment
    intervals = tmp_path / "intervals.txt"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "NOMIC_STATE_DIR": str(state_dir),
        "NOMIC_TEST_INTERVALS": str(intervals),
        "PYTHONPATH": str(ROOT),  # the test's own agent, by import path
    }
    job = build_defs().get_job_def("nomic_cycle")
    assert {job.graph.node_named(f"{p}_op").definition.pool for p in LLM_PHASES_OPS} == {LLM_POOL}

    run_two_cycles_at_once(tmp_path, ta.GATE_REPO, [f"{__name__}:TimedAgent"], env)
    first, second = sorted(
        tuple(map(float, line.split())) for line in intervals.read_text().splitlines()
    )
    assert second[0] >= first[1]  # the second debate waited for the first step's slot
    with dg.DagsterInstance.from_config(str(home)) as inst:
        assert inst.event_log_storage.get_concurrency_info(LLM_POOL).slot_count == 1


@pytest.mark.slow
def test_a_provider_pool_limits_concurrent_calls_across_runs(
    tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nomic_llm_anthropic` set to 1: two claude cycles run at once (two `dagster job
    execute` processes, one instance), and the server never has two requests in flight."""
    script = ls.anthropic_script(ls.winning_steps("claude:1"))
    lock = threading.Lock()
    in_flight = [0, 0]  # now, most

    def slow(body: dict, request: object) -> object:
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight[1], in_flight[0])
        time.sleep(0.3)  # the model thinking: long enough for the other run to ask too
        with lock:
            in_flight[0] -= 1
        return script(body, request)  # type: ignore[arg-type]

    home = isolated_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as inst:
        inst.event_log_storage.set_concurrency_slots(provider_pool("anthropic"), 1)
    with FakeAnthropicServer(slow) as server:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "NOMIC_STATE_DIR": str(state_dir),
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": server.base_url,
        }
        run_two_cycles_at_once(tmp_path, ls.CALC_REPO, ["claude"], env)
        assert len(server.api_requests()) == 10  # five calls per cycle, both cycles whole
    assert in_flight[1] == 1


def test_a_budget_variable_that_is_not_a_number_is_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOMIC_BUDGET_USD", "ten dollars")
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    record = run_cycle(settings_for(repo, agents=[ta.spec(ta.GoodAgent)]))
    assert record.outcome is Outcome.BAD_INPUT and record.base_sha is None
    assert "NOMIC_BUDGET_USD='ten dollars' is not a number" in record.reason
    assert "fix:" in record.reason
