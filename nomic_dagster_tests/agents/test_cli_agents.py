"""CLI coding agents (`claude -p`, `codex exec`) against fake executables.

The fakes are small Python scripts written by each test and put first on PATH; the agent
runs them as real subprocesses (process group, timeout, environment) in real git
repositories, and a full cycle runs the real gates on what the fake wrote.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nomic_dagster.agents import build_agent, build_panel
from nomic_dagster.agents.base import WorkArea
from nomic_dagster.agents.cli_agent import ClaudeCodeAgent, CodexAgent
from nomic_dagster.core.errors import BadInput, BudgetExhausted, ImplementationFailed
from nomic_dagster.core.records import Design, Goal, Outcome
from nomic_dagster.cycle.steps import run_cycle
from nomic_dagster.infra.pricing import Budget
from nomic_dagster_tests.support.agents_for_tests import GATE_REPO, ScriptedAgent
from nomic_dagster_tests.support.repo_builders import (
    build_context,
    make_repo,
    run_git,
    settings_for,
    status,
    work_area,
)

ANTHROPIC_KEY = "sk-ant-api03-NOMICFAKEKEY-cli-claude-1234567890"
OPENAI_KEY = "sk-proj-NOMICFAKEKEY-cli-codex-0987654321"
OTHER_SECRET = "NOMICFAKEKEY-some-other-service-secret"

# The fake appends triple() to calc/ops.py in its cwd (the worktree), as an agent would.
EDIT = """
path = os.path.join(os.getcwd(), "calc", "ops.py")
with open(path, "a") as fh:
    fh.write("\\n\\ndef triple(x):\\n    return 3 * x\\n")
"""

CLAUDE_OK = (
    EDIT
    + """
env_out = os.environ.get("FAKE_ENV_OUT")
if env_out:
    with open(env_out, "w") as fh:
        json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, fh)
print(json.dumps({
    "type": "result", "subtype": "success", "is_error": False, "num_turns": 3,
    "session_id": "s-1", "result": "Working...\\nAdded triple() to calc/ops.py",
    "total_cost_usd": 0.0421,
    "usage": {"input_tokens": 900, "output_tokens": 120, "cache_read_input_tokens": 50},
}))
"""
)

CLAUDE_ERROR = """
print(json.dumps({"type": "result", "is_error": True, "result": "Credit balance is too low",
                  "total_cost_usd": 0.0}))
sys.exit(1)
"""

HANG = """
child = subprocess.Popen(["sleep", "600"])
with open(os.environ["FAKE_PIDS"], "w") as fh:
    fh.write(f"{os.getpid()} {child.pid}\\n")
time.sleep(600)
"""

CODEX_OK = (
    EDIT
    + """
assert sys.argv[1:4] == ["exec", "--json", "--sandbox"], sys.argv
events = [
    {"type": "thread.started", "thread_id": "t-1"},
    {"type": "turn.started"},
    {"type": "item.completed", "item": {"id": "i0", "type": "reasoning", "text": "thinking"}},
    {"type": "item.completed", "item": {"id": "i1", "type": "agent_message",
                                         "text": "Added triple()"}},
    {"type": "turn.completed", "usage": {"input_tokens": 1000, "cached_input_tokens": 400,
                                          "output_tokens": 80}},
]
for ev in events:
    print(json.dumps(ev), flush=True)
