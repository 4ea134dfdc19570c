"""LLM agents through the real `anthropic` and `openai` SDK clients, against loopback
servers that speak the Messages and Chat Completions APIs with scripted answers.

Nothing is patched: the SDKs build, send, retry and parse real HTTP; the cycles run on
real git repositories with real test runs and the real gates.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path

import pytest

from nomic_dagster.agents import build_panel
from nomic_dagster.agents.llm.agent import LLMAgent
from nomic_dagster.agents.llm.anthropic import AnthropicAgent
from nomic_dagster.agents.llm.edits import EditRejected, SearchReplace, apply_edits
from nomic_dagster.agents.llm.openai import OpenAIAgent
from nomic_dagster.core.errors import AgentError, BadInput, BudgetExhausted, ImplementationFailed
from nomic_dagster.core.records import ConsensusRule, Design, Goal, Outcome, Phase, Proposal
from nomic_dagster.core.settings import state_dir
from nomic_dagster.cycle.finish import finish_cycle
from nomic_dagster.cycle.runtime import CycleRuntime
from nomic_dagster.cycle.steps import drive_cycle, run_cycle
from nomic_dagster.infra.pricing import DEFAULT_PRICES, Budget
from nomic_dagster.phases.debate import run_debate
from nomic_dagster_tests.support import llm_scripts as ls
from nomic_dagster_tests.support.fake_llm_servers import (
    FakeAnthropicServer,
    FakeOpenAIServer,
    Reply,
    anthropic_tool_message,
    empty_200,
    html_page,
    rate_limited,
    server_error,
    truncated_json,
)
from nomic_dagster_tests.support.repo_builders import (
    build_context,
    make_repo,
    run_git,
    settings_for,
    status,
    work_area,
)

# Distinctive fake keys: any trace of them in what a cycle writes is a leak.
ANTHROPIC_KEY = "sk-ant-api03-NOMICFAKEKEY-anthropic-7f3a9c1e5b2d4068"
OPENAI_KEY = "sk-proj-NOMICFAKEKEY-openai-0d1e2f3a4b5c6d7e8f9a"
KEY_MARKER = "NOMICFAKEKEY"


pytestmark = pytest.mark.usefixtures("llm_env")  # conftest: a clean LLM environment


@pytest.fixture
def llm_max_retries() -> int:
    return 2  # the SDK retries twice here: the 429 and HTTP 500 tests count on it


@pytest.fixture
def calc_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "target", ls.CALC_REPO)


def use_anthropic(monkeypatch: pytest.MonkeyPatch, server: FakeAnthropicServer) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)


def use_openai(
    monkeypatch: pytest.MonkeyPatch, server: FakeOpenAIServer, key: str | None = OPENAI_KEY
) -> None:
    if key:
        monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)


def goal() -> Goal:
    return Goal(text="Add small tested helpers to calc")


def own_proposal(agent: str = "claude") -> Proposal:
    return Proposal(
        id=f"{agent}:1",
        agent=agent,
        kind="add-function",
        title="Add triple()",
        description="add triple() with a test",
        files=["calc/ops.py", "tests/test_ops.py"],
        benefit=0.7,
        risk=0.1,
        estimated_lines=8,
    )


def triple_design(agent: str = "claude") -> Design:
    return Design(
        proposal_id=f"{agent}:1",
        agent=agent,
        kind="add-function",
        title="Add triple()",
        files=["calc/ops.py", "tests/test_ops.py"],
        steps=["add triple()", "test it"],
        test_plan="pytest",
        risk="low",
        rationale="small",
    )


def last_user_text(body: dict) -> str:
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else json.dumps(content)


def scan_for_keys(*texts: str, paths: tuple[Path, ...] = ()) -> list[str]:
    """Where the fake keys (or their distinctive marker) occur."""
    hits = [f"text #{i}" for i, t in enumerate(texts) if KEY_MARKER in t]
    for root in paths:
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if (
                path.is_file()
                and not path.is_symlink()
                and KEY_MARKER.encode() in path.read_bytes()
            ):
                hits.append(str(path))
    return hits


# ---------------------------------------------------------------- full cycles


@pytest.mark.slow
def test_claude_and_gpt_panel_lands_a_verified_commit_and_leaks_no_key(
    calc_repo: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # the SDKs' own debug logs too
    claude = ls.winning_steps("claude:1")
    gpt = ls.winning_steps(
        "claude:1",
        submit_proposals=ls.proposals(
            ls.proposal(kind="docs", title="Add docstrings", files=["calc/ops.py"], benefit=0.3)
        ),
        submit_critique=ls.critique(0.8),
    )
    with (
        FakeAnthropicServer(ls.anthropic_script(claude)) as anthropic_server,
        FakeOpenAIServer(ls.openai_script(gpt)) as openai_server,
    ):
        use_anthropic(monkeypatch, anthropic_server)
        use_openai(monkeypatch, openai_server)
        state = drive_cycle(settings_for(calc_repo, agents=["claude", "gpt"]))
        record = finish_cycle(state)

    assert record.outcome is Outcome.COMMITTED, record.reason
    assert record.winner == "claude:1" and record.winner_agent == "claude"
    assert record.proposals == 2
    assert sorted(record.files) == ["calc/ops.py", "tests/test_ops.py"]
    assert record.tests_passed is True
    ops = run_git(calc_repo, "show", f"{record.commit_sha}:calc/ops.py")
    assert "def triple(x):\n    return 3 * x\n" in ops
    assert "test_triple" in run_git(calc_repo, "show", f"{record.commit_sha}:tests/test_ops.py")
    assert run_git(calc_repo, "rev-parse", record.branch).strip() == record.commit_sha

    # Each model was asked every step of the protocol, in order, with our settings.
    assert anthropic_server.steps() == [
        "submit_proposals",
        "submit_vote",
        "submit_critique",
        "submit_vote",
        "submit_design",
        "submit_edits",
    ]
    assert openai_server.steps() == [
        "submit_proposals",
        "submit_vote",
        "submit_critique",
        "submit_vote",
    ]
    for req in anthropic_server.api_requests():
        assert req.body["model"] == "claude-sonnet-4-6"
        assert req.body["max_tokens"] == 4096
        assert req.headers.get("x-api-key") == ANTHROPIC_KEY or ANTHROPIC_KEY in req.headers.get(
            "authorization", ""
        )
    for req in openai_server.api_requests():
        assert req.body["model"] == "gpt-4.1"
        assert req.body["max_completion_tokens"] == 4096
        assert req.body["response_format"]["json_schema"]["strict"] is True

    # Every call was priced and carried by the cycle's state, tagged with its phase.
    calls = state.llm_calls
    assert len(calls) == len(anthropic_server.api_requests()) + len(openai_server.api_requests())
    assert all(c.ok and c.usage.usd > 0 for c in calls)
    assert [c.phase for c in calls if c.agent == "claude"] == [
        "debate",
        "debate",
        "debate",
        "debate",
        "design",
        "implement",
    ]
    assert record.cost_usd == pytest.approx(sum(c.usage.usd for c in calls))
    assert record.cost_usd > 0 and record.llm_calls == len(calls)
    assert sum(record.cost_by_phase.values()) == pytest.approx(record.cost_usd)
    assert set(record.cost_by_agent) == {"claude", "gpt"}

    # The keys went to the servers and nowhere else: not the state folder (history,
    # worktrees, scratch), not the repository's objects, not the record, not the logs.
    git_everything = subprocess.run(
        ["git", "log", "-p", "--all", "--format=%H%n%B"],
        cwd=calc_repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out, err = capfd.readouterr()
    leaks = scan_for_keys(
        git_everything,
        record.model_dump_json(),
        json.dumps([c.model_dump() for c in calls]),
        caplog.text,
        out,
        err,
        paths=(state_dir(), calc_repo),
    )
    assert leaks == []
    # the logs were captured, the SDKs' request dumps included
    assert "claude-sonnet-4-6" in caplog.text and "Request options" in caplog.text


@pytest.mark.slow
def test_mixed_panel_of_claude_and_an_offline_agent(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeAnthropicServer(ls.anthropic_script(ls.winning_steps("claude:1"))) as server:
        use_anthropic(monkeypatch, server)
        record = run_cycle(settings_for(calc_repo, agents=["claude", "lint-fixer"]))
    assert record.outcome is Outcome.COMMITTED, record.reason
    assert record.agents == ["claude", "lint-fixer"]
    assert record.winner == "claude:1"
    assert "submit_edits" in server.steps()


def test_missing_key_is_bad_input_before_any_phase_runs(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeAnthropicServer(ls.anthropic_script(ls.winning_steps())) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)  # but no ANTHROPIC_API_KEY
        record = run_cycle(settings_for(calc_repo, agents=["claude", "lint-fixer"]))
    assert record.outcome is Outcome.BAD_INPUT
    assert "ANTHROPIC_API_KEY" in record.reason
    assert server.requests == []
    assert record.base_sha is None  # no workspace was opened
    assert not (state_dir() / "worktrees" / record.cycle_id).exists()


@pytest.mark.parametrize(
    ("agent", "env", "variable"),
    [
        ("claude", {}, "ANTHROPIC_API_KEY"),
        ("gpt", {}, "OPENAI_API_KEY"),
        ("openai-compatible", {"NOMIC_OPENAI_MODEL": "llama3"}, "OPENAI_BASE_URL"),
        ("openai-compatible", {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}, "NOMIC_OPENAI_MODEL"),
        (
            "claude",
            {"ANTHROPIC_API_KEY": ANTHROPIC_KEY, "NOMIC_LLM_MAX_TOKENS": "lots"},
            "NOMIC_LLM_MAX_TOKENS",
        ),
        ("gpt", {"OPENAI_API_KEY": OPENAI_KEY, "NOMIC_BUDGET_USD": "-1"}, "NOMIC_BUDGET_USD"),
    ],
)
def test_panel_configuration_errors_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, agent: str, env: dict[str, str], variable: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(BadInput) as info:
        build_panel([agent])
    assert variable in str(info.value)
    assert KEY_MARKER not in str(info.value)


def test_unknown_model_says_where_prices_come_from_and_how_to_add_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("NOMIC_CLAUDE_MODEL", "claude-imaginary-9")
    with pytest.raises(BadInput) as info:
        build_panel(["claude"])
    text = str(info.value)
    assert "claude-imaginary-9" in text and "DEFAULT_PRICES" in text and "NOMIC_PRICES" in text
    monkeypatch.setenv(
        "NOMIC_PRICES", '{"claude-imaginary-9": {"input": 1, "output": 2, "cache_read": 0.1}}'
    )
    (agent,) = build_panel(["claude"])
    assert isinstance(agent, AnthropicAgent)
    assert (agent.price.input, agent.price.output, agent.price.cache_read) == (1, 2, 0.1)


# ---------------------------------------------------------------- resilience


def test_429_with_retry_after_is_retried_and_the_wait_honoured(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeAnthropicServer(ls.anthropic_script(ls.winning_steps())) as server:
        use_anthropic(monkeypatch, server)
        server.enqueue(rate_limited(retry_after=1.0))
        agent = AnthropicAgent.from_env()
        proposals = agent.propose(build_context(calc_repo), goal())
    first, second = server.api_requests()
    assert second.at - first.at >= 1.0  # the SDK waited as told
    assert second.headers.get("x-stainless-retry-count") == "1"
    assert [p.id for p in proposals] == ["claude:1"]
    assert len(agent.usage) == 1 and agent.usage[0].ok  # one logical call, retried by the SDK


def test_an_absurd_retry_after_is_capped(calc_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOMIC_LLM_MAX_RETRY_WAIT_S", "0.3")
    with FakeOpenAIServer(ls.openai_script(ls.winning_steps("gpt:1"))) as server:
        use_openai(monkeypatch, server)
        server.enqueue(rate_limited(retry_after=3600))
        started = time.monotonic()
        OpenAIAgent.from_env().propose(build_context(calc_repo), goal())
    first, second = server.api_requests()
    assert 0.3 <= second.at - first.at < 5
    assert time.monotonic() - started < 10


def test_a_timeout_is_retried_by_the_sdk(calc_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOMIC_LLM_TIMEOUT_S", "1")
    monkeypatch.setenv("NOMIC_LLM_MAX_RETRIES", "1")
    with FakeAnthropicServer(ls.anthropic_script(ls.winning_steps())) as server:
        use_anthropic(monkeypatch, server)
        slow = anthropic_tool_message("submit_proposals", ls.proposals())
        server.enqueue(Reply(body=slow, delay_s=1.6))
        proposals = AnthropicAgent.from_env().propose(build_context(calc_repo), goal())
    assert len(server.api_requests()) == 2 and [p.id for p in proposals] == ["claude:1"]


def test_server_errors_make_the_agent_drop_out_while_the_debate_goes_on(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOMIC_LLM_MAX_RETRIES", "1")
    broken = ls.Steps(submit_proposals=server_error(500))
    gpt = ls.winning_steps("gpt:1")
    with (
        FakeAnthropicServer(ls.anthropic_script(broken)) as anthropic_server,
        FakeOpenAIServer(ls.openai_script(gpt)) as openai_server,
    ):
        use_anthropic(monkeypatch, anthropic_server)
        use_openai(monkeypatch, openai_server)
        panel = build_panel(["claude", "gpt", "lint-fixer"])
        result = run_debate(build_context(calc_repo), goal(), panel, ConsensusRule.TWO_THIRDS)
    assert "claude" in result.agent_failures
    failure = result.agent_failures["claude"]
    assert "HTTP 500" in failure and "after the SDK's retries" in failure
    assert "Traceback" not in failure
    # one request plus one SDK retry, and then claude was never asked again
    assert len(anthropic_server.api_requests()) == 2
    assert [p.agent for p in result.proposals] == ["gpt"]
    assert {v.voter for v in result.votes} == {"gpt", "lint-fixer"}
    assert result.consensus.reached and result.consensus.winner_id == "gpt:1"
    claude = panel[0]
    assert isinstance(claude, LLMAgent)
    assert [(c.step, c.ok) for c in claude.usage] == [("propose", False)]
    assert claude.usage[0].usage.usd == 0  # an error is not billed


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (html_page(), "not a Messages API response"),
        (truncated_json(), "not valid JSON"),
        (empty_200(), "not valid JSON"),
        (html_page(502), "HTTP 502"),
        (Reply(body={"id": "msg_x", "type": "message", "content": []}), "no content"),
    ],
    ids=["html-200", "truncated-json", "empty-200", "html-502", "no-content"],
)
def test_garbage_from_the_anthropic_api_is_an_agent_error(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch, reply: Reply, expected: str
) -> None:
    monkeypatch.setenv("NOMIC_LLM_MAX_RETRIES", "0")
    with FakeAnthropicServer(lambda body, req: reply) as server:
        use_anthropic(monkeypatch, server)
        with pytest.raises(AgentError) as info:
            AnthropicAgent.from_env().propose(build_context(calc_repo), goal())
    assert expected in str(info.value)
    assert info.value.agent == "claude" and info.value.step == "propose"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (html_page(), "not a Chat Completions response"),
        (truncated_json(), "not valid JSON"),
        (empty_200(), "not valid JSON"),
        (Reply(body={"id": "x", "object": "chat.completion", "choices": []}), "no choices"),
    ],
    ids=["html-200", "truncated-json", "empty-200", "no-choices"],
)
def test_garbage_from_an_openai_compatible_server_is_an_agent_error(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch, reply: Reply, expected: str
) -> None:
    monkeypatch.setenv("NOMIC_LLM_MAX_RETRIES", "0")
    monkeypatch.setenv("NOMIC_OPENAI_MODEL", "qwen-local")
    with FakeOpenAIServer(lambda body, req: reply) as server:
        use_openai(monkeypatch, server, key=None)
        with pytest.raises(AgentError) as info:
            OpenAIAgent.from_env("local", compatible=True).propose(build_context(calc_repo), goal())
    assert expected in str(info.value)


def test_an_error_body_that_echoes_the_key_is_redacted(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    echo = Reply(
        status=401,
        body={"error": {"type": "authentication_error", "message": f"bad key {ANTHROPIC_KEY}"}},
    )
    with FakeAnthropicServer(lambda body, req: echo) as server:
        use_anthropic(monkeypatch, server)
        agent = AnthropicAgent.from_env()
        with pytest.raises(AgentError) as info:
            agent.propose(build_context(calc_repo), goal())
    text = str(info.value)
    assert "HTTP 401" in text and "check ANTHROPIC_API_KEY" in text and "[redacted]" in text
    assert KEY_MARKER not in text + repr(agent) + repr(agent.backend)
    assert KEY_MARKER not in json.dumps([c.model_dump() for c in agent.usage])


# ---------------------------------------------------------------- structured output


def test_malformed_output_gets_one_repair_prompt(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = ls.proposals(ls.proposal(benefit=7.0))
    steps = ls.Steps(submit_proposals=[bad, ls.proposals()])
    with FakeAnthropicServer(ls.anthropic_script(steps)) as server:
        use_anthropic(monkeypatch, server)
        agent = AnthropicAgent.from_env()
        proposals = agent.propose(build_context(calc_repo), goal())
    assert [p.benefit for p in proposals] == [0.7]
    _, repair = server.api_requests()
    assert len(repair.body["messages"]) == 3  # task, the bad answer, the repair prompt
    assert repair.body["messages"][1]["role"] == "assistant"
    assert '"benefit": 7.0' in repair.body["messages"][1]["content"]
    assert "proposals.0.benefit" in last_user_text(repair.body)
    assert "less than or equal to 1" in last_user_text(repair.body)
    assert [c.step for c in agent.usage] == ["propose", "propose:repair"]
    assert [c.ok for c in agent.usage] == [False, True]
    assert agent.usage[0].usage.usd > 0  # a malformed answer is still billed


def test_malformed_output_twice_is_the_agents_failure(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = ls.Steps(submit_critique={"score": "high", "stance": "love it"})
    with FakeAnthropicServer(ls.anthropic_script(steps)) as server:
        use_anthropic(monkeypatch, server)
        with pytest.raises(AgentError) as info:
            AnthropicAgent.from_env().critique(
                own_proposal("gpt"), build_context(calc_repo), goal()
            )
    assert len(server.api_requests()) == 2
    assert "malformed output after one repair prompt" in str(info.value)
    assert info.value.step == "critique"


def test_a_vote_for_an_unknown_proposal_is_repaired(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = ls.Steps(submit_vote=[ls.vote("made-up:7"), ls.vote("claude:1")])
    with FakeAnthropicServer(ls.anthropic_script(steps)) as server:
        use_anthropic(monkeypatch, server)
        vote = AnthropicAgent.from_env().vote(
            [own_proposal()], [], build_context(calc_repo), goal()
        )
    assert vote.proposal_id == "claude:1" and vote.round == 0
    assert "'made-up:7' is not one of claude:1" in last_user_text(server.api_requests()[1].body)


def test_text_json_from_a_local_model_is_parsed_and_the_prompt_fits_its_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A repository whose context is far larger than a 2K-token window.
    files = dict(ls.CALC_REPO)
    for i in range(120):
        files[f"calc/mod_{i:03}.py"] = "".join(
            f"def function_number_{j}_in_module_{i}(value: int) -> int:\n    return value + {j}\n\n\n"
            for j in range(6)
        )
    repo = make_repo(tmp_path / "big", files)
    monkeypatch.setenv("NOMIC_OPENAI_MODEL", "qwen2.5-coder:7b")
    monkeypatch.setenv("NOMIC_OPENAI_CONTEXT_TOKENS", "2048")
    steps = ls.winning_steps("openai-compatible:1")
    with FakeOpenAIServer(ls.openai_script(steps, as_text=True)) as server:
        use_openai(monkeypatch, server, key=None)  # a local server needs no key
        (agent,) = build_panel(["openai-compatible"])
        assert isinstance(agent, OpenAIAgent)
        proposals = agent.propose(build_context(repo), goal())
    (request,) = server.api_requests()
    assert [p.id for p in proposals] == ["openai-compatible:1"]
    assert request.headers["authorization"] == "Bearer not-needed"
    assert request.body["max_tokens"] == 1024  # half the window
    prompt_chars = sum(len(m["content"]) for m in request.body["messages"])
    assert prompt_chars <= (2048 - 1024) * 4
    assert "cut to fit the context budget" in request.body["messages"][0]["content"]
    assert agent.usage[0].usage.usd == 0  # an unpriced model on this machine is free


def test_gpt_and_a_local_model_on_one_panel_keep_their_own_servers_and_keys(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOMIC_OPENAI_MODEL", "qwen-local")
    with (
        FakeOpenAIServer(ls.openai_script(ls.winning_steps("gpt:1"))) as gpt_server,
        FakeOpenAIServer(ls.openai_script(ls.winning_steps("gpt:1"))) as local_server,
    ):
        use_openai(monkeypatch, gpt_server)
        monkeypatch.setenv("NOMIC_OPENAI_BASE_URL", local_server.base_url)
        gpt, local = build_panel(["gpt", "openai-compatible"])
        context = build_context(calc_repo)
        gpt.propose(context, goal())
        local.propose(context, goal())
    (to_gpt,) = gpt_server.api_requests()
    (to_local,) = local_server.api_requests()
    assert to_gpt.body["model"] == "gpt-4.1" and to_local.body["model"] == "qwen-local"
    assert to_gpt.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert to_local.headers["authorization"] == "Bearer not-needed"  # never OpenAI's key


def test_a_server_that_rejects_response_format_is_asked_in_plain_text(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = ls.winning_steps("openai-compatible:1")
    text_script = ls.openai_script(steps, as_text=True)

    def picky(body: dict, request: object) -> object:
        if "response_format" in body:
            return Reply(status=400, body={"error": {"message": "unknown field response_format"}})
        return text_script(body, request)  # type: ignore[arg-type]

    monkeypatch.setenv("NOMIC_OPENAI_MODEL", "llama3.1")
    with FakeOpenAIServer(picky) as server:
        use_openai(monkeypatch, server, key=None)
        agent = OpenAIAgent.from_env("openai-compatible", compatible=True)
        context = build_context(calc_repo)
        agent.propose(context, goal())
        agent.critique(own_proposal("other"), context, goal())
    with_format = ["response_format" in r.body for r in server.api_requests()]
    assert with_format == [True, False, False]  # rejected once, then never sent again


# ---------------------------------------------------------------- edits


def bad_edit_cases(repo: Path) -> dict[str, dict]:
    outside = repo.parent / "outside"
    outside.mkdir(exist_ok=True)
    (repo / "escape").symlink_to(outside, target_is_directory=True)
    return {
        "no-match": {"path": "calc/ops.py", "search": "def nope():\n", "replace": "x = 1\n"},
        "two-matches": {"path": "calc/ops.py", "search": "    return ", "replace": "    return  "},
        "dotdot": {"path": "../outside/evil.py", "search": "", "replace": "x = 1\n"},
        "absolute": {"path": str(outside / "evil.py"), "search": "", "replace": "x = 1\n"},
        "symlink": {"path": "escape/evil.py", "search": "", "replace": "x = 1\n"},
        "git": {"path": ".git/hooks/pre-commit", "search": "", "replace": "#!/bin/sh\n"},
        "protected": {"path": ".github/workflows/ci.yml", "search": "", "replace": "on: push\n"},
    }


@pytest.mark.parametrize(
    "case", ["no-match", "two-matches", "dotdot", "absolute", "symlink", "git", "protected"]
)
def test_rejected_edits_are_sent_back_once_with_the_exact_error(
    calc_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    bad = bad_edit_cases(calc_repo)[case]
    # the exact rejection, as the edits module words it (and nothing is written)
    with pytest.raises(EditRejected) as expected:
        apply_edits(
            calc_repo, [SearchReplace(**bad)], protected=settings_for(calc_repo).protected_paths
        )
    steps = ls.Steps(submit_edits=ls.edits([bad]))
    with FakeAnthropicServer(ls.anthropic_script(steps)) as server:
        use_anthropic(monkeypatch, server)
        settings = settings_for(calc_repo)
        area = work_area(calc_repo, tmp_path / "scratch", settings, build_context(calc_repo))
        with pytest.raises(ImplementationFailed) as info:
            AnthropicAgent.from_env().implement(triple_design(), area)
    _, repair = server.api_requests()
    assert str(expected.value) in last_user_text(repair.body)
    assert "No file was changed" in last_user_text(repair.body)
    assert str(expected.value) in str(info.value)
    assert status(calc_repo) == ["?? escape"]  # only the test's own symlink: nothing written
    assert list((calc_repo.parent / "outside").iterdir()) == []


def test_edits_that_apply_after_the_repair_round_land(
    calc_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = [{**ls.TRIPLE_EDITS[0], "search": "def double(x):\n  return 2 * x\n"}]
    steps = ls.Steps(submit_edits=[ls.edits(wrong), ls.edits()])
    with FakeAnthropicServer(ls.anthropic_script(steps)) as server:
        use_anthropic(monkeypatch, server)
        settings = settings_for(calc_repo)
        area = work_area(calc_repo, tmp_path / "scratch", settings, build_context(calc_repo))
        summary = AnthropicAgent.from_env().implement(triple_design(), area)
    assert "would match if whitespace were ignored" in last_user_text(server.api_requests()[1].body)
    assert "modified calc/ops.py, tests/test_ops.py" in summary
    assert "def triple(x)" in (calc_repo / "calc" / "ops.py").read_text()


def test_a_unified_diff_is_accepted(
    calc_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    diff = (
        "```diff\n--- a/calc/ops.py\n+++ b/calc/ops.py\n@@ -4,2 +4,6 @@\n"
        " def double(x):\n     return 2 * x\n+\n+\n+def triple(x):\n+    return 3 * x\n```\n"
    )
    steps = ls.Steps(submit_edits=ls.edits([], diff=diff))
    with FakeOpenAIServer(ls.openai_script(steps)) as server:
        use_openai(monkeypatch, server)
        settings = settings_for(calc_repo)
        area = work_area(calc_repo, tmp_path / "scratch", settings, build_context(calc_repo))
        OpenAIAgent.from_env().implement(triple_design("gpt"), area)
    assert (calc_repo / "calc" / "ops.py").read_text() == ls.OPS + (
        "\n\ndef triple(x):\n    return 3 * x\n"
    )


# ---------------------------------------------------------------- money


def test_prompt_caching_marks_the_shared_context_and_cache_reads_cost_less(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeAnthropicServer(ls.anthropic_script(ls.winning_steps())) as server:
        use_anthropic(monkeypatch, server)
        agent = AnthropicAgent.from_env()
        context = build_context(calc_repo)
        [mine] = agent.propose(context, goal())
        agent.critique(own_proposal("gpt"), context, goal())
        agent.vote([mine, own_proposal("gpt")], [], context, goal())
    requests = server.api_requests()
    for req in requests:
        role, shared = req.body["system"]
        assert "cache_control" not in role
        assert shared["cache_control"] == {"type": "ephemeral"}
        assert "# Goal\nAdd small tested helpers to calc" in shared["text"]
    # the cached prefix (tools + system) is byte-identical across steps
    assert len({json.dumps([r.body["tools"], r.body["system"]]) for r in requests}) == 1
    assert [r.body["tool_choice"]["name"] for r in requests] == [
        "submit_proposals",
        "submit_critique",
        "submit_vote",
    ]
    first, *later = agent.usage
    assert first.usage.cache_write_tokens > 0 and first.usage.cache_read_tokens == 0
    assert all(c.usage.cache_read_tokens == first.usage.cache_write_tokens for c in later)
    price = DEFAULT_PRICES["claude-sonnet-4-6"]
    assert price.cache_read < price.input < price.cache_write
    for call in later:
        uncached = call.usage.model_copy(
            update={
                "input_tokens": call.usage.input_tokens + call.usage.cache_read_tokens,
                "cache_read_tokens": 0,
            }
        )
        assert call.usage.usd == price.cost(call.usage) < price.cost(uncached)


def test_a_tiny_budget_stops_the_second_call_before_it_is_sent(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model spends its whole output allowance, so a call costs close to its worst case.
    monkeypatch.setenv("NOMIC_LLM_MAX_TOKENS", "2000")

    def expensive(body: dict, request: object) -> dict:
        usage = {"input_tokens": 900, "output_tokens": 2000}
        return anthropic_tool_message(
            body["tool_choice"]["name"],
            ls.proposals() if body["tool_choice"]["name"] == "submit_proposals" else ls.critique(),
            usage=usage,
        )

    with FakeAnthropicServer(expensive) as server:
        use_anthropic(monkeypatch, server)
        probe = AnthropicAgent.from_env()
        context = build_context(calc_repo)
        probe.propose(context, goal())
        worst = probe.usage[0].worst_case_usd
        budget = Budget(limit_usd=worst * 1.5)
        agent = AnthropicAgent.from_env(budget=budget)
        agent.propose(context, goal())
        before = len(server.api_requests())
        with pytest.raises(BudgetExhausted) as info:
            agent.critique(own_proposal("gpt"), context, goal())
    assert len(server.api_requests()) == before  # the second call was never sent
    assert "the call was not made" in str(info.value)
    assert [c.step for c in agent.usage] == ["propose"]
    assert budget.refused == 1
    assert budget.spent_usd <= budget.limit_usd + max(c.worst_case_usd for c in agent.usage)
    assert budget.spent_usd <= budget.limit_usd


def test_the_budget_runs_out_in_the_middle_of_a_debate_with_bounded_overshoot(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shared by the whole panel; the servers report far more input than estimated, so the
    spend crosses the limit once — by at most one call — and nothing more is sent."""
    monkeypatch.setenv("NOMIC_LLM_MAX_TOKENS", "500")

    def greedy(answer: object) -> object:
        def script(body: dict, request: object) -> object:
            reply = answer(body, request)  # type: ignore[operator]
            reply["usage"] = (
                {"input_tokens": 20_000, "output_tokens": 500}
                if reply.get("type") == "message"
                else {"prompt_tokens": 20_000, "completion_tokens": 500, "total_tokens": 20_500}
            )
            return reply

        return script

    with (
        FakeAnthropicServer(greedy(ls.anthropic_script(ls.winning_steps()))) as anthropic_server,
        FakeOpenAIServer(greedy(ls.openai_script(ls.winning_steps()))) as openai_server,
    ):
        use_anthropic(monkeypatch, anthropic_server)
        use_openai(monkeypatch, openai_server)
        budget = Budget(limit_usd=0.15)
        panel = build_panel(["claude", "gpt"], budget=budget)
        # a refused call ends the debate (and the cycle: budget_exhausted), not one agent
        with pytest.raises(BudgetExhausted):
            run_debate(build_context(calc_repo), goal(), panel, ConsensusRule.TWO_THIRDS)
    sent = len(anthropic_server.api_requests()) + len(openai_server.api_requests())
    assert len(budget.calls) == sent  # every request was reserved, priced and recorded
    assert budget.refused == 1
    largest = max(c.usage.usd for c in budget.calls)
    assert budget.spent_usd > budget.limit_usd  # the estimate was beaten once ...
    assert budget.spent_usd - budget.limit_usd <= largest  # ... by at most one call


