"""What a cycle is asked to do: the one settings model every driver fills in.

The Dagster run config (`orchestration.config.CycleConfig`), the CLI and the library
all produce a `CycleSettings`; the phases only ever read this model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.pathrules import DEFAULT_PROTECTED_PATHS
from nomic_dagster.core.records import ConsensusRule, Track

# Literal (not Enum) types in settings, because Dagster config matches enums by member
# name ("SME") while users write the value ("sme"). `track_enum()` converts.
TrackName = Literal["sme", "developer", "self_hosted", "qa", "core", "security"]
# "" = not chosen: the run's nomic/track tag decides (Dagster config cannot express an
# optional Literal).
TrackChoice = Literal["", "sme", "developer", "self_hosted", "qa", "core", "security"]
RuleName = Literal["majority", "two_thirds", "unanimous"]

DEFAULT_AGENTS: tuple[str, ...] = ("lint-fixer", "test-writer", "dead-code")
DEFAULT_GOAL = "Improve the quality of this repository: lint, tests and dead code"
DEFAULT_TEST_COMMAND = "python -m pytest -q"


class CycleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: Annotated[
        str | None,
        Field(
            description="Target repository: a local path, a git URL, or 'demo'. Empty: "
            "$NOMIC_REPO, else (Dagster runs) the bundled demo repository, copied fresh each "
            "run; `nomic run`, the scripts and the state machine take the git repository "
            "containing the current directory instead (infra.git.choose_target)."
        ),
    ] = None
    base_branch: Annotated[
        str | None,
        Field(
            description="Branch the cycle starts from. Empty: the branch checked out in the repo."
        ),
    ] = None
    goal: Annotated[str, Field(description="What the agents should improve.")] = DEFAULT_GOAL
    track: Annotated[
        TrackChoice,
        Field(
            description="Development track (sme, developer, self_hosted, qa, core, security); "
            "names the cycle branch. Empty: the run's nomic/track tag, else developer."
        ),
    ] = ""
    # Empty by default (not DEFAULT_AGENTS) so that "not named" can be told apart from a
    # named panel: the launchpad shows (and sends) this default, and $NOMIC_AGENTS must win
    # over it. The panel is resolved in CONTEXT (`agents.panel_names`).
    agents: Annotated[
        list[str],
        Field(
            description="The agent panel: offline agents (lint-fixer, test-writer, dead-code, "
            "or `offline` for all three), LLM agents (claude, gpt, openai-compatible), CLI "
            "agents (claude-code, codex) or import paths 'package.module:ClassName'. Empty: "
            "$NOMIC_AGENTS (e.g. claude,offline), else lint-fixer, test-writer, dead-code."
        ),
    ] = Field(default_factory=list)
    designer: Annotated[
        str,
        Field(
            description="The agent that designs the winning proposal; may be outside the "
            "panel (built like any agent). Empty: the winning proposal's agent."
        ),
    ] = ""
    implementer: Annotated[
        str,
        Field(
            description="The agent that implements the design, e.g. claude-code or codex; "
            "may be outside the panel. Empty: the designer."
        ),
    ] = ""
    consensus_rule: Annotated[
        RuleName,
        Field(description="How many voters must back the winner: majority, two_thirds, unanimous."),
    ] = "two_thirds"
    critique_rounds: Annotated[
        int,
        Field(
            description="Critique rounds after the vote-only ballot: in each, every agent "
            "critiques the others' current proposals, proposers may revise, everyone votes "
            "again. 0: the vote-only ballot decides.",
            ge=0,
        ),
    ] = 2
    early_stop: Annotated[
        bool,
        Field(
            description="Stop the critique rounds once two consecutive ballots have the same "
            "leader, no voter changed its choice and no proposal was revised."
        ),
    ] = True
    judge: Annotated[
        str,
        Field(
            description="An agent (name or import path) that does not propose and, when the "
            "panel reaches no consensus, picks the winner by its own vote. Empty: no judge."
        ),
    ] = ""
    quorum: Annotated[
        int,
        Field(
            description="Fewest voters the debate needs; below it the cycle ends with "
            "no_consensus. Capped at the agents that entered the debate (the panel less "
            "those that failed to propose), so one-agent panels still decide.",
            ge=1,
        ),
    ] = 2
    protected_paths: Annotated[
        list[str],
        Field(
            description="Globs no design or diff may touch (`**` spans folders, `dir/` a folder)."
        ),
    ] = Field(default_factory=lambda: list(DEFAULT_PROTECTED_PATHS))
    max_files: Annotated[int, Field(description="Most files a design may touch.", ge=1)] = 5
    test_command: Annotated[
        str,
        Field(
            description="The target's test command, run in the worktree. `python` is the "
            "interpreter nomic_dagster runs on."
        ),
    ] = DEFAULT_TEST_COMMAND
    test_timeout_s: Annotated[int, Field(description="Timeout for one test run.", ge=1)] = 900
    allow_no_tests: Annotated[
        bool, Field(description="Accept a test command that collects no tests.")
    ] = False
    auto_merge: Annotated[
        bool,
        Field(
            description="Fast-forward the base branch to the verified commit, only if the "
            "base has not moved since the cycle started. Default: leave the branch for review."
        ),
    ] = False
    budget_usd: Annotated[
        float | None,
        Field(
            description="Most the cycle's model calls may cost, in USD, across all its phases "
            "and re-executions; a call whose worst case could cross it is not made and the "
            "cycle ends budget_exhausted. Empty: $NOMIC_BUDGET_USD, else no limit.",
            ge=0,
        ),
    ] = None
    require_approval: Annotated[
        bool,
        Field(
            description="Stop after DESIGN (outcome awaiting_approval) until a person approves "
            "the design (`nomic approve CYCLE`, or the nomic_approve job); the approval resumes "
            "the cycle at IMPLEMENT without re-running context, debate or design."
        ),
    ] = False
    approval_expiry_hours: Annotated[
        float | None,
        Field(
            description="An approval not acted on within this many hours is refused (approve "
            "again). Empty: approvals do not expire unless the approver sets an expiry.",
            gt=0,
        ),
    ] = None
    context_budget_chars: Annotated[
        int, Field(description="Size budget of the context shown to agents.", ge=2000)
    ] = 60_000
    state_dir: Annotated[
        str | None,
        Field(
            description="Where worktrees, clones and cycle records live. Empty: see state_dir()."
        ),
    ] = None
    record_cassette: Annotated[
        bool,
        Field(
            description="Store every LLM request/response of the cycle as a cassette "
            "(<state dir>/cassettes/<cycle_id>.jsonl, secrets redacted), linked from its record."
        ),
    ] = True
    replay_from: Annotated[
        str | None,
        Field(
            description="Replay a recorded cycle: a cycle id or a cassette path; LLM agents "
            "answer from it with no network (offline agents run live). Empty: live models."
        ),
    ] = None

    @property
    def track_enum(self) -> Track:
        return Track(self.track or Track.DEVELOPER.value)

    @property
    def rule(self) -> ConsensusRule:
        return ConsensusRule(self.consensus_rule)


# The nomic_dagster checkout this code runs from, when it is one (an editable install):
# `make demo`, `make dev` and scripts/env.sh keep everything in its .dagster_home/.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_HOME_DIR = ".dagster_home"


def project_home() -> Path | None:
    """`<checkout>/.dagster_home` when nomic_dagster runs from its own checkout, else None."""
    if (PROJECT_ROOT / "dagster.yaml").is_file() and (PROJECT_ROOT / "pyproject.toml").is_file():
        return PROJECT_ROOT / PROJECT_HOME_DIR
    return None


# The seed's track table: "Track.CORE  # Debate engine, agents (1 concurrent, Claude only)".
# Claude agents are `claude` (the API), `claude-code` (the CLI) and backends named
# claude-<something> (e.g. a second Claude model).
CLAUDE_ONLY_TRACKS: frozenset[Track] = frozenset({Track.CORE})
AGENT_ROLES: tuple[str, ...] = ("judge", "designer", "implementer")


def is_claude_agent(name: str) -> bool:
    return name == "claude" or name.startswith("claude-")


def check_track_agents(settings: CycleSettings, panel: list[str]) -> None:
    """BadInput when the track allows only Claude and `panel` (the resolved panel) or a
    role (judge, designer, implementer) names another agent."""
    track = settings.track_enum
    if track not in CLAUDE_ONLY_TRACKS:
        return
    named = [*panel, *(getattr(settings, role).strip() for role in AGENT_ROLES)]
    others = [n for n in dict.fromkeys(named) if n and not is_claude_agent(n)]
    if others:
        raise BadInput(
            f"track {track.value} is limited to Claude agents and the cycle names "
            f"{', '.join(repr(n) for n in others)}",
            "use agents=['claude'] (or claude-code) and no other judge, designer or "
            "implementer for this track, or choose another track",
        )


def state_dir(settings: CycleSettings | None = None) -> Path:
    """The folder for nomic's own state: never inside the user's checkout.

    Order: the settings, $NOMIC_STATE_DIR, $DAGSTER_HOME/nomic, then — so that every
    documented command (`make demo`, `dagster job execute` from the checkout with or
    without scripts/env.sh, `nomic run|status|history`, `nomic-report`) reads and writes
    the same place — `.dagster_home/nomic` of the nomic_dagster checkout this code runs
    from, and only for an installed (non-checkout) package ~/.local/state/nomic_dagster.
    """
    home = project_home()
    if settings is not None and settings.state_dir:
        chosen = Path(settings.state_dir)
    elif os.environ.get("NOMIC_STATE_DIR"):
        chosen = Path(os.environ["NOMIC_STATE_DIR"])
    elif os.environ.get("DAGSTER_HOME"):
        chosen = Path(os.environ["DAGSTER_HOME"]) / "nomic"
    elif home is not None:
        chosen = home / "nomic"
    else:
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        chosen = Path(base) / "nomic_dagster"
    chosen = chosen.expanduser().resolve()
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen
