"""Agent backends as Dagster resources, the designer/implementer roles and $NOMIC_AGENTS.

Real Dagster instances run `nomic_cycle` on real git repositories; the `claude` resource
points the real `anthropic` SDK at a loopback server, and `codex` is a fake executable
that edits the worktree. Nothing is patched.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
from pydantic import SecretStr

from nomic_dagster.agents import AGENTS_ENV, agents_from_env, build_agent, panel_names
from nomic_dagster.agents.cli_agent import ClaudeCodeSettings, CodexAgent
from nomic_dagster.agents.llm.anthropic import AnthropicAgent, AnthropicSettings
from nomic_dagster.agents.llm.openai import OpenAICompatibleSettings
from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.records import Outcome
from nomic_dagster.cycle.runtime import CycleRuntime
from nomic_dagster.cycle.steps import run_cycle
from nomic_dagster.definitions import build_defs, nomic_cycle_job
from nomic_dagster.drivers.state_machine import create_nomic_state_machine
from nomic_dagster.orchestration.resources import (
    AGENT_RESOURCE_KEYS,
    AnthropicResource,
    CodexResource,
    NomicResource,
    OpenAICompatibleResource,
    backend_settings,
)
from nomic_dagster_tests.agents.test_cli_agents import CODEX_OK, fake_exe
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support import llm_scripts as ls
from nomic_dagster_tests.support.fake_llm_servers import FakeAnthropicServer
from nomic_dagster_tests.support.repo_builders import (
    make_repo,
    run_git,
    settings_for,
)
from nomic_dagster_tests.support.run_configs import fast_cycle_config

# Distinctive: any trace of it in the instance's storage or the state folder is a leak.
CLAUDE_KEY = "sk-ant-api03-NOMICFAKEKEY-resource-5e6f7a8b9c0d"
KEY_VAR = "NOMIC_TEST_CLAUDE_KEY"

BACKEND_ENV = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "CODEX_API_KEY",
    "NOMIC_CLAUDE_MODEL",
    "NOMIC_OPENAI_BASE_URL",
    "NOMIC_OPENAI_MODEL",
    "NOMIC_OPENAI_API_KEY",
    "NOMIC_LLM_MAX_TOKENS",
    "NOMIC_BUDGET_USD",
    "NOMIC_PRICES",
    "NOMIC_CLAUDE_CODE_BIN",
    "NOMIC_CODEX_BIN",
    AGENTS_ENV,
)


@pytest.fixture(autouse=True)
def no_backend_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No key, no URL, no panel in the environment."""
    for name in BACKEND_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NOMIC_LLM_MAX_RETRIES", "1")
    yield


def trailers(repo: Path, sha: str) -> str:
    return run_git(repo, "log", "-1", "--format=%(trailers:only,unfold)", sha)


def stored_text(instance: dg.DagsterInstance, run_id: str) -> str:
    """Everything the instance keeps about a run: its config, tags and every event."""
    run = instance.get_run_by_id(run_id)
    assert run is not None
    events = [dg.serialize_value(e) for e in instance.all_logs(run_id)]
    return json.dumps([run.run_config, run.tags, events], default=str)


def files_text(root: Path) -> str:
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file()
    )


# ---------------------------------------------------------------- the settings and resources


def test_the_default_resources_need_no_key_and_mean_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defs = build_defs()
    assert {"claude", "gpt", "openai_compatible", "claude_code", "codex"} == AGENT_RESOURCE_KEYS
    assert set(defs.resources) >= AGENT_RESOURCE_KEYS
    agent_keys = {k: v for k, v in defs.resources.items() if k in AGENT_RESOURCE_KEYS}
    with dg.build_resources(agent_keys) as resources:
        settings = backend_settings(resources)
    assert set(settings) == {"claude", "gpt", "openai-compatible", "claude-code", "codex"}
    assert all(s.api_key is None for s in settings.values())
    # every field unset: the agent is built from the environment, as without Dagster
    assert settings["claude"] == AnthropicSettings()
    monkeypatch.setenv("ANTHROPIC_API_KEY", CLAUDE_KEY)
    monkeypatch.setenv("NOMIC_CLAUDE_MODEL", "claude-haiku-4-5")
    resolved = settings["claude"].resolved()
    assert resolved.model == "claude-haiku-4-5" and resolved.key() == CLAUDE_KEY