@pytest.mark.slow
def test_the_cycle_budget_spans_phases(calc_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The panel is built anew in every phase; without an explicit budget its agents share
    one per cycle, so a limit that the debate nearly uses up stops the design call."""
    monkeypatch.setenv("NOMIC_LLM_MAX_TOKENS", "1000")
    script = ls.anthropic_script(ls.winning_steps())

    def full_output(body: dict, request: object) -> object:
        reply = script(body, request)  # type: ignore[arg-type]
        reply["usage"] = {"input_tokens": 900, "output_tokens": 1000}
        return reply

    with FakeAnthropicServer(full_output) as server:
        use_anthropic(monkeypatch, server)
        probe = drive_cycle(settings_for(calc_repo, agents=["claude"]))
        assert finish_cycle(probe).outcome is Outcome.COMMITTED, probe.reason
        calls = probe.llm_calls
        assert [c.step for c in calls] == ["propose", "vote", "vote", "design", "implement"]
        # enough for the debate's three calls, not for the design's worst case after them
        limit = sum(c.usage.usd for c in calls[:3]) + 0.5 * calls[3].worst_case_usd
        monkeypatch.setenv("NOMIC_BUDGET_USD", f"{limit:.8f}")
        before = len(server.api_requests())
        settings = settings_for(calc_repo, agents=["claude"])
        runtime = CycleRuntime.for_settings(settings)
        state = drive_cycle(settings, runtime=runtime)
        record = finish_cycle(state)
    assert [r.step for r in server.api_requests()[before:]] == [
        "submit_proposals",
        "submit_vote",
        "submit_vote",
    ]
    assert record.outcome is Outcome.BUDGET_EXHAUSTED
    assert "budget exhausted" in record.reason and record.commit_sha is None
    # the design phase's budget started from the debate's spend and refused its one call
    spent = sum(c.usage.usd for c in state.llm_calls)
    assert spent <= limit and state.ended_in is Phase.DESIGN
    # the record carries the spend, and a refused call is not the agent's failure
    assert record.llm_calls == 3 and record.cost_usd == pytest.approx(spent)
    assert record.tokens == sum(c.usage.total_tokens for c in state.llm_calls)
    assert record.cost_by_phase == {"debate": pytest.approx(record.cost_usd)}
    assert runtime.breakers.get_or_create("claude").state == "closed"
