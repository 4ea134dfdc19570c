"""Record and replay: a cycle's LLM calls stored as a cassette, and the cycle re-run from it.

Recording runs a real claude + gpt cycle through the real SDK clients against the loopback
servers; the replay runs the same cycle with the servers stopped and no API key in the
environment, so any request it tried to send would fail. Nothing is patched.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from pydantic import BaseModel

from nomic_dagster.agents.cassette import (
    CassetteEntry,
    CassetteHeader,
    CassetteRequest,
    CassetteResponse,
    RecordingBackend,
    cassette_path,
    cassette_writer,
)
from nomic_dagster.agents.llm.agent import (
    BackendError,
    ChatBackend,
    ProposalsOut,
    SystemBlock,
    Turn,
    VoteOut,
)
from nomic_dagster.agents.llm.anthropic import AnthropicBackend
from nomic_dagster.agents.replay import ReplayBackend, load_cassette, replay_panel
from nomic_dagster.core.errors import BadInput, ReplayMismatch
from nomic_dagster.core.records import CycleRecord, Outcome, utcnow
from nomic_dagster.core.settings import CycleSettings, state_dir
from nomic_dagster.core.state import CycleState
from nomic_dagster.core.usage import Usage
from nomic_dagster.cycle.finish import finish_cycle
from nomic_dagster.cycle.runtime import CycleRuntime
from nomic_dagster.cycle.steps import drive_cycle
from nomic_dagster.drivers.state_machine import NomicStateMachine, create_nomic_state_machine
from nomic_dagster.infra.pricing import DEFAULT_PRICES
from nomic_dagster.planning.cycle_store import get_cycle_store
from nomic_dagster_tests.support import llm_scripts as ls
from nomic_dagster_tests.support.fake_llm_servers import (
    FakeAnthropicServer,
    FakeOpenAIServer,
    Reply,
)
from nomic_dagster_tests.support.repo_builders import commit_all, make_repo, run_git, settings_for

# Distinctive fake keys: any trace of them in a cassette is a leak.
ANTHROPIC_KEY = "sk-ant-test-DISTINCTIVE-cassette-4b1e9d7c2a6f3058"
OPENAI_KEY = "sk-proj-DISTINCTIVE-cassette-openai-8e2d6c4a0b9f1375"
KEY_MARKER = "DISTINCTIVE"


pytestmark = pytest.mark.usefixtures("llm_env")  # conftest: a clean LLM environment


@pytest.fixture
def calc_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "target", ls.CALC_REPO)


def record_claude_and_gpt_cycle(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[CycleState, CycleRecord]:
    """A live claude + gpt cycle against the loopback servers (recording is the default);
    afterwards the servers are stopped and the keys gone, their URLs left pointing at the
    closed ports: a replay that tried the network would fail."""
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
        monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", anthropic_server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
        state = drive_cycle(settings_for(repo, agents=["claude", "gpt"]))
        record = finish_cycle(state)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    assert record.outcome is Outcome.COMMITTED, record.reason
    return state, record


def debate_decisions(state: CycleState) -> dict[str, object]:
    """What the debate decided: every proposal, critique, ballot and the consensus."""
    assert state.debate is not None
    return state.debate.model_dump(mode="json")


def entries(path: Path) -> list[CassetteEntry]:
    return load_cassette(path).entries


# ---------------------------------------------------------------- whole cycles


@pytest.mark.slow
def test_a_recorded_cycle_replays_to_the_same_decisions_and_diff(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded, record = record_claude_and_gpt_cycle(calc_repo, monkeypatch)
    cassette = cassette_path(None, record.cycle_id)
    assert record.cassette == str(cassette) and cassette.is_file()
    calls = entries(cassette)
    assert [(e.agent, e.schema_name) for e in calls if e.agent == "claude"] == [
        ("claude", "submit_proposals"),
        ("claude", "submit_vote"),
        ("claude", "submit_critique"),
        ("claude", "submit_vote"),
        ("claude", "submit_design"),
        ("claude", "submit_edits"),
    ]
    assert len(calls) == record.llm_calls
    assert [e.seq for e in calls] == list(range(1, len(calls) + 1))

    replayed = drive_cycle(
        settings_for(calc_repo, agents=["claude", "gpt"], replay_from=record.cycle_id)
    )
    again = finish_cycle(replayed)

    assert again.outcome is Outcome.COMMITTED, again.reason
    assert again.cycle_id != record.cycle_id
    # the replay reproduces a cycle: the learning store keeps the original only
    store = get_cycle_store()
    assert store.get(record.cycle_id) is not None and store.get(again.cycle_id) is None
    # the same decisions: proposals, critiques, both ballots, the winner, the design
    assert debate_decisions(replayed) == debate_decisions(recorded)
    assert (again.winner, again.winner_agent, again.first_round_winner) == (
        record.winner,
        record.winner_agent,
        record.first_round_winner,
    )
    assert replayed.design == recorded.design
    # the byte-identical diff, and the same committed tree on its own branch
    assert replayed.changeset is not None and recorded.changeset is not None
    assert replayed.changeset.diff == recorded.changeset.diff
    assert replayed.changeset.tree_sha == recorded.changeset.tree_sha
    assert again.commit_sha != record.commit_sha and again.branch != record.branch
    assert run_git(calc_repo, "rev-parse", f"{again.commit_sha}^{{tree}}") == run_git(
        calc_repo, "rev-parse", f"{record.commit_sha}^{{tree}}"
    )
    # the recorded usage and prices: the replay costs what the recording cost
    assert again.llm_calls == record.llm_calls
    assert again.cost_usd == pytest.approx(record.cost_usd) and again.cost_usd > 0
    assert again.cost_by_agent == pytest.approx(record.cost_by_agent)
    # the replayed cycle recorded its own cassette, linked from its record: the same requests
    own = Path(again.cassette or "")
    assert own == cassette_path(None, again.cycle_id) and own.is_file()
    assert [(e.agent, e.digest) for e in entries(own)] == [(e.agent, e.digest) for e in calls]
    header = load_cassette(own).header
    assert header.cycle_id == again.cycle_id and header.agents == ["claude", "gpt"]

    # The keys reached no cassette, and no cassette holds a request header.
    for path in (cassette, own):
        text = path.read_text(encoding="utf-8")
        assert KEY_MARKER not in text
        assert "x-api-key" not in text.lower() and "authorization" not in text.lower()


@pytest.mark.slow
def test_a_changed_target_is_prompt_drift_that_ends_the_replay(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, record = record_claude_and_gpt_cycle(calc_repo, monkeypatch)
    (calc_repo / "calc" / "extra.py").write_text("def square(x):\n    return x * x\n")
    commit_all(calc_repo, "add square()")

    settings = settings_for(calc_repo, agents=["claude", "gpt"], replay_from=record.cycle_id)
    runtime = CycleRuntime.for_settings(settings)
    replayed = drive_cycle(settings, runtime=runtime)
    again = finish_cycle(replayed)

    assert again.outcome is Outcome.BAD_INPUT and again.commit_sha is None
    assert again.reason.startswith(
        "the prompt drifted: the submit_proposals request of agent 'claude'"
    )
    assert f"entry 1 of the cassette {cassette_path(None, record.cycle_id)}" in again.reason
    assert "system block 2 of 2 differs" in again.reason  # where the prompts first differ
    assert "(base commit" in again.reason
    assert "fix: replay against the target commit" in again.reason
    assert replayed.debate is None  # the debate ended at its first call
    # a drifted replay is bad input, not the agent failing: its breaker counts nothing
    assert runtime.breakers.get_or_create("claude").failures == 0
    # only the recorded cycle's branch exists
    assert run_git(calc_repo, "branch", "--list", "nomic/*").split() == [record.branch]


def test_replay_settings_that_cannot_work_are_bad_input_before_any_git_work(
    calc_repo: Path,
) -> None:
    missing = finish_cycle(
        drive_cycle(settings_for(calc_repo, agents=["claude"], replay_from="deadbeef"))
    )
    assert missing.outcome is Outcome.BAD_INPUT and missing.base_sha is None
    assert "there is no cassette at" in missing.reason and "deadbeef.jsonl" in missing.reason
    assert "fix: name a cycle that recorded its LLM calls" in missing.reason

    cli = finish_cycle(
        drive_cycle(settings_for(calc_repo, agents=["claude", "codex"], replay_from="deadbeef"))
    )
    assert cli.outcome is Outcome.BAD_INPUT
    assert "CLI agent(s) codex" in cli.reason
    # an agent built outside the panel (here a CLI implementer) is not in any cassette
    outside = finish_cycle(
        drive_cycle(
            settings_for(calc_repo, agents=["claude"], implementer="codex", replay_from="x")
        )
    )
    assert outside.outcome is Outcome.BAD_INPUT
    assert "the implementer is the CLI agent 'codex'" in outside.reason

    # a recorded panel of [claude] cannot be replayed by [claude, gpt]
    writer = cassette_writer(
        CycleSettings(agents=["claude"]), "c0ffee00", started_at=utcnow(), recent_cycles=[]
    )
    writer.append(lambda seq: _entry(seq, "claude", "submit_vote"))
    with pytest.raises(BadInput, match=r"recorded the panel \['claude'\]"):
        replay_panel(settings_for(calc_repo, agents=["claude", "gpt"], replay_from="c0ffee00"))
    assert not list(state_dir().glob("worktrees/*"))


# ---------------------------------------------------------------- the backends


def _entry(seq: int, agent: str, schema_name: str) -> CassetteEntry:
    """A hand-made entry, for a cassette that only needs to exist."""
    return CassetteEntry(
        seq=seq,
        cycle_id="c0ffee00",
        agent=agent,
        provider="anthropic",
        model="claude-sonnet-4-6",
        schema_name=schema_name,
        digest="0" * 64,
        request=CassetteRequest(system=[], messages=[], schema_name=schema_name, max_tokens=64),
        response=CassetteResponse(kind="text", text="hello"),
        recorded_at=utcnow(),
        duration_s=0.0,
    )


def _ask_proposals(backend: ChatBackend, task: str) -> tuple[BaseModel | str, Usage | None]:
    """One propose request whose shared context block holds `task`."""
    system = [SystemBlock("You are claude."), SystemBlock(f"# Goal\n{task}", cache=True)]
    return backend.complete(system, [Turn("user", "Step: propose.")], ProposalsOut, 256)


def test_a_cassette_line_is_json_with_the_secrets_redacted_and_replays_in_order(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The second answer is an HTTP 401 whose message echoes the key, as some gateways do.
    error = {"type": "authentication_error", "message": f"invalid x-api-key {ANTHROPIC_KEY}"}
    echo = Reply(status=401, body={"type": "error", "error": error})
    script = ls.anthropic_script(ls.Steps(submit_proposals=[ls.proposals(), echo]))
    settings = CycleSettings(agents=["claude"])
    writer = cassette_writer(settings, "feed0001", started_at=utcnow(), recent_cycles=[])
    with FakeAnthropicServer(script) as server:
        live = AnthropicBackend(
            model="claude-sonnet-4-6",
            api_key=ANTHROPIC_KEY,
            base_url=server.base_url,
            max_retries=0,
        )
        recording = RecordingBackend(live, writer, "claude", DEFAULT_PRICES["claude-sonnet-4-6"])
        # a repository file that holds the key ends up in the prompt: the cassette must not
        answer, usage = _ask_proposals(recording, f"config.py says API_KEY = {ANTHROPIC_KEY!r}")
        assert isinstance(answer, ProposalsOut) and usage is not None
        with pytest.raises(BackendError):
            _ask_proposals(recording, "a second question")
        sent = [json.dumps(r.headers) for r in server.api_requests()]
        assert len(sent) == 2 and all(ANTHROPIC_KEY in headers for headers in sent)

    path = writer.path
    raw = path.read_bytes()
    assert KEY_MARKER.encode() not in raw
    lines = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    assert [line["type"] for line in lines] == ["header", "call", "call"]
    header = CassetteHeader.model_validate(lines[0])
    assert header.cycle_id == "feed0001" and header.agents == ["claude"]
    first, second = (CassetteEntry.model_validate(line) for line in lines[1:])
    assert "API_KEY = '[redacted]'" in first.request.system[1].text
    assert first.request.system[1].cache is True and first.request.max_tokens == 256
    assert first.response.kind == "structured" and first.response.usage is not None
    assert first.response.usage.input_tokens > 0 and first.price is not None
    assert first.response.output == ProposalsOut.model_validate(ls.proposals()).model_dump()
    assert second.response.kind == "backend_error"
    assert "HTTP 401" in second.response.detail and "[redacted]" in second.response.detail
    assert first.digest != second.digest and len(first.digest) == 64

    # Replayed: the same answer and usage, the same error, then nothing more.
    replay = ReplayBackend(entries(path), cassette=path, agent_name="claude")
    assert (replay.provider, replay.model, replay.secrets()) == (
        "anthropic",
        "claude-sonnet-4-6",
        [],
    )
    again, again_usage = _ask_proposals(replay, f"config.py says API_KEY = {ANTHROPIC_KEY!r}")
    assert again == answer and again_usage == usage
    with pytest.raises(BackendError, match="HTTP 401"):
        _ask_proposals(replay, "a second question")
    with pytest.raises(
        ReplayMismatch,
        match=r"has no more submit_proposals calls of agent 'claude' \(it recorded 2\)",
    ) as out:
        _ask_proposals(replay, "a third question")
    assert str(path) in str(out.value)
    with pytest.raises(ReplayMismatch, match="no more submit_vote calls"):
        replay.complete([SystemBlock("x")], [Turn("user", "vote")], VoteOut, 256)

    # A different prompt is drift: strict names the entry and where the texts differ...
    strict = ReplayBackend(entries(path), cassette=path, agent_name="claude")
    with pytest.raises(ReplayMismatch) as drift:
        _ask_proposals(strict, "a different goal")
    message = str(drift.value)
    assert f"entry 1 of the cassette {path}" in message
    assert "system block 2 of 2 differs at character 7" in message
    assert "a different goal" in message and "[redacted]" in message
    assert KEY_MARKER not in message
    # ...and strict=False serves the recorded answer with a warning.
    lenient = ReplayBackend(entries(path), cassette=path, agent_name="claude", strict=False)
    with caplog.at_level(logging.WARNING, logger="nomic_dagster.agents.replay"):
        served, _ = _ask_proposals(lenient, "a different goal")
    assert served == answer
    assert (
        "the prompt drifted" in caplog.text and "serving the recorded answer anyway" in caplog.text
    )


@pytest.mark.slow
def test_phases_in_child_processes_record_one_cassette_and_replay_from_it(
    calc_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state machine runs every phase in a forked child: each child appends to the one
    cassette, and each replaying child builds its panel afresh and still finds its answers."""

    def machine(**settings: object) -> NomicStateMachine:
        return create_nomic_state_machine(
            checkpoint_dir=tmp_path / "checkpoints",
            settings=settings_for(calc_repo, agents=["claude", "gpt"], **settings),
        )

    claude = ls.winning_steps("claude:1")
    gpt = ls.winning_steps("claude:1", submit_proposals=ls.proposals(ls.proposal(kind="docs")))
    with (
        FakeAnthropicServer(ls.anthropic_script(claude)) as anthropic_server,
        FakeOpenAIServer(ls.openai_script(gpt)) as openai_server,
    ):
        monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", anthropic_server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
        record = asyncio.run(machine().run())
        sent = len(anthropic_server.api_requests()) + len(openai_server.api_requests())
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    assert record is not None and record.outcome is Outcome.COMMITTED, record
    assert record.cassette and len(entries(Path(record.cassette))) == sent == record.llm_calls

    again = asyncio.run(machine(replay_from=record.cycle_id).run())
    assert again is not None and again.outcome is Outcome.COMMITTED, again
    assert (again.winner, again.llm_calls) == (record.winner, record.llm_calls)
    assert run_git(calc_repo, "rev-parse", f"{again.commit_sha}^{{tree}}") == run_git(
        calc_repo, "rev-parse", f"{record.commit_sha}^{{tree}}"
    )