"""
)


def fake_exe(bindir: Path, name: str, body: str) -> Path:
    bindir.mkdir(parents=True, exist_ok=True)
    path = bindir / name
    header = f"#!{sys.executable}\nimport json, os, subprocess, sys, time\n"
    path.write_text(header + textwrap.dedent(body))
    path.chmod(0o755)
    return path


@pytest.fixture(autouse=True)
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty fake bin folder first on PATH, no overrides, fresh cycle budgets."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("NOMIC_CLAUDE_CODE_BIN", "NOMIC_CODEX_BIN", "NOMIC_CLI_AGENT_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "OPENAI_API_KEY", "CODEX_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("NOMIC_BUDGET_USD", raising=False)
    yield bindir


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "target", GATE_REPO)


def area_for(repo: Path, tmp_path: Path) -> WorkArea:
    settings = settings_for(repo)
    return work_area(repo, tmp_path / "scratch", settings, build_context(repo))


def triple_design(agent: str = "claude-code") -> Design:
    return Design(
        proposal_id="scripted:scripted",
        agent=agent,
        kind="scripted",
        title="Add triple()",
        files=["calc/ops.py"],
        steps=["add def triple(x): return 3 * x to calc/ops.py"],
        test_plan="run the tests",
        risk="low",
        rationale="symmetry with double()",
    )


def test_claude_edits_the_worktree_and_its_cost_is_recorded(
    cli_env: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_exe(cli_env, "claude", CLAUDE_OK)
    env_out = tmp_path / "env.json"
    monkeypatch.setenv("FAKE_ENV_OUT", str(env_out))
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("SOME_SERVICE_SECRET", OTHER_SECRET)
    agent = build_agent("claude-code")
    assert isinstance(agent, ClaudeCodeAgent)

    summary = agent.implement(triple_design(), area_for(repo, tmp_path))

    assert summary == "Added triple() to calc/ops.py"
    assert "def triple(x):" in (repo / "calc" / "ops.py").read_text()
    assert status(repo) == [" M calc/ops.py"]  # nothing committed, nothing else written
    assert run_git(repo, "log", "--oneline").count("\n") == 1
    [call] = agent.usage
    assert call.ok and call.step == "implement" and call.provider == "claude-code"
    assert call.usage.usd == pytest.approx(0.0421)
    assert (call.usage.input_tokens, call.usage.output_tokens) == (900, 120)
    assert call.usage.cache_read_tokens == 50

    seen = json.loads(env_out.read_text())
    argv = seen["argv"]
    assert argv[0] == "-p" and argv[2:] == [
        "--output-format",
        "json",
        "--permission-mode",
        "acceptEdits",
    ]
    prompt = argv[1]
    for part in ("Add triple()", "calc/ops.py", "Do not commit", ".nomic/", "symmetry"):
        assert part in prompt, part
    # its own key is passed; other secrets (the OpenAI key too) are withheld
    assert seen["env"]["ANTHROPIC_API_KEY"] == ANTHROPIC_KEY
    assert "OPENAI_API_KEY" not in seen["env"]
    assert "SOME_SERVICE_SECRET" not in seen["env"]
    assert OTHER_SECRET not in json.dumps(seen["env"])


def test_claude_reporting_is_error_is_implementation_failed(
    cli_env: Path, repo: Path, tmp_path: Path
) -> None:
    fake_exe(cli_env, "claude", CLAUDE_ERROR)
    agent = ClaudeCodeAgent()
    with pytest.raises(ImplementationFailed, match="Credit balance is too low"):
        agent.implement(triple_design(), area_for(repo, tmp_path))
    [call] = agent.usage
    assert not call.ok and "Credit balance" in call.error


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a killed orphan can linger as a zombie until init reaps it: that is dead
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_hung_cli_is_killed_with_its_children_at_the_timeout(
    cli_env: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_exe(cli_env, "claude", HANG)
    pids_file = tmp_path / "pids"
    monkeypatch.setenv("FAKE_PIDS", str(pids_file))
    monkeypatch.setenv("NOMIC_CLI_AGENT_TIMEOUT_S", "2")
    agent = ClaudeCodeAgent()
    assert agent.timeout_s == 2

    start = time.monotonic()
    with pytest.raises(ImplementationFailed, match="timed out after 2s"):
        agent.implement(triple_design(), area_for(repo, tmp_path))
    assert time.monotonic() - start < 10

    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids), pids


def test_codex_jsonl_events_are_parsed_and_its_key_passed(
    cli_env: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_out = tmp_path / "codex-env.json"
    fake_exe(
        cli_env,
        "codex",
        CODEX_OK
        + f"\njson.dump(dict(os.environ), open({str(env_out)!r}, 'w'))\n"
        + "assert sys.argv[5:7] == ['-C', os.getcwd()], sys.argv\n",
    )
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    agent = build_agent("codex")
    assert isinstance(agent, CodexAgent)

    summary = agent.implement(triple_design("codex"), area_for(repo, tmp_path))

    assert summary == "Added triple()"
    assert "def triple(x):" in (repo / "calc" / "ops.py").read_text()
    [call] = agent.usage
    assert call.ok and call.provider == "codex"
    assert (call.usage.input_tokens, call.usage.cache_read_tokens) == (600, 400)
    assert call.usage.output_tokens == 80
    env = json.loads(env_out.read_text())
    assert env["OPENAI_API_KEY"] == OPENAI_KEY and "ANTHROPIC_API_KEY" not in env


def test_codex_turn_failed_is_implementation_failed(
    cli_env: Path, repo: Path, tmp_path: Path
) -> None:
    fake_exe(
        cli_env,
        "codex",
        'print(json.dumps({"type": "turn.failed", "error": {"message": "sandbox denied"}}))\n',
    )
    with pytest.raises(ImplementationFailed, match="sandbox denied"):
        CodexAgent().implement(triple_design("codex"), area_for(repo, tmp_path))


def test_a_missing_executable_is_bad_input_when_the_panel_is_built(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(cli_env))  # nothing else: no real claude or codex either
    with pytest.raises(BadInput) as info:
        build_panel(["lint-fixer", "claude-code"])
    assert "'claude'" in str(info.value) and "NOMIC_CLAUDE_CODE_BIN" in info.value.fix
    with pytest.raises(BadInput, match="NOMIC_CODEX_BIN"):
        build_agent("codex")
    monkeypatch.setenv("NOMIC_CODEX_BIN", str(tmp_path / "nowhere" / "codex"))
    with pytest.raises(BadInput, match="nowhere"):
        build_agent("codex")
    # the override is used when it exists
    other = fake_exe(tmp_path / "elsewhere", "my-codex", CODEX_OK)
    monkeypatch.setenv("NOMIC_CODEX_BIN", str(other))
    assert CodexAgent().binary == str(other)


def test_in_a_debate_it_proposes_nothing_and_judges_by_size(cli_env: Path, repo: Path) -> None:
    fake_exe(cli_env, "claude", CLAUDE_OK)
    agent = ClaudeCodeAgent()
    context = build_context(repo)
    goal = Goal(text="add a helper")
    assert agent.propose(context, goal) == []
    [proposal] = ScriptedAgent().propose(context, goal)
    critique = agent.critique(proposal, context, goal)
    assert critique.critic == "claude-code" and critique.criterion == "size"
    vote = agent.vote([proposal], [critique], context, goal)
    assert vote.proposal_id == proposal.id and vote.voter == "claude-code"


class ClaudeDelegator(ScriptedAgent):
    """Proposes and designs the scripted change; hands the implementation to `claude -p`."""

    name = "delegator"
    budget: Budget | None = None  # the phase's (the registry gives it): what claude may spend

    def implement(self, design: Design, area: WorkArea) -> str:
        return ClaudeCodeAgent(budget=self.budget).implement(design, area)


@pytest.mark.slow
def test_a_cycle_with_claude_code_as_implementer_lands_a_verified_commit(
    cli_env: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_exe(cli_env, "claude", CLAUDE_OK)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    record = run_cycle(settings_for(repo, agents=[f"{__name__}:ClaudeDelegator", "claude-code"]))
    assert record.outcome is Outcome.COMMITTED, record.reason
    assert record.winner_agent == "delegator"
    assert record.tests_passed is True
    assert record.files == ["calc/ops.py"]
    ops = run_git(repo, "show", f"{record.commit_sha}:calc/ops.py")
    assert "def triple(x):\n    return 3 * x\n" in ops
    assert record.cost_usd == pytest.approx(0.0421)


def test_claude_output_shapes() -> None:
    listed = json.dumps([{"type": "system"}, {"type": "result", "result": "ok", "is_error": False}])
    assert ClaudeCodeAgent.parse(listed).text == "ok"
    garbage = ClaudeCodeAgent.parse("Segmentation fault\n")
    assert garbage.is_error and "Segmentation fault" in garbage.text


def test_claude_gets_what_is_left_of_the_budget_as_its_spend_cap(
    cli_env: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_exe(cli_env, "claude", CLAUDE_OK)
    env_out = tmp_path / "env.json"
    monkeypatch.setenv("FAKE_ENV_OUT", str(env_out))
    budget = Budget(0.5)
    budget.settle(budget.reserve(0.1, "an earlier call"), 0.1)
    agent = build_agent("claude-code", budget=budget)

    agent.implement(triple_design(), area_for(repo, tmp_path))

    argv = json.loads(env_out.read_text())["argv"]
    assert argv[-2:] == ["--max-budget-usd", "0.4000"]  # the 0.5 limit less the 0.1 spent
    [call] = agent.usage
    assert call.worst_case_usd == pytest.approx(0.4)  # reserved before the run...
    assert budget.spent_usd == pytest.approx(0.1421)  # ...settled with the reported cost
    assert budget.remaining_usd == pytest.approx(0.5 - 0.1421)

    # a spent budget refuses the run before the CLI starts
    env_out.unlink()
    with pytest.raises(BudgetExhausted):
        ClaudeCodeAgent(budget=Budget(0.0)).implement(triple_design(), area_for(repo, tmp_path))
    assert not env_out.exists()


def test_codex_has_no_spend_cap_flag_and_a_spent_budget_refuses_it(
    cli_env: Path, repo: Path, tmp_path: Path
) -> None:
    argv_out = tmp_path / "argv.json"
    fake_exe(cli_env, "codex", CODEX_OK + f"\njson.dump(sys.argv, open({str(argv_out)!r}, 'w'))\n")
    budget = Budget(0.5)
    CodexAgent(budget=budget).implement(triple_design("codex"), area_for(repo, tmp_path))
    assert "--max-budget-usd" not in json.loads(argv_out.read_text())
    assert len(budget.calls) == 1  # its tokens are recorded in the budget it was given
    argv_out.unlink()
    spent = Budget(0.05)
    spent.settle(spent.reserve(0.05, "earlier"), 0.06)
    with pytest.raises(BudgetExhausted):
        CodexAgent(budget=spent).implement(triple_design("codex"), area_for(repo, tmp_path))
    assert not argv_out.exists()


@pytest.mark.slow
def test_a_cycle_budget_caps_claude_code_as_the_implementer(
    cli_env: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`implementer: claude-code` outside the panel: it gets the cycle's budget as its cap
    and the commit names it."""
    fake_exe(cli_env, "claude", CLAUDE_OK)
    env_out = tmp_path / "env.json"
    monkeypatch.setenv("FAKE_ENV_OUT", str(env_out))
    monkeypatch.setenv("NOMIC_BUDGET_USD", "1.25")
    settings = settings_for(repo, agents=[f"{__name__}:ScriptedAgent"], implementer="claude-code")
    record = run_cycle(settings)
    assert record.outcome is Outcome.COMMITTED, record.reason
    argv = json.loads(env_out.read_text())["argv"]
    assert argv[-2:] == ["--max-budget-usd", "1.2500"]
    assert record.cost_usd == pytest.approx(0.0421)
    trailers = run_git(repo, "log", "-1", "--format=%(trailers:only,unfold)", record.commit_sha)
    assert "Nomic-Winner: scripted" in trailers and "Nomic-Implementer: claude-code" in trailers
