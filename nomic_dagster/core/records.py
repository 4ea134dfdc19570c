"""Domain records: every value that crosses a phase boundary or is stored.

Plain pydantic models with no Dagster imports. They are JSON-serializable
(`model_dump_json` / `model_validate_json`) so the same records flow through the
plain cycle driver, Dagster ops (pickled by the IO manager), checkpoints and the
cycle store.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_cycle_id() -> str:
    return uuid.uuid4().hex[:8]


class Record(BaseModel):
    """Base for all records: forbid unknown fields so typos in stored data fail loudly."""

    model_config = ConfigDict(extra="forbid")


class Track(StrEnum):
    SME = "sme"
    DEVELOPER = "developer"
    SELF_HOSTED = "self_hosted"
    QA = "qa"
    CORE = "core"
    SECURITY = "security"


class Outcome(StrEnum):
    """How a cycle ended. Only COMMITTED lands a commit."""

    COMMITTED = "committed"
    NO_CONSENSUS = "no_consensus"
    NO_PROPOSALS = "no_proposals"
    REJECTED_BY_SCOPE = "rejected_by_scope"
    IMPLEMENTATION_FAILED = "implementation_failed"
    VERIFICATION_FAILED = "verification_failed"
    BASELINE_RED = "baseline_red"
    # An LLM call was not made because its worst case could cross the cycle's budget.
    BUDGET_EXHAUSTED = "budget_exhausted"
    BAD_INPUT = "bad_input"
    ERROR = "error"
    # The state machine ended the cycle before a gate decided: stop() was called, a custom
    # handler chose to finish, or recovery skipped the rest after a failed phase.
    ABANDONED = "abandoned"
    # Paused, not ended: the design waits for a person (`nomic approve|reject`, the
    # nomic_approve job). Nothing landed; the stored state resumes at IMPLEMENT.
    AWAITING_APPROVAL = "awaiting_approval"
    REJECTED_BY_HUMAN = "rejected_by_human"

    @property
    def is_failure(self) -> bool:
        """Outcomes that mean the loop itself could not run (the Dagster run fails)."""
        return self in (Outcome.BAD_INPUT, Outcome.ERROR)


class Phase(StrEnum):
    CONTEXT = "context"
    DEBATE = "debate"
    DESIGN = "design"
    IMPLEMENT = "implement"
    VERIFY = "verify"
    COMMIT = "commit"


class ConsensusRule(StrEnum):
    MAJORITY = "majority"  # strictly more than half of the voters
    TWO_THIRDS = "two_thirds"  # at least two thirds of the voters
    UNANIMOUS = "unanimous"  # every voter

    def threshold_met(self, votes_for_winner: int, voters: int) -> bool:
        if voters <= 0:
            return False
        if self is ConsensusRule.MAJORITY:
            return votes_for_winner * 2 > voters
        if self is ConsensusRule.TWO_THIRDS:
            return votes_for_winner * 3 >= voters * 2
        return votes_for_winner == voters


class Goal(Record):
    text: str
    track: Track = Track.DEVELOPER
    source: Literal["user", "default", "planner", "schedule"] = "default"


# ---------------------------------------------------------------- workspace


class Workspace(Record):
    """Where a cycle works: a git worktree of `source_repo`, outside the user's checkout."""

    cycle_id: str
    track: Track
    origin: str  # what the user named: a path, a URL, or "demo"
    source_repo: str  # the repository that receives the cycle branch
    worktree: str  # the cycle's own worktree (detached at base_sha until IMPLEMENT)
    branch: str  # nomic/<track>/<cycle_id>
    base_branch: str
    base_sha: str
    scratch_dir: str  # per-cycle scratch space (coverage files, tool output)


# ---------------------------------------------------------------- context


class Finding(Record):
    """One linter finding (ruff)."""

    path: str
    line: int
    code: str
    message: str
    fixable: bool = False


class Symbol(Record):
    kind: Literal["class", "function", "method"]
    name: str  # qualified inside the module: "Cart.total"
    signature: str  # "def total(self, discount: float = 0.0) -> float"
    line: int
    public: bool
    decorators: list[str] = Field(default_factory=list)


class ModuleInfo(Record):
    path: str  # repo-relative, posix
    module: str  # dotted import name, "" when not importable
    lines: int
    is_test: bool
    symbols: list[Symbol] = Field(default_factory=list)


class Marker(Record):
    path: str
    line: int
    kind: str  # TODO, FIXME, XXX, HACK
    text: str


class Churn(Record):
    path: str
    commits: int


