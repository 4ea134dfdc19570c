"""The phase table's timeouts and retries, held in Dagster runs.

What Dagster 1.13 offers, and what it does not:
- `RetryPolicy(max_retries=...)` on an op re-runs its step when the op raises (a
  `Failure(allow_retries=False)` bypasses it). Each phase op gets the table's retries.
- `dagster/max_runtime` is a *run* tag: the daemon's run monitoring (`run_monitoring:
  enabled: true` in dagster.yaml) terminates a run that has been going longer. There is no
  per-op limit, and an op tag of that name does nothing. So the cycle jobs carry it with the
  worst case of their phases (every attempt of every phase times out), and each phase op
  enforces its own timeout with `phase_deadline`.

A retry must never run a phase again once the phase has produced its result: that would
record (or commit) the cycle twice. So only an unfinished attempt is retried: a timeout, or
an exception before the phase returned. Once `run_phase` has returned, a failure of the
step is final (`Failure(allow_retries=False)`), and a retry that finds an output of an
earlier attempt in the run's event log (the IO manager failed to store it) does not run the
phase again: the op records the cycle as an `error` and fails for good (`lost_output`). Nor
does a retry start in a run that is being stopped (Dagster retries interrupted steps too).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg

from nomic_dagster.core.events import EventType, bus
from nomic_dagster.core.phases import PhaseSpec, worst_case_s
from nomic_dagster.core.records import Outcome, Phase
from nomic_dagster.core.state import CycleState

MAX_RUNTIME_TAG = dg.MAX_RUNTIME_SECONDS_TAG  # "dagster/max_runtime"
TIMEOUT_TAG = "nomic/timeout_s"  # the phase's own limit, enforced by its op


class PhaseTimedOut(BaseException):
    """A phase attempt ran past its limit. A BaseException, so that `run_phase` (which turns
    every Exception into an `error` outcome) lets it through to the op, which retries."""


def retry_policy(spec: PhaseSpec) -> dg.RetryPolicy | None:
    return dg.RetryPolicy(max_retries=spec.max_retries) if spec.max_retries else None


def op_tags(spec: PhaseSpec, phase_tag: str) -> dict[str, str]:
    return {phase_tag: spec.phase.value, TIMEOUT_TAG: f"{spec.timeout_s:g}"}


def run_limit_tags(phases: tuple[Phase, ...] | None = None) -> dict[str, str]:
    """The run tag that bounds a job running `phases` (default: all), for run monitoring."""
    return {MAX_RUNTIME_TAG: f"{worst_case_s(phases):.0f}"}


@contextmanager
def phase_deadline(spec: PhaseSpec) -> Iterator[Callable[[], None]]:
    """Raise PhaseTimedOut in this thread once `spec.timeout_s` has passed. Yields `disarm`,
    to call the moment the phase returns. Only the main thread can take signals: elsewhere
    (and for a timeout of 0) the attempt has no limit but the run's `dagster/max_runtime`."""
    armed = [True]

    def disarm() -> None:
        armed[0] = False

    if not spec.timeout_s or threading.current_thread() is not threading.main_thread():
        yield disarm
        return

    def on_alarm(_signum: int, _frame: Any) -> None:
        if armed[0]:
            armed[0] = False
            raise PhaseTimedOut(f"{spec.phase.value} exceeded its limit of {spec.timeout_s:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, spec.timeout_s)
    try:
        yield disarm
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


STOPPING = {
    dg.DagsterRunStatus.CANCELING,
    dg.DagsterRunStatus.CANCELED,
    dg.DagsterRunStatus.FAILURE,
}


def refuse_retry_of_a_stopping_run(context: dg.OpExecutionContext) -> None:
    """Dagster's RetryPolicy also retries a step interrupted because its run is being
    stopped (run monitoring past `dagster/max_runtime`, a person's terminate): that attempt
    would start the phase (and its test suite) again in a run that is already over."""
    if context.retry_number == 0:
        return
    run = context.instance.get_run_by_id(context.run_id)
    if run is not None and run.status in STOPPING:
        raise dg.Failure(
            description=f"run {context.run_id} is {run.status.value.lower()}: attempt "
            f"{context.retry_number + 1} of this step is not started",
            allow_retries=False,
        )


def finished_earlier(context: dg.OpExecutionContext) -> bool:
    """Whether an earlier attempt of this step, in this run, already yielded its output."""
    if context.retry_number == 0:
        return False
    step_key = context.get_step_execution_context().step.key
    outputs = context.instance.all_logs(context.run_id, of_type=dg.DagsterEventType.STEP_OUTPUT)
    return any(e.step_key == step_key for e in outputs)


def lost_output(phase: Phase, state: CycleState) -> CycleState:
    """`state` ended because the phase's earlier attempt finished but its output was lost."""
    return state.end(
        Outcome.ERROR,
        f"{phase.value} finished in an earlier attempt of this step, whose output could not "
        "be stored; it is not run again (that could record or land the cycle twice)",
        phase,
    )


def run_limited(
    context: dg.OpExecutionContext,
    spec: PhaseSpec,
    state: CycleState,
    run: Callable[[CycleState], CycleState],
) -> CycleState:
    """`run(state)` under the phase's limit. A timeout with retries left fails the attempt
    (the op's RetryPolicy runs it again); the last one ends the cycle with `error`."""
    phase = spec.phase
    try:
        with phase_deadline(spec) as disarm:
            new = run(state)
            disarm()
    except PhaseTimedOut as exc:
        attempt = context.retry_number + 1
        bus.emit(
            EventType.TIMEOUT,
            state.cycle_id,
            phase=phase.value,
            timeout_s=spec.timeout_s,
            attempt=attempt,
        )
        if context.retry_number < spec.max_retries:
            context.log.warning(f"cycle {state.cycle_id}: {exc} (attempt {attempt}): retrying")
            raise dg.Failure(
                description=f"{exc} (attempt {attempt} of {spec.max_retries + 1})",
                allow_retries=True,
            ) from None
        tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
        return state.end(Outcome.ERROR, f"{exc} ({tries})", phase)
    return new


@contextmanager
def final_step(what: str) -> Iterator[None]:
    """Whatever fails in here fails the step for good: the phase has already run."""
    try:
        yield
    except dg.Failure as failure:
        if not failure.allow_retries:
            raise
        raise dg.Failure(
            description=failure.description, metadata=failure.metadata, allow_retries=False
        ) from failure
    except Exception as exc:
        raise dg.Failure(
            description=f"{what} failed after the phase ran (not retried, so the cycle is not "
            f"recorded twice): {type(exc).__name__}: {exc}"[:4000],
            allow_retries=False,
        ) from exc
