"""The phase table: what each of the six phases of a cycle is, in one place.

Every driver reads it: the state machine's `STATE_CONFIG` takes each phase state's
timeout, retries and criticality from here (aragora-nomic §2.3); the Dagster op factory
takes each op's description, pool (phases that call models share `nomic_llm`), retry
policy and time limit; the approval flow resumes an approved cycle at the phases marked
`resumes_after_approval`; `nomic phases` prints it. The step functions themselves live in
`cycle.steps.STEPS`, keyed by this table and checked against it when that module loads.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from nomic_dagster.core.records import Outcome, Phase, Record


class PhaseSpec(Record):
    """One phase: its limits and how the drivers treat it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phase: Phase
    summary: str = Field(description="one line, for tables and the state machine")
    description: str = Field(description="what the phase does, as the Dagster UI shows it")
    timeout_s: float = Field(ge=0, description="the limit of one attempt; 0: none")
    max_retries: int = Field(ge=0, description="attempts after the first one")
    critical: bool = Field(description="an exhausted failure fails the cycle (state machine)")
    calls_models: bool = Field(description="its agents may call a model (the nomic_llm pool)")
    reexecutable: bool = Field(
        description="a cycle that fails here (REEXECUTABLE_OUTCOMES) fails its Dagster step, "
        "so 're-execute from failure' runs this phase again on its stored input"
    )
    resumes_after_approval: bool = Field(
        description="an approved design runs this phase (context, debate and design are not "
        "run again)"
    )

    @property
    def worst_case_s(self) -> float:
        """The longest the phase may run within its limits: every attempt times out."""
        return self.timeout_s * (1 + self.max_retries)


PHASES: dict[Phase, PhaseSpec] = {
    spec.phase: spec
    for spec in (
        PhaseSpec(
            phase=Phase.CONTEXT,
            summary="read the target and run its tests once",
            description="Resolve and validate the target, add the cycle's worktree, read the "
            "repository's facts and run its tests once (a red baseline ends the cycle: nothing "
            "could be verified).",
            timeout_s=1200,
            max_retries=2,
            critical=False,
            calls_models=False,
            reexecutable=False,
            resumes_after_approval=False,
        ),
        PhaseSpec(
            phase=Phase.DEBATE,
            summary="propose, critique and vote",
            description="Every agent proposes; a vote-only ballot is recorded as the "
            "counterfactual; then up to critique_rounds rounds of critiques, revisions and votes "
            "(early stop when the leader is stable); the consensus rule (and an optional judge) "
            "picks the winner or ends the cycle with no_consensus.",
            timeout_s=3600,
            max_retries=1,
            critical=True,
            calls_models=True,
            reexecutable=False,
            resumes_after_approval=False,
        ),
        PhaseSpec(
            phase=Phase.DESIGN,
            summary="the winner designs its change; scope check",
            description="The winner designs its proposal; the scope limiter rejects protected "
            "paths and designs over the file budget (rejected_by_scope).",
            timeout_s=1800,
            max_retries=2,
            critical=False,
            calls_models=True,
            reexecutable=False,
            resumes_after_approval=False,
        ),
        PhaseSpec(
            phase=Phase.IMPLEMENT,
            summary="the winner edits the worktree",
            description="The winner edits the cycle's worktree on branch nomic/<track>/<cycle_id>.",
            timeout_s=2400,
            max_retries=1,
            critical=True,
            calls_models=True,
            reexecutable=True,
            resumes_after_approval=True,
        ),
        PhaseSpec(
            phase=Phase.VERIFY,
            summary="gates on the final diff, tests last",
            description="Gates on the final diff: compiles, tests pass, no new ruff findings, "
            "no protected path, no deleted or skipped test, no weakened assertion, nothing "
            "outside the worktree.",
            timeout_s=1800,
            max_retries=3,
            critical=False,
            calls_models=False,
            reexecutable=True,
            resumes_after_approval=True,
        ),
        PhaseSpec(
            phase=Phase.COMMIT,
            summary="commit the verified tree",
            description="Commit the verified tree on the cycle branch, with provenance trailers.",
            timeout_s=300,
            max_retries=1,
            critical=True,
            calls_models=False,
            reexecutable=True,
            resumes_after_approval=True,
        ),
    )
}

# The outcomes a re-executable phase fails its step with (Dagster "re-execute from failure",
# or a resumed approval): the phase's inputs are stored, so it runs again without the
# others, and its new record replaces the failed one.
REEXECUTABLE_OUTCOMES = frozenset(
    {Outcome.IMPLEMENTATION_FAILED, Outcome.VERIFICATION_FAILED, Outcome.ERROR}
)


def resume_phases() -> tuple[Phase, ...]:
    """The phases an approved cycle runs, in order."""
    return tuple(p for p, spec in PHASES.items() if spec.resumes_after_approval)


def worst_case_s(phases: tuple[Phase, ...] | None = None) -> float:
    """The longest `phases` (default: all) may run within their limits, one after another."""
    return sum(PHASES[p].worst_case_s for p in (phases if phases is not None else tuple(PHASES)))


def phases_table() -> str:
    """The table as `nomic phases` prints it."""
    columns = ("PHASE", "TIMEOUT", "RETRIES", "CRITICAL", "MODELS", "RE-EXEC", "RESUMES", "WHAT")
    rows = [
        (
            p.value,
            f"{spec.timeout_s:g}s" if spec.timeout_s else "none",
            str(spec.max_retries),
            *("yes" if flag else "-" for flag in _flags(spec)),
            spec.summary,
        )
        for p, spec in PHASES.items()
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _flags(spec: PhaseSpec) -> tuple[bool, ...]:
    return (spec.critical, spec.calls_models, spec.reexecutable, spec.resumes_after_approval)


def _check(table: dict[Phase, PhaseSpec]) -> None:
    """One spec per phase, in the cycle's order, each under its own key; resumed phases are
    re-executable (a resumed cycle that fails must be re-executable like any other)."""
    if list(table) != list(Phase):
        raise ValueError(f"the phase table must list {list(Phase)} in order, not {list(table)}")
    for key, spec in table.items():
        if spec.phase is not key:
            raise ValueError(f"PHASES[{key.value}] describes {spec.phase.value}")
        if spec.resumes_after_approval and not spec.reexecutable:
            raise ValueError(f"{key.value} resumes after approval but is not re-executable")


_check(PHASES)