class TestInventory(Record):
    __test__ = False  # not a pytest test class, despite the name
    command: str
    test_files: list[str] = Field(default_factory=list)
    test_functions: int = 0
    passed: bool | None = None  # None: not run
    collected: int | None = None
    exit_code: int | None = None
    duration_s: float = 0.0
    output_tail: str = ""


class CycleSummary(Record):
    """What the context phase shows agents about earlier cycles."""

    cycle_id: str
    outcome: Outcome
    goal: str
    winner: str | None = None
    kind: str | None = None
    files: list[str] = Field(default_factory=list)
    reason: str = ""


class RepoContext(Record):
    root: str  # the worktree the facts were read from
    base_sha: str
    files: list[str]
    modules: list[ModuleInfo]
    findings: list[Finding]
    tests: TestInventory
    churn: list[Churn]
    markers: list[Marker]
    recent_cycles: list[CycleSummary] = Field(default_factory=list)
    max_files: int = 5  # the scope limit, so agents propose changes that fit it
    size_chars: int = 0
    budget_chars: int = 0
    truncated: list[str] = Field(default_factory=list)  # which sections were cut to fit the budget

    def module(self, path: str) -> ModuleInfo | None:
        return next((m for m in self.modules if m.path == path), None)


# ---------------------------------------------------------------- debate


class Proposal(Record):
    id: str  # "<agent>:<kind>", unique within a debate; kept by revisions
    agent: str
    kind: str  # kind of improvement, e.g. "lint-fix", "add-tests", "remove-dead-code"
    title: str
    description: str
    files: list[str]
    evidence: list[str] = Field(default_factory=list)
    benefit: float = Field(ge=0.0, le=1.0)  # the proposer's own estimate
    risk: float = Field(ge=0.0, le=1.0)
    estimated_lines: int = Field(ge=0)
    # 0: as proposed; n: revised n times during the debate (the id stays, so votes stay
    # comparable across rounds). The note says what the last revision changed and why.
    revision: int = Field(default=0, ge=0)
    revision_note: str = ""


class Critique(Record):
    critic: str
    proposal_id: str
    criterion: str  # what the critic judges by: "benefit", "risk", "size", ...
    score: float = Field(ge=0.0, le=1.0)  # higher is better for the proposal
    stance: Literal["support", "neutral", "oppose"]
    comment: str
    round: int = 1  # the critique round (1..critique_rounds) it was given in
    revision: int = 0  # the revision of the proposal it judged


class Vote(Record):
    voter: str
    proposal_id: str
    confidence: float = Field(ge=0.0, le=1.0)
    round: int = 1  # 0: the vote-only round before critiques; n: after critique round n
    reason: str = ""


class ProposalRevision(Record):
    """A proposer revised its proposal in light of the critiques of it."""

    round: int
    proposal_id: str
    agent: str
    revision: int  # the new revision number
    changed: list[str]  # the fields that changed
    note: str = ""  # the proposer's own account: what it changed, answering which critique
    previous: Proposal
    revised: Proposal


class DebateRound(Record):
    """One ballot. Round 0 is the vote-only ballot before any critique (the counterfactual);
    round n follows critique round n and the revisions it prompted."""

    round: int
    votes: list[Vote]
    tally: dict[str, int]  # votes per proposal id
    weighted_tally: dict[str, float]  # summed confidence per proposal id
    leader: str | None  # most votes; ties go to the higher summed confidence, then the id
    flips: list[str] = Field(default_factory=list)  # voters whose choice changed from round n-1
    agreement: float = 0.0  # share of this round's voters backing the leader
    critiques: int = 0  # critiques given in this round
    revisions: list[ProposalRevision] = Field(default_factory=list)
    dropped: list[str] = Field(default_factory=list)  # agents that failed during this round


class JudgeDecision(Record):
    """What the judge (settings.judge) decided when the panel reached no consensus."""

    judge: str
    why: Literal["no_consensus", "tie"]  # tie: several proposals share the most votes
    candidates: list[str]  # the proposal ids it chose from
    choice: str | None = None  # None: the judge failed, the debate stays without consensus
    confidence: float = 0.0
    reason: str = ""
    error: str = ""