def test_the_key_stays_out_of_dumps_and_reprs_and_set_fields_win_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOMIC_CLAUDE_MODEL", "claude-opus-4-6")
    monkeypatch.setenv("NOMIC_LLM_MAX_TOKENS", "lots")  # never read: the resource sets it
    resource = AnthropicResource(
        api_key=CLAUDE_KEY, model="claude-haiku-4-5", base_url="http://127.0.0.1:9", max_tokens=900
    )
    settings = resource.settings()
    for text in (repr(settings), str(settings), settings.model_dump_json(), repr(resource)):
        assert CLAUDE_KEY not in text
    resolved = settings.resolved()
    assert CLAUDE_KEY not in resolved.model_dump_json() and CLAUDE_KEY not in repr(resolved)
    assert (resolved.model, resolved.max_tokens) == ("claude-haiku-4-5", 900)
    agent = build_agent("claude", backends={"claude": settings})
    assert isinstance(agent, AnthropicAgent)
    assert agent.backend.model == "claude-haiku-4-5" and agent.max_tokens == 900
    assert agent.backend.base_url == "http://127.0.0.1:9" and CLAUDE_KEY not in repr(agent)
    # a second, differently configured Claude under a name of its own
    haiku = build_agent("claude-cheap", backends={"claude-cheap": settings})
    assert haiku.name == "claude-cheap"


def test_a_missing_key_or_server_is_bad_input_naming_what_to_set() -> None:
    with pytest.raises(BadInput) as info:
        build_agent("claude", backends={"claude": AnthropicResource().settings()})
    assert "ANTHROPIC_API_KEY" in str(info.value) and "api_key" in info.value.fix
    with pytest.raises(BadInput, match="OPENAI_BASE_URL"):
        build_agent("openai-compatible", backends={})
    local = OpenAICompatibleResource(base_url="http://127.0.0.1:11434/v1").settings()
    with pytest.raises(BadInput, match="NOMIC_OPENAI_MODEL"):
        build_agent("openai-compatible", backends={"openai-compatible": local})
    with pytest.raises(BadInput, match="binary"):
        ClaudeCodeSettings(binary="/nowhere/claude").resolved()


def test_an_unusable_resource_value_is_bad_input_naming_the_resource_and_field() -> None:
    resources = SimpleNamespace(claude=AnthropicResource(api_key=CLAUDE_KEY, max_tokens=10))
    with pytest.raises(BadInput) as info:
        backend_settings(resources)
    assert "'claude'" in str(info.value) and "max_tokens" in str(info.value)
    assert "resources.claude.config" in info.value.fix and CLAUDE_KEY not in str(info.value)


def test_the_compatible_server_with_its_own_url_never_gets_the_openai_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-proj-NOMICFAKEKEY-openai")
    own = OpenAICompatibleSettings(base_url="http://127.0.0.1:11434/v1", model="qwen").resolved()
    assert own.key() is None and own.context_window_tokens == 8192
    keyed = OpenAICompatibleSettings(
        base_url="http://127.0.0.1:11434/v1", model="qwen", api_key=SecretStr("local-key")
    ).resolved()
    assert keyed.key() == "local-key"


# ---------------------------------------------------------------- $NOMIC_AGENTS


def test_nomic_agents_names_the_panel_only_when_the_settings_name_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert panel_names([]) == ["lint-fixer", "test-writer", "dead-code"]
    monkeypatch.setenv(AGENTS_ENV, " claude , offline ")
    assert agents_from_env() == ["claude", "lint-fixer", "test-writer", "dead-code"]
    assert panel_names([]) == ["claude", "lint-fixer", "test-writer", "dead-code"]
    assert panel_names(["gpt", "dead-code"]) == ["gpt", "dead-code"]  # run config wins
    monkeypatch.setenv(AGENTS_ENV, "claude,chatgpt")
    with pytest.raises(BadInput) as info:
        panel_names([])
    assert AGENTS_ENV in str(info.value) and "'chatgpt'" in str(info.value)
    assert AGENTS_ENV in info.value.fix
    assert panel_names(["lint-fixer"]) == ["lint-fixer"]  # not read when config names agents


def test_bad_names_in_nomic_agents_end_the_cycle_before_any_git_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    monkeypatch.setenv(AGENTS_ENV, "lint-fixer,nope")
    record = run_cycle(settings_for(repo))
    assert record.outcome is Outcome.BAD_INPUT
    assert AGENTS_ENV in record.reason and "'nope'" in record.reason
    assert record.base_sha is None  # no worktree was opened


