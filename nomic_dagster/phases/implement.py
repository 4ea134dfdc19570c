"""Phase 3 — implement: the winning agent edits its own worktree on the cycle branch."""

from __future__ import annotations

from pathlib import Path

from nomic_dagster.agents import Agent, WorkArea
from nomic_dagster.agents.replay import ReplayMismatch
from nomic_dagster.core.errors import BudgetExhausted, ImplementationFailed
from nomic_dagster.core.events import report_progress
from nomic_dagster.core.records import ChangeSet, Design, RepoContext, Workspace
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.infra.breakers import CircuitOpenError, guarded_call
from nomic_dagster.infra.git import collect_changes, start_branch


def implement_design(
    design: Design,
    agent: Agent,
    workspace: Workspace,
    context: RepoContext,
    settings: CycleSettings,
) -> ChangeSet:
    start_branch(workspace)
    area = WorkArea(
        worktree=Path(workspace.worktree),
        scratch=Path(workspace.scratch_dir),
        settings=settings,
        context=context,
    )
    report_progress(f"asking {agent.name} to implement {design.title!r}"[:120])
    try:
        # ImplementationFailed is the agent answering "cannot be done": not a fault of the agent
        summary = guarded_call(
            agent.name, lambda: agent.implement(design, area), benign=(ImplementationFailed,)
        )
    except CircuitOpenError as exc:
        raise ImplementationFailed(f"{agent.name} was not called: {exc}") from exc
    except (ImplementationFailed, BudgetExhausted, ReplayMismatch):
        raise
    except Exception as exc:
        raise ImplementationFailed(f"{agent.name} crashed: {type(exc).__name__}: {exc}") from exc
    changes = collect_changes(workspace, summary=summary)
    if changes.empty:
        raise ImplementationFailed(f"{agent.name} made no change to the worktree")
    return changes
