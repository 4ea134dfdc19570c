"""CycleRuntime: what a cycle runs with is passed explicitly, never shared through the process.

Two cycles in one process (threads), each with its own runtime, must not see each other's
backends, budgets or circuit breakers.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydantic import SecretStr

from nomic_dagster.agents.llm.anthropic import AnthropicSettings
from nomic_dagster.core.records import CycleRecord, Outcome
from nomic_dagster.cycle.runtime import CycleRuntime
from nomic_dagster.cycle.steps import run_cycle
from nomic_dagster.infra.breakers import BreakerRegistry
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support import llm_scripts as ls
from nomic_dagster_tests.support.fake_llm_servers import FakeAnthropicServer
from nomic_dagster_tests.support.llm_env import clean_llm_env
from nomic_dagster_tests.support.repo_builders import make_repo, settings_for


@pytest.fixture(autouse=True)
def _no_llm_env(monkeypatch: pytest.MonkeyPatch):
    yield from clean_llm_env(monkeypatch)


def _in_threads(*jobs) -> list[CycleRecord]:
    """Run the jobs at the same time, each in a thread of its own; their records in order."""
    results: list[CycleRecord | BaseException | None] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # reported below, with the thread's job
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


def test_two_cycles_in_threads_keep_their_own_backends(tmp_path: Path) -> None:
    """Each runtime names another Claude model behind another server: every request a
    cycle made went to its own server, for its own model, and no environment variable was
    involved (a process-wide backend registry would mix them up)."""
    repos = [make_repo(tmp_path / f"target{i}", ls.CALC_REPO) for i in (1, 2)]
    models = ["claude-sonnet-4-6", "claude-haiku-4-5"]
    script = ls.anthropic_script(ls.winning_steps("claude:1"))
    with FakeAnthropicServer(script) as first, FakeAnthropicServer(script) as second:
        servers = [first, second]
        runtimes = []
        for repo, server, model in zip(repos, servers, models, strict=True):
            claude = AnthropicSettings(
                api_key=SecretStr(f"sk-ant-{model}"), base_url=server.base_url, model=model
            )
            settings = settings_for(repo, agents=["claude"])
            runtimes.append(CycleRuntime.for_settings(settings, backends={"claude": claude}))
        records = _in_threads(
            *(
                lambda repo=repo, runtime=runtime: run_cycle(
                    settings_for(repo, agents=["claude"]), runtime=runtime
                )
                for repo, runtime in zip(repos, runtimes, strict=True)
            )
        )
        seen = [[r.body["model"] for r in s.api_requests()] for s in servers]
        keys = [
            {
                r.headers.get("x-api-key") or r.headers.get("authorization", "")
                for r in s.api_requests()
            }
            for s in servers
        ]
    for record, repo in zip(records, repos, strict=True):
        assert record.outcome is Outcome.COMMITTED, record.reason
        assert Path(record.repo) == repo
    for requests, model, key in zip(seen, models, keys, strict=True):
        assert requests and set(requests) == {model}
        assert len(key) == 1 and f"sk-ant-{model}" in key.pop()  # its own key, only


def test_two_cycles_in_threads_keep_their_own_breakers_and_budgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime's breakers count only its own cycles' failures; a paying agent draws only
    on its own cycle's budget (each cycle's record holds exactly its own spend)."""
    first_repo = make_repo(tmp_path / "one", ta.GATE_REPO)
    second_repo = make_repo(tmp_path / "two", ta.GATE_REPO)
    failing = settings_for(first_repo, agents=[ta.spec(ta.GoodAgent), ta.spec(ta.ProposeRaiser)])
    paying = settings_for(second_repo, agents=[ta.spec(ta.SpendingAgent)])
    one, two = CycleRuntime.for_settings(failing), CycleRuntime.for_settings(paying)

    records = _in_threads(
        lambda: [run_cycle(failing, runtime=one) for _ in range(3)],
        lambda: [run_cycle(paying, runtime=two) for _ in range(3)],
    )
    failed_runs, paid_runs = records  # type: ignore[misc]
    assert [r.outcome for r in failed_runs] == [Outcome.COMMITTED] * 3
    raiser = one.breakers.get("propose-raiser")
    assert raiser is not None and raiser.is_open  # three failures, all seen by its runtime
    assert two.breakers.get("propose-raiser") is None  # never seen by the other one
    assert [r.cost_usd for r in paid_runs] == [pytest.approx(ta.SpendingAgent.USD)] * 3
    assert all(r.cost_usd == 0 for r in failed_runs)


def test_a_runtime_pins_its_state_folder_and_carries_breakers_between_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOMIC_STATE_DIR", str(tmp_path / "first"))
    settings = settings_for(tmp_path)
    runtime = CycleRuntime.for_settings(settings)
    monkeypatch.setenv("NOMIC_STATE_DIR", str(tmp_path / "second"))
    assert runtime.state_dir == tmp_path / "first"  # pinned when the driver started

    with runtime.persisted_breakers() as breakers:
        for _ in range(3):
            breakers.get_or_create("flaky").record_failure(RuntimeError("down"), None)
    later = CycleRuntime(state_dir=tmp_path / "first", breakers=BreakerRegistry())
    with later.persisted_breakers() as loaded:
        restored = loaded.get("flaky")
        assert restored is not None and restored.is_open
    assert (tmp_path / "first" / "breakers.json").is_file()