@pytest.mark.slow
def test_a_designer_outside_the_panel_is_recorded_and_replayed(
    calc_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpt debates alone, claude (not in the panel) designs and implements: both agents'
    calls go to the cassette, and the replay answers both from it with no network."""
    with (
        FakeAnthropicServer(ls.anthropic_script(ls.winning_steps("gpt:1"))) as claude_server,
        FakeOpenAIServer(ls.openai_script(ls.winning_steps("gpt:1"))) as gpt_server,
    ):
        monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", claude_server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", gpt_server.base_url)
        live = drive_cycle(settings_for(calc_repo, agents=["gpt"], designer="claude"))
        recorded = finish_cycle(live)
        assert claude_server.steps() == ["submit_design", "submit_edits"]
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    assert recorded.outcome is Outcome.COMMITTED, recorded.reason
    assert {e.agent for e in entries(cassette_path(None, recorded.cycle_id))} == {"claude", "gpt"}

    replay = drive_cycle(
        settings_for(calc_repo, agents=["gpt"], designer="claude", replay_from=recorded.cycle_id)
    )
    again = finish_cycle(replay)
    assert again.outcome is Outcome.COMMITTED, again.reason
    assert replay.design == live.design
    assert replay.changeset is not None and live.changeset is not None
    assert replay.changeset.diff == live.changeset.diff