def test_the_job_takes_its_panel_from_nomic_agents_and_the_run_config_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state_dir: Path, instance
) -> None:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    monkeypatch.setenv(AGENTS_ENV, f"{ta.spec(ta.ScriptedAgent)},{ta.spec(ta.GoodAgent)}")
    job = build_defs({"nomic": NomicResource(state_dir=str(state_dir))}).get_job_def("nomic_cycle")
    # the job's default config (what the launchpad shows) names no agents: $NOMIC_AGENTS
    result = job.execute_in_process(instance=instance, run_config=fast_cycle_config(repo=str(repo)))
    record = result.output_for_node("record_cycle_op")
    assert record.outcome is Outcome.COMMITTED, record.reason
    assert record.agents == [ta.spec(ta.ScriptedAgent), ta.spec(ta.GoodAgent)]
    assert "Nomic-Agents: " + ", ".join(record.agents) in trailers(repo, record.commit_sha)
    # a run config that names agents wins over the variable
    result = job.execute_in_process(
        instance=instance,
        run_config=fast_cycle_config(repo=str(repo), agents=[ta.spec(ta.GoodAgent)]),
    )
    record = result.output_for_node("record_cycle_op")
    assert record.outcome is Outcome.COMMITTED, record.reason
    assert record.agents == [ta.spec(ta.GoodAgent)] and record.winner_agent == "good"


# ---------------------------------------------------------------- Dagster runs with resources


@pytest.fixture
def calc_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "target", ls.CALC_REPO)


def test_a_claude_resource_with_an_env_var_key_lands_a_commit_and_stores_no_key(
    monkeypatch: pytest.MonkeyPatch, calc_repo: Path, state_dir: Path, instance
) -> None:
    monkeypatch.setenv(KEY_VAR, CLAUDE_KEY)  # the only place the key is: an EnvVar reads it
    with FakeAnthropicServer(ls.anthropic_script(ls.winning_steps("claude:1"))) as server:
        claude = AnthropicResource(api_key=dg.EnvVar(KEY_VAR), base_url=server.base_url)
        defs = build_defs({"nomic": NomicResource(state_dir=str(state_dir)), "claude": claude})
        result = defs.get_job_def("nomic_cycle").execute_in_process(
            instance=instance,
            run_config=fast_cycle_config(repo=str(calc_repo), agents=["claude", "lint-fixer"]),
            tags={"nomic/cycle_id": "c-claude"},
        )
    assert result.success
    record = result.output_for_node("record_cycle_op")
    assert record.outcome is Outcome.COMMITTED, record.reason
    assert record.winner_agent == "claude" and record.agents == ["claude", "lint-fixer"]
    assert "def triple(x)" in run_git(calc_repo, "show", f"{record.commit_sha}:calc/ops.py")
    assert record.llm_calls > 0 and record.cost_usd > 0
    steps = server.steps()
    assert "submit_design" in steps and "submit_edits" in steps
    sent = [r.headers.get("x-api-key") or r.headers.get("authorization") for r in server.requests]
    assert set(sent) <= {CLAUDE_KEY, f"Bearer {CLAUDE_KEY}"}  # the EnvVar's key, every time

    # The key reached the server and nothing the instance or the cycle stored.
    assert CLAUDE_KEY not in stored_text(instance, result.run_id)
    assert "NOMICFAKEKEY" not in files_text(state_dir)
    log = run_git(calc_repo, "log", "-p", "--all")
    assert "NOMICFAKEKEY" not in log


