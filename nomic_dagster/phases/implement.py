"""Phase 3 — implement: the winning agent edits its own worktree on the cycle branch."""

from __future__ import annotations

from pathlib import Path

from nomic_dagster.agents import Agent, WorkArea
from nomic_dagster.core.errors import AgentFault, AgentNotCalled, ImplementationFailed
from nomic_dagster.core.events import report_progress
from nomic_dagster.core.records import ChangeSet, Design, RepoContext, Workspace
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.infra.breakers import BreakerRegistry, call_agent
from nomic_dagster.infra.git import collect_changes, start_branch


def implement_design(
    design: Design,
    agent: Agent,
    workspace: Workspace,
    context: RepoContext,
    settings: CycleSettings,
    breakers: BreakerRegistry | None = None,
) -> ChangeSet:
    start_branch(workspace)
    area = WorkArea(
        worktree=Path(workspace.worktree),
        scratch=Path(workspace.scratch_dir),
        settings=settings,
        context=context,
    )
    breakers = breakers if breakers is not None else BreakerRegistry()
    report_progress(f"asking {agent.name} to implement {design.title!r}"[:120])
    try:
        # ImplementationFailed is the agent answering "cannot be done": it ends the cycle
        # and does not count against the agent's breaker
        summary = call_agent(
            breakers, agent.name, "implement", lambda: agent.implement(design, area)
        )
    except AgentNotCalled as fault:
        raise ImplementationFailed(f"{agent.name} was not called: {fault.detail}") from fault
    except AgentFault as fault:
        raise ImplementationFailed(f"{agent.name} crashed: {fault.detail}") from fault
    changes = collect_changes(workspace, summary=summary)
    if changes.empty:
        raise ImplementationFailed(f"{agent.name} made no change to the worktree")
    return changes