class Consensus(Record):
    rule: ConsensusRule
    reached: bool
    winner_id: str | None
    votes_for_winner: int
    voters: int
    tally: dict[str, int]
    # The vote-only counterfactual: the leader of round 0, before any critique. Stored
    # records and callers may still say `first_round_winner_id` (see the property below).
    vote_only_winner_id: str | None = Field(
        default=None,
        validation_alias=AliasChoices("vote_only_winner_id", "first_round_winner_id"),
    )
    # The proposal the debate settled on (the winner, else the final leader) differs from
    # the vote-only leader.
    changed_by_debate: bool
    vote_only_reached: bool = False  # round 0 alone would have met the rule
    weighted_tally: dict[str, float] = Field(default_factory=dict)  # final round, by confidence
    early_stopped_after: int | None = None  # the critique round after which the leader was stable
    judge: JudgeDecision | None = None
    reason: str = ""  # why no consensus, when it is not the rule (a lost quorum, the judge)

    @property
    def first_round_winner_id(self) -> str | None:
        return self.vote_only_winner_id


class DebateResult(Record):
    proposals: list[Proposal]  # every proposal in its final revision
    critiques: list[Critique]  # every round's
    # The vote-only round (round 0) and the final round; every round is in `rounds`.
    votes: list[Vote]
    consensus: Consensus
    agent_failures: dict[str, str] = Field(default_factory=dict)
    rounds: list[DebateRound] = Field(default_factory=list)

    @property
    def winner(self) -> Proposal | None:
        wid = self.consensus.winner_id
        return next((p for p in self.proposals if p.id == wid), None) if wid else None


# ---------------------------------------------------------------- design


class Design(Record):
    proposal_id: str
    agent: str
    kind: str
    title: str
    files: list[str]  # files the implementation will touch
    steps: list[str]
    test_plan: str
    risk: Literal["low", "medium", "high"]
    rationale: str


class ScopeDecision(Record):
    allowed: bool
    reasons: list[str] = Field(default_factory=list)
    protected_hits: list[str] = Field(default_factory=list)
    file_count: int = 0
    max_files: int = 0


# ---------------------------------------------------------------- implement


class FileChange(Record):
    path: str
    status: Literal["added", "modified", "deleted", "renamed", "type_changed"]
    added: int = 0
    removed: int = 0
    old_path: str | None = None  # for renames


class ChangeSet(Record):
    branch: str
    base_sha: str
    tree_sha: str  # the staged tree: what verify checked is exactly what commit records
    diff: str
    files: list[FileChange]
    lines_added: int
    lines_removed: int
    summary: str = ""  # the implementing agent's own account of what it did

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    @property
    def empty(self) -> bool:
        return not self.files


# ---------------------------------------------------------------- verify


class GateResult(Record):
    name: str
    passed: bool
    detail: str = ""


class VerificationReport(Record):
    passed: bool
    gates: list[GateResult]
    tests: TestInventory | None = None
    duration_s: float = 0.0

    @property
    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]


# ---------------------------------------------------------------- commit


class CommitResult(Record):
    sha: str
    branch: str
    message: str
    merged: bool = False
    merge_note: str = ""


# ---------------------------------------------------------------- the cycle


class CycleRecord(Record):
    """The stored account of one cycle, whatever its outcome."""

    cycle_id: str
    run_id: str | None = None
    track: Track
    goal: Goal
    origin: str
    repo: str
    base_branch: str | None = None
    base_sha: str | None = None
    outcome: Outcome
    reason: str = ""
    agents: list[str]
    winner: str | None = None  # winning proposal id
    winner_agent: str | None = None
    winner_kind: str | None = None
    first_round_winner: str | None = None
    changed_by_debate: bool = False
    proposals: int = 0
    files: list[str] = Field(default_factory=list)
    lines_added: int = 0
    lines_removed: int = 0
    tests_passed: bool | None = None
    tests_collected: int | None = None
    failed_gates: list[str] = Field(default_factory=list)
    branch: str | None = None
    commit_sha: str | None = None
    merged: bool = False
    cost_usd: float = 0.0  # what the cycle's LLM calls cost (0 for the offline agents)
    tokens: int = 0
    llm_calls: int = 0
    cost_by_phase: dict[str, float] = Field(default_factory=dict)  # USD per phase
    cost_by_agent: dict[str, float] = Field(default_factory=dict)  # USD per agent
    tokens_by_phase: dict[str, int] = Field(default_factory=dict)
    tokens_by_agent: dict[str, int] = Field(default_factory=dict)
    phase_durations: dict[str, float] = Field(default_factory=dict)
    cassette: str | None = None  # the cassette of its LLM calls (agents/cassette.py), if any
    started_at: datetime
    finished_at: datetime

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def summary(self) -> CycleSummary:
        return CycleSummary(
            cycle_id=self.cycle_id,
            outcome=self.outcome,
            goal=self.goal.text,
            winner=self.winner,
            kind=self.winner_kind,
            files=self.files,
            reason=self.reason,
        )