def test_claude_designs_and_a_codex_executable_implements_outside_the_panel(
    tmp_path: Path, state_dir: Path, instance
) -> None:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    codex = fake_exe(tmp_path / "bin", "my-codex", CODEX_OK)
    steps = ls.Steps(submit_design=ls.design(files=["calc/ops.py"]))
    with FakeAnthropicServer(ls.anthropic_script(steps)) as server:
        defs = build_defs(
            {
                "nomic": NomicResource(state_dir=str(state_dir)),
                "claude": AnthropicResource(api_key=CLAUDE_KEY, base_url=server.base_url),
                "codex": CodexResource(binary=str(codex), timeout_s=60),
            }
        )
        result = defs.get_job_def("nomic_cycle").execute_in_process(
            instance=instance,
            run_config=fast_cycle_config(
                repo=str(repo),
                agents=[ta.spec(ta.ScriptedAgent)],
                designer="claude",
                implementer="codex",
            ),
        )
    record = result.output_for_node("record_cycle_op")
    assert record.outcome is Outcome.COMMITTED, record.reason
    assert server.steps() == ["submit_design"]  # claude only designed
    assert record.winner_agent == "scripted" and record.files == ["calc/ops.py"]
    ops = run_git(repo, "show", f"{record.commit_sha}:calc/ops.py")
    assert "def triple(x):\n    return 3 * x\n" in ops  # what the codex executable wrote
    found = trailers(repo, record.commit_sha)
    assert "Nomic-Winner: scripted" in found
    assert "Nomic-Designer: claude" in found and "Nomic-Implementer: codex" in found
    assert CLAUDE_KEY not in stored_text(instance, result.run_id)


def test_an_unknown_implementer_is_bad_input_in_context(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    record = run_cycle(settings_for(repo, agents=["lint-fixer"], implementer="codexx"))
    assert record.outcome is Outcome.BAD_INPUT
    assert "implementer 'codexx'" in record.reason and record.base_sha is None


def test_no_trailers_for_roles_the_winner_played_itself(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    spec = ta.spec(ta.ScriptedAgent)
    record = run_cycle(settings_for(repo, agents=[spec], designer="scripted"))
    assert record.outcome is Outcome.COMMITTED, record.reason
    found = trailers(repo, record.commit_sha)
    assert "Nomic-Winner: scripted" in found
    assert "Nomic-Designer" not in found and "Nomic-Implementer" not in found


def test_resources_set_in_run_config_reach_every_step_process(
    monkeypatch: pytest.MonkeyPatch, calc_repo: Path, instance
) -> None:
    """The multiprocess executor: each step is its own process, built from the module's
    definitions; the run config's `claude` block (the one-line change) reaches them all."""
    monkeypatch.setenv(KEY_VAR, CLAUDE_KEY)
    with FakeAnthropicServer(ls.anthropic_script(ls.winning_steps("claude:1"))) as server:
        run_config = {
            **fast_cycle_config(repo=str(calc_repo), agents=["claude"]),
            "resources": {
                "claude": {"config": {"api_key": {"env": KEY_VAR}, "base_url": server.base_url}}
            },
            "execution": {"config": {"multiprocess": {"max_concurrent": 1}}},
        }
        with dg.execute_job(
            dg.reconstructable(nomic_cycle_job), instance=instance, run_config=run_config
        ) as result:
            assert result.success
            record = result.output_for_node("record_cycle_op")
    assert record.outcome is Outcome.COMMITTED, record.reason
    assert {"submit_design", "submit_edits"} <= set(server.steps())
    assert CLAUDE_KEY not in stored_text(instance, result.run_id)


def test_codex_agent_takes_its_settings_binary(tmp_path: Path) -> None:
    codex = fake_exe(tmp_path / "bin", "codex-x", CODEX_OK)
    agent = build_agent("codex", backends={"codex": CodexResource(binary=str(codex)).settings()})
    assert isinstance(agent, CodexAgent) and agent.binary == str(codex)


def test_the_state_machines_phase_children_use_the_runtimes_backends(
    calc_repo: Path, tmp_path: Path
) -> None:
    """The library driver forks a child per phase: the backends of the machine's runtime
    (no environment variable at all) reach every one of them."""
    with FakeAnthropicServer(ls.anthropic_script(ls.winning_steps("claude:1"))) as server:
        claude = AnthropicSettings(api_key=SecretStr(CLAUDE_KEY), base_url=server.base_url)
        settings = settings_for(calc_repo, agents=["claude"])
        sm = create_nomic_state_machine(
            checkpoint_dir=tmp_path / "checkpoints",
            settings=settings,
            runtime=CycleRuntime.for_settings(settings, backends={"claude": claude}),
        )
        record = asyncio.run(sm.run(goal="add a helper"))
    assert record is not None and record.outcome is Outcome.COMMITTED, record
    assert {"submit_proposals", "submit_design", "submit_edits"} <= set(server.steps())
    assert "NOMICFAKEKEY" not in files_text(tmp_path / "checkpoints")
