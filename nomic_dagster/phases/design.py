"""Phase 2 — design: the winning agent designs its proposal; the scope limiter judges it.

The scope limiter looks only at the design's file list (normalised paths matched against
glob rules), never at free text, so "os.environ" in a rationale cannot trip ".env". The
same rules are applied again to the final diff in verify: a design is a promise, the
diff is what counts.
"""

from __future__ import annotations

from nomic_dagster.agents import Agent
from nomic_dagster.core import pathrules
from nomic_dagster.core.errors import AgentError
from nomic_dagster.core.events import report_progress
from nomic_dagster.core.records import DebateResult, Design, RepoContext, ScopeDecision
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.infra.breakers import BreakerRegistry, call_agent


def winning_agent(debate: DebateResult, panel: list[Agent]) -> Agent:
    winner = debate.winner
    if winner is None:
        raise ValueError("the debate has no winner")
    agent = next((a for a in panel if a.name == winner.agent), None)
    if agent is None:
        raise AgentError(winner.agent, "design", "the winning agent is not in the panel")
    return agent


def design_change(
    debate: DebateResult,
    panel: list[Agent],
    context: RepoContext,
    settings: CycleSettings,
    designer: Agent | None = None,
    breakers: BreakerRegistry | None = None,
) -> Design:
    """The design of the winning proposal, by `designer` (the `designer` setting) or else by
    the agent that proposed it."""
    proposal = debate.winner
    agent = designer or winning_agent(debate, panel)
    assert proposal is not None
    report_progress(f"asking {agent.name} to design {proposal.id}")
    # An agent's failure (AgentFault) ends the cycle implementation_failed in run_phase:
    # without a design there is nothing to implement.
    design = call_agent(
        breakers if breakers is not None else BreakerRegistry(),
        agent.name,
        "design",
        lambda: agent.design(proposal, context, settings),
    )
    if design.proposal_id != proposal.id:
        raise AgentError(
            agent.name, "design", f"designed {design.proposal_id!r}, not {proposal.id!r}"
        )
    return design


def check_scope(design: Design, settings: CycleSettings) -> ScopeDecision:
    reasons: list[str] = []
    hits: list[str] = []
    files: set[str] = set()
    for raw in design.files:
        try:
            path = pathrules.normalize(raw)
        except ValueError as exc:
            reasons.append(f"{exc}")
            continue
        files.add(path)
        rule = pathrules.first_match(path, settings.protected_paths)
        if rule is not None:
            hits.append(path)
            reasons.append(f"{path} is protected (rule {rule!r})")
    if not files and not reasons:
        reasons.append("the design names no files")
    if len(files) > settings.max_files:
        reasons.append(
            f"the design touches {len(files)} files, more than max_files={settings.max_files}"
        )
    return ScopeDecision(
        allowed=not reasons,
        reasons=reasons,
        protected_hits=hits,
        file_count=len(files),
        max_files=settings.max_files,
    )
