"""The nomic state machine: one cycle as states, with timeouts, retries, recovery,
checkpoints and resume — a thin driver over the same steps the Dagster ops run.

    sm = create_nomic_state_machine(checkpoint_dir="/tmp/nomic")
    record = await sm.run(goal="Improve test coverage in the parser")

Each phase state (CONTEXT … COMMIT) runs `cycle.run_phase(phase, state, runtime)` — the very step
function of the Dagster op — in a child process of its own (a fresh process group; the
`CycleState` crosses as JSON, the phase's events are forwarded to this process's bus).
A phase that outlives its timeout is killed with every process it started, and the
timeout counts as a failed attempt. The machine never runs a second implementation of
a phase.

What the original got wrong and this machine does not (aragora-nomic §26):

- W1: a phase's decision is honoured. When `run_phase` ends the cycle (no consensus, a
  scope rejection, a red baseline, failed verification, …) the machine goes to COMPLETED
  (or FAILED for bad input), never on to the next phase; a custom handler's chosen next
  state is honoured too, but only along `VALID_TRANSITIONS` (anything else raises
  `TransitionError`), and nothing enters COMMIT without a passed verification.
- W2: recovery always ends in a legal state: decisions are mapped onto legal transitions
  (a failed COMMIT is retried through VERIFY; a skipped VERIFY ends the cycle), the cycle
  is driven by a loop (no nested awaits, no recursion), and the number of recoveries and
  transitions per cycle is bounded.
- W3: timeouts count toward the retry budget, and a timed-out phase really stops.

A checkpoint is written after every transition (and when a phase finished), so
`resume_from_checkpoint` continues a killed cycle without repeating what a finished
phase did: its result is in the checkpoint, and the git side is idempotent (a stale
worktree is replaced, a half-done IMPLEMENT restarts from a clean worktree on the branch,
a commit that already landed is adopted, the history is written once).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.events import EventType, NomicEvent, bus, flush_spans
from nomic_dagster.core.records import CycleRecord, Outcome, Phase, new_cycle_id
from nomic_dagster.core.settings import CycleSettings, state_dir
from nomic_dagster.core.state import CycleState
from nomic_dagster.core.states import (
    HAPPY_NEXT,
    PHASE_STATES,
    STATE_CONFIG,
    VALID_TRANSITIONS,
    NomicState,
    StateMetadata,
    TransitionError,
    get_state_config,
    is_valid_transition,
    merge_state_config,
)
from nomic_dagster.cycle.finish import finish_cycle
from nomic_dagster.cycle.runtime import CycleRuntime
from nomic_dagster.cycle.steps import prepare_workspace, run_phase, start_cycle
from nomic_dagster.drivers.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointManager,
    FailureNote,
    validate_id,
)
from nomic_dagster.drivers.recovery import RecoveryAction, RecoveryDecision, RecoveryManager
from nomic_dagster.infra import metrics
from nomic_dagster.infra.git import (
    choose_target,
    close_workspace,
    current_repository,
)

log = logging.getLogger("nomic_dagster.drivers.state_machine")

S = NomicState
HandlerResult = NomicState | str | CycleState | tuple[NomicState | str, CycleState]
Handler = Callable[[CycleState], HandlerResult | Awaitable[HandlerResult]]
TransitionCallback = Callable[..., Any]
ErrorCallback = Callable[[NomicState, BaseException | str], Any]

POLL_S = 0.02


# ---------------------------------------------------------------- the target

# The git repository containing the current directory (BadInput if none): the target when
# neither `repo`, the settings nor $NOMIC_REPO name one (infra.git.choose_target).
default_repo = current_repository


# ---------------------------------------------------------------- processes


def _children_of() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 2:
            kids[int(fields[1])].append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc; [] elsewhere)."""
    if not os.path.isdir("/proc"):
        return []
    kids = _children_of()
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in kids.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_process_tree(pid: int, include_root: bool = True) -> list[int]:
    """SIGKILL `pid` (optionally) and every process below it, each in whatever process group
    or session it put itself (test runners start their own). Frozen first, so nothing forks
    while the tree is read. Returns the pids it signalled."""
    own_group = os.getpgrp()
    roots = [pid] if include_root else []
    for p in roots + descendants(pid):
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGSTOP)
    tree = roots + descendants(pid)
    for p in tree:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGSTOP)
    groups: set[int] = set()
    for p in tree:
        with contextlib.suppress(OSError):
            group = os.getpgid(p)
            if group != own_group:
                groups.add(group)
    for group in groups:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)
    for p in tree:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    return tree


def _die_with_parent(parent_pid: int) -> None:
    """In a phase's child: when the machine's process dies (SIGKILL included), take every
    process this phase started down too, then exit."""

    def bail(*_: object) -> None:
        with contextlib.suppress(Exception):
            kill_process_tree(os.getpid(), include_root=False)
        os._exit(137)

    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGTERM, bail)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        bail()

    def watch() -> None:  # the portable backstop of PR_SET_PDEATHSIG
        while True:
            time.sleep(0.25)
            if os.getppid() != parent_pid:
                bail()

    threading.Thread(target=watch, name="nomic-parent-watch", daemon=True).start()


def _phase_child(
    phase_value: str,
    state_json: str,
    prepare: bool,
    runtime: CycleRuntime,
    conn: Any,
    parent_pid: int,
    close_fds: list[int],
) -> None:
    """Entry point of a phase's child process: run the step, send back the new state and
    the breakers (the machine's runtime, forked into this process, must learn what the
    phase's agent calls did to them: they span phases and cycles)."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    for fd in close_fds:  # e.g. the cycle lock: only the machine's process holds it
        with contextlib.suppress(OSError):
            os.close(fd)
    _die_with_parent(parent_pid)
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    bus.clear()
    bus.subscribe(lambda e: send(("event", e.model_dump_json())))
    try:
        state = CycleState.model_validate_json(state_json)
        phase = Phase(phase_value)
        if prepare:
            prepare_workspace(phase, state)
        new = run_phase(phase, state, runtime)
        send(("result", new.model_dump_json(), runtime.breakers.snapshot()))
    except BaseException as exc:
        trace = traceback.format_exc()
        send(("crash", f"{type(exc).__name__}: {exc}", trace, runtime.breakers.snapshot()))
    finally:
        conn.close()
        flush_spans()  # this process exits by os._exit: its phase span would be lost


def _mp_context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


async def _join(proc: Any, seconds: float) -> bool:
    """Wait (without blocking the event loop) for a child process to exit and reap it."""
    deadline = time.monotonic() + seconds
    while proc.is_alive() and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
    if proc.is_alive():
        return False
    proc.join()
    return True


@dataclass
class _Attempt:
    """What one run of a state produced."""

    kind: Literal["ok", "timeout", "crash", "died", "stopped"]
    cycle: CycleState | None = None
    choice: NomicState | None = None  # a custom handler's chosen next state
    error: str = ""
    error_type: str | None = None


# ---------------------------------------------------------------- the machine


class NomicStateMachine:
    """Drives cycles through the states of `states.VALID_TRANSITIONS`.

    Args:
        checkpoint_dir: where checkpoints go (default: STATE_DIR/checkpoints).
        enable_checkpoints: write a checkpoint after every transition (needed to resume).
        enable_metrics: make sure the Prometheus listener is on the bus.
        settings: the cycle settings `run()` starts from (repo, agents, tests, ...).
        state_config: per-state overrides of STATE_CONFIG, e.g. {"debate": {"timeout_seconds": 60}}.
        recovery_manager: what decides after a failure (default `RecoveryManager()` over the
            runtime's breakers).
        runtime: the backends, breakers and state folder its cycles run with (default: one
            for `settings`, backends from the environment).
        max_retry_delay_s: cap on the backoff a recovery decision asks for.
        max_recoveries: recoveries per cycle before the cycle fails whatever the decision.
        max_transitions: transitions per cycle before it fails (guards handler loops).
    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        enable_checkpoints: bool = True,
        enable_metrics: bool = True,
        settings: CycleSettings | None = None,
        *,
        state_config: Mapping[object, StateMetadata | Mapping[str, Any]] | None = None,
        recovery_manager: Any | None = None,
        max_retry_delay_s: float = 60.0,
        max_recoveries: int = 12,
        max_transitions: int = 100,
        runtime: CycleRuntime | None = None,
    ) -> None:
        self.settings = settings or CycleSettings()
        # What every cycle of this machine runs with (backends, breakers, state folder).
        self.runtime = runtime if runtime is not None else CycleRuntime.for_settings(self.settings)
        self.enable_checkpoints = enable_checkpoints
        self.enable_metrics = enable_metrics
        self.config: dict[NomicState, StateMetadata] = merge_state_config(state_config)
        self.recovery = (
            recovery_manager
            if recovery_manager is not None
            else RecoveryManager(breakers=self.runtime.breakers)
        )
        self.max_retry_delay_s = max_retry_delay_s
        self.max_recoveries = max_recoveries
        self.max_transitions = max_transitions
        folder = (
            Path(checkpoint_dir) if checkpoint_dir else state_dir(self.settings) / "checkpoints"
        )
        self.checkpoints = CheckpointManager(folder)
        if enable_checkpoints:
            self.checkpoints.ensure_writable()
        if enable_metrics:
            metrics.install()

        self._handlers: dict[NomicState, Handler] = {}
        self._transition_callbacks: list[TransitionCallback] = []
        self._error_callbacks: list[ErrorCallback] = []
        self._total_cycles = 0
        self._successful_cycles = 0
        self._failed_cycles = 0
        self._task: asyncio.Task[CycleRecord | None] | None = None
        self._lock_fd: int | None = None
        self._child: Any = None
        self._reset_cycle_fields()

    def _reset_cycle_fields(self) -> None:
        self._state = S.IDLE
        self._previous: NomicState | None = None
        self._resume_to: NomicState | None = None
        self._closing_to: NomicState | None = None
        self._phase_complete = False
        self._cycle: CycleState | None = None
        self._record: CycleRecord | None = None
        self._failure: FailureNote | None = None
        self._errors: list[FailureNote] = []
        self._retry_counts: dict[str, int] = {}
        self._recoveries = 0
        self._transitions = 0
        self._resumes = 0
        self._state_durations: dict[str, float] = {}
        self._entered_at = time.monotonic()
        self._events: list[NomicEvent] = []
        self._rerun: set[NomicState] = set()
        self._pause_requested: str | None = None
        self._stop_requested: str | None = None
        self._running = False

    # ------------------------------------------------------------ public API

    @property
    def current_state(self) -> NomicState:
        return self._state

    @property
    def previous_state(self) -> NomicState | None:
        return self._previous

    @property
    def cycle_id(self) -> str | None:
        return self._cycle.cycle_id if self._cycle else None

    @property
    def running(self) -> bool:
        return self._running

    @property
    def cycle_state(self) -> CycleState | None:
        return self._cycle

    @property
    def record(self) -> CycleRecord | None:
        return self._record

    @property
    def events(self) -> list[NomicEvent]:
        """The current cycle's event log (the audit trail kept in its checkpoint)."""
        return list(self._events)

    def register_handler(self, state: object, handler: Handler) -> None:
        """Run `handler(cycle_state)` instead of the built-in step for a phase state.

        It returns the next state (NomicState or its name), a new CycleState (the machine
        then decides as for a built-in step: an ended state ends the cycle), or both as
        `(next_state, cycle_state)`. The choice is honoured along VALID_TRANSITIONS only.
        Sync handlers run in a worker thread, async ones in this event loop; both run in
        this process (a timed-out async handler is cancelled; a sync one cannot be killed,
        so keep long work in the built-in steps, which run in a killable child process).
        """
        parsed = NomicState.parse(state)
        if not parsed.is_phase:
            phases = ", ".join(s.name for s in PHASE_STATES)
            raise ValueError(
                f"handlers replace a phase's step; {parsed.name} is not a phase (use one of "
                f"{phases}; recovery decisions come from recovery_manager=)"
            )
        if not callable(handler):
            raise TypeError(f"the handler for {parsed.name} is not callable: {handler!r}")
        self._handlers[parsed] = handler

    def on_transition(self, callback: TransitionCallback) -> None:
        """`callback(from_state, to_state, event)` — or, when it takes five arguments,
        `(from_state, to_state, event, duration_s, cycle_id)` — after every transition.
        Sync or async; an exception is logged and never breaks the cycle."""
        self._transition_callbacks.append(callback)

    def on_error(self, callback: ErrorCallback) -> None:
        """`callback(state, error)` once a state's failure is not retried any more."""
        self._error_callbacks.append(callback)

    def get_metrics(self) -> dict[str, Any]:
        done = self._successful_cycles + self._failed_cycles
        return {
            "current_state": self._state.value,
            "previous_state": self._previous.value if self._previous else None,
            "cycle_id": self.cycle_id,
            "running": self._running,
            "total_cycles": self._total_cycles,
            "successful_cycles": self._successful_cycles,
            "failed_cycles": self._failed_cycles,
            "success_rate": self._successful_cycles / done if done else 0.0,
            "event_count": len(self._events),
            "error_count": len(self._errors),
            "retry_counts": dict(self._retry_counts),
            "recoveries": self._recoveries,
            "transitions": self._transitions,
            "state_durations": dict(self._state_durations),
        }

    async def run(
        self,
        goal: str | None = None,
        *,
        repo: str | os.PathLike[str] | None = None,
        settings: CycleSettings | None = None,
        cycle_id: str | None = None,
        run_id: str | None = None,
        **overrides: Any,
    ) -> CycleRecord | None:
        """Run one whole cycle and return its record (None if it paused; see resume()).

        The target is `repo`, else the settings' repo, else $NOMIC_REPO, else the git
        repository the current directory is in (`infra.git.choose_target`); a relative
        path is made absolute against the current directory. `overrides` are CycleSettings fields.
        """
        if self._running:
            raise TransitionError(self._state, S.CONTEXT, f"cycle {self.cycle_id} is still running")
        if self._state is S.PAUSED:
            raise TransitionError(
                S.PAUSED,
                S.CONTEXT,
                f"cycle {self.cycle_id} is paused: resume() it, or stop() it first",
            )
        chosen = self._settings_for(goal, repo, settings, overrides)
        cid = validate_id(cycle_id) if cycle_id else new_cycle_id()
        self._new_cycle_fields()
        return await self._session(cid, lambda: self._begin(chosen, cid, run_id))

    async def start(self, goal: str | None = None, **kwargs: Any) -> str | None:
        """Start a cycle in the background (see wait()); a no-op while one is running."""
        if self._running or (self._task is not None and not self._task.done()):
            log.warning("start() ignored: cycle %s is already running", self.cycle_id)
            return self.cycle_id
        cid = kwargs.pop("cycle_id", None) or new_cycle_id()
        self._task = asyncio.ensure_future(self.run(goal, cycle_id=cid, **kwargs))
        await asyncio.sleep(0)
        return cid

    async def wait(self) -> CycleRecord | None:
        """The result of the cycle start() began."""
        if self._task is None:
            raise TransitionError(self._state, self._state, "no cycle was started with start()")
        return await self._task

    async def pause(self, reason: str = "paused by user") -> None:
        """Pause at the next phase boundary (the running phase finishes first); run() then
        returns None and the checkpoint says PAUSED. Continue with resume()."""
        if not self._running:
            raise TransitionError(
                self._state, S.PAUSED, "only a running cycle can be paused (nothing is running)"
            )
        self._pause_requested = reason or "paused"

    async def resume(self) -> CycleRecord | None:
        """Continue a cycle this machine paused; returns its record (None if it pauses again)."""
        if self._running:
            raise TransitionError(self._state, self._state, "the cycle is running, not paused")
        if self._state is not S.PAUSED or self._cycle is None:
            raise TransitionError(
                self._state, S.CONTEXT, "resume() continues a paused cycle; none is paused"
            )
        return await self._session(self._cycle.cycle_id, self._leave_pause)

    async def stop(self, reason: str = "stopped by user") -> None:
        """Stop the cycle: a running phase is killed, the cycle ends FAILED (outcome
        abandoned) and its worktree is removed. A paused cycle ends too (PAUSED -> IDLE:
        the table has no PAUSED -> FAILED). Nothing happens when no cycle is active."""
        if self._running:
            self._stop_requested = reason or "stopped"
            return
        if self._state is S.PAUSED and self._cycle is not None:
            cycle = self._cycle

            async def finish() -> CycleRecord | None:
                ended = self._abandon(cycle, f"stopped while paused: {reason}", S.PAUSED)
                self._closing_to = S.IDLE
                await self._end(S.IDLE, ended)
                return self._record

            await self._session(cycle.cycle_id, finish)

    async def resume_from_checkpoint(
        self, path_or_cycle_id: str | os.PathLike[str]
    ) -> CycleRecord | None:
        """Continue a cycle from its last checkpoint (a path, or a cycle id in this machine's
        checkpoint folder). Finished phases are not run again; the interrupted one is,
        from a clean worktree. CheckpointError when the checkpoint is missing, unreadable,
        from a newer format, or of a cycle that already ended (then nothing is changed)."""
        if self._running:
            raise TransitionError(self._state, self._state, "a cycle is running in this machine")
        ckpt = self.checkpoints.load(path_or_cycle_id)
        source = os.fspath(path_or_cycle_id)
        if isinstance(path_or_cycle_id, os.PathLike) or source.endswith(".json"):
            self.checkpoints.checkpoint_dir = Path(source).expanduser().resolve().parent
        self._check_resumable(ckpt)

        async def restore_and_go() -> CycleRecord | None:
            fresh = self.checkpoints.load(ckpt.cycle_id)  # re-read under the lock
            self._check_resumable(fresh)
            self._restore(fresh)
            bus.emit(
                EventType.CHECKPOINT_LOADED,
                fresh.cycle_id,
                path=str(self.checkpoints.path_for(fresh.cycle_id)),
                state=fresh.state.value,
                phase_complete=fresh.phase_complete,
                resumes=self._resumes,
            )
            if self._state is S.PAUSED:
                await self._leave_pause()
            elif self._state is S.IDLE:
                await self._transition(S.CONTEXT, "resumed after a restart")
            elif self._state.is_phase and not self._phase_complete:
                self._rerun.add(self._state)
            return await self._drive()

        return await self._session(ckpt.cycle_id, restore_and_go)

    # ------------------------------------------------------------ sessions

    def _settings_for(
        self,
        goal: str | None,
        repo: str | os.PathLike[str] | None,
        settings: CycleSettings | None,
        overrides: Mapping[str, Any],
    ) -> CycleSettings:
        base = settings or self.settings
        update: dict[str, Any] = dict(overrides)
        if goal is not None:
            update["goal"] = goal
        if repo is not None:
            update["repo"] = os.fspath(repo)
        try:
            chosen = CycleSettings.model_validate({**base.model_dump(), **update})
        except ValueError as exc:
            raise BadInput(f"invalid cycle settings: {exc}", "fix the named field(s)") from exc
        # The target rule of every person-run entry point (README: The target); a
        # relative path is pinned here, before the phases run in child processes.
        chosen = chosen.model_copy(update={"repo": choose_target(chosen.repo)})
        # Pin the state folder, so a resumed cycle finds its worktree whatever the env says.
        return chosen.model_copy(update={"state_dir": str(state_dir(chosen))})

    def _new_cycle_fields(self) -> None:
        if self._state.is_terminal:
            bus.emit(
                EventType.TRANSITION,
                self.cycle_id,
                from_state=self._state.value,
                to_state=S.IDLE.value,
                reason="ready for a new cycle",
            )
        callbacks = (self._transition_callbacks, self._error_callbacks, self._handlers)
        self._reset_cycle_fields()
        self._transition_callbacks, self._error_callbacks, self._handlers = callbacks

    async def _session(
        self, cycle_id: str, body: Callable[[], Awaitable[CycleRecord | None]]
    ) -> CycleRecord | None:
        """Hold the cycle's lock and the event-log subscription while `body` drives it."""

        def listen(event: NomicEvent) -> None:
            if event.cycle_id == cycle_id:
                self._events.append(event)

        unsubscribe = bus.subscribe(listen)
        lock = (
            self.checkpoints.lock(cycle_id)
            if self.enable_checkpoints
            else contextlib.nullcontext(None)
        )
        try:
            with lock as fd:
                self._lock_fd = fd
                self._running = True
                try:
                    return await body()
                finally:
                    self._running = False
                    self._lock_fd = None
        finally:
            unsubscribe()

    async def _begin(self, settings: CycleSettings, cycle_id: str, run_id: str | None) -> Any:
        self._total_cycles += 1
        self._cycle = start_cycle(settings, cycle_id=cycle_id, run_id=run_id)
        await self._transition(S.CONTEXT, "cycle started", goal=settings.goal)
        return await self._drive()

    async def _leave_pause(self) -> CycleRecord | None:
        target = self._resume_to or (
            self._previous if self._previous and self._previous.is_phase else S.CONTEXT
        )
        if target is S.COMMIT and not self._verified(self._cycle):
            target = S.VERIFY
        if self._failure is not None and self._failure.state is target:
            self._retry_counts.pop(target.value, None)  # a person looked: fresh attempts
        self._pause_requested = self._stop_requested = None
        bus.emit(EventType.RESUMED, self.cycle_id, resume_to=target.value)
        self._rerun.add(target)
        await self._transition(target, "resumed")
        return await self._drive()

    def _check_resumable(self, ckpt: Checkpoint) -> None:
        if ckpt.ended:
            outcome = f", outcome {ckpt.record.outcome.value}" if ckpt.record else ""
            raise CheckpointError(
                f"cycle {ckpt.cycle_id} already ended ({ckpt.state.name}{outcome}); there is "
                "nothing to resume and nothing was changed — start a new cycle instead"
            )
        if ckpt.cycle is None:
            raise CheckpointError(
                f"checkpoint of cycle {ckpt.cycle_id} holds no cycle state; start a new cycle"
            )

    def _restore(self, ckpt: Checkpoint) -> None:
        callbacks = (self._transition_callbacks, self._error_callbacks, self._handlers)
        self._reset_cycle_fields()
        self._transition_callbacks, self._error_callbacks, self._handlers = callbacks
        self._state = ckpt.state
        self._previous = ckpt.previous_state
        self._resume_to = ckpt.resume_to
        self._closing_to = ckpt.closing_to
        self._phase_complete = ckpt.phase_complete
        self._cycle = ckpt.cycle
        self._failure = ckpt.failure
        self._errors = list(ckpt.errors)
        self._retry_counts = dict(ckpt.retry_counts)
        self._recoveries = ckpt.recoveries
        self._transitions = ckpt.transitions
        self._resumes = ckpt.resumes + 1
        self._state_durations = dict(ckpt.state_durations)
        self._events = list(ckpt.events)
        self._total_cycles += 1

    # ------------------------------------------------------------ the loop

    async def _drive(self) -> CycleRecord | None:
        """Run states until the cycle ends or pauses. A loop: every state returns here."""
        while True:
            state = self._state
            if state.is_terminal:
                return self._record
            if state is S.PAUSED:
                return None
            if state is S.IDLE:
                if self._record is not None:
                    return self._record  # ended in IDLE (stopped while paused, or a handler)
                await self._transition(S.CONTEXT, "fresh start")
                continue
            if self._transitions > self.max_transitions:
                await self._give_up(f"the cycle made more than {self.max_transitions} transitions")
                continue
            if state is S.RECOVERY:
                await self._recover()
                continue
            if self._stop_requested is not None:
                await self._stop_now(state)
                continue
            if self._phase_complete:
                await self._after_phase(state, self._cycle)  # type: ignore[arg-type]
                continue
            if self._pause_requested is not None:
                await self._pause_now(resume_to=state)
                continue
            await self._run_state(state)

    async def _run_state(self, state: NomicState) -> None:
        before = self._cycle
        assert before is not None
        meta = self.config[state]
        handler = self._handlers.get(state)
        if handler is not None:
            attempt = await self._run_handler(handler, state, before, meta.timeout_seconds)
        else:
            prepare = state in self._rerun
            attempt = await self._run_child(state, before, meta.timeout_seconds, prepare)
        self._rerun.discard(state)

        if attempt.kind == "stopped":
            return  # the loop sees the stop request
        if attempt.kind != "ok":
            kind = "timeout" if attempt.kind == "timeout" else "crash"
            if attempt.kind == "timeout":
                bus.emit(
                    EventType.TIMEOUT,
                    before.cycle_id,
                    error=attempt.error,
                    state=state.value,
                    phase=state.value,
                    timeout_s=meta.timeout_seconds,
                    attempt=self._retry_counts.get(state.value, 0) + 1,
                )
            elif attempt.kind == "died" or handler is not None:
                bus.emit(EventType.ERROR, before.cycle_id, error=attempt.error, phase=state.value)
            await self._to_recovery(
                FailureNote(
                    state=state,
                    kind="handler" if handler is not None and kind == "crash" else kind,
                    error=attempt.error,
                    error_type=attempt.error_type,
                )
            )
            return
        new = attempt.cycle or before
        if attempt.choice is not None:
            await self._honour_choice(state, attempt.choice, new, before)
            return
        if new.outcome is Outcome.ERROR:  # the step crashed (run_phase caught it): retryable
            await self._to_recovery(
                FailureNote(state=state, kind="error", error=new.reason, error_type="error")
            )
            return
        self._cycle = new
        self._phase_complete = True
        self._save()  # the phase's result is durable before anything else happens
        await self._after_phase(state, new)

    async def _after_phase(self, state: NomicState, cycle: CycleState) -> None:
        """A phase finished: end the cycle if it decided so (W1), else go to the next one."""
        if cycle.ended:
            final = S.FAILED if cycle.outcome and cycle.outcome.is_failure else S.COMPLETED
            await self._end(final, cycle)
            return
        nxt = HAPPY_NEXT[state]
        if nxt is S.COMMIT and not self._verified(cycle):
            ended = cycle.end(
                Outcome.VERIFICATION_FAILED,
                "verification did not pass: nothing is committed",
                Phase.VERIFY,
            )
            await self._end(S.COMPLETED, ended)
            return
        self._cycle = cycle
        await self._transition(nxt, f"{state.value} finished")

    async def _honour_choice(
        self, state: NomicState, choice: NomicState, new: CycleState, before: CycleState
    ) -> None:
        """A custom handler chose the next state: honoured, along legal transitions only."""
        if choice not in VALID_TRANSITIONS[state]:
            error = TransitionError(state, choice, f"the {state.name} handler chose it")
            await self._abort(state, new, error)
        if choice is S.COMMIT and not self._verified(new):
            error = TransitionError(
                state, choice, "verification has not passed, and nothing unverified is committed"
            )
            await self._abort(state, new, error, Outcome.VERIFICATION_FAILED)
        if choice is S.RECOVERY:
            await self._to_recovery(
                FailureNote(
                    state=state,
                    kind="handler",
                    error=new.reason or f"the {state.name} handler chose RECOVERY",
                )
            )
            return
        self._cycle = new
        if choice in (S.COMPLETED, S.IDLE):
            ended = (
                new
                if new.ended
                else self._abandon(new, f"the {state.name} handler ended the cycle", state)
            )
            await self._end(choice, ended)
            return
        if choice is S.PAUSED:
            nxt = HAPPY_NEXT[state]
            self._phase_complete = True
            await self._pause_now(resume_to=nxt if nxt.is_phase else state)
            return
        if new.ended:  # it ended the cycle but named a phase: the ending wins (W1)
            final = S.FAILED if new.outcome and new.outcome.is_failure else S.COMPLETED
            await self._end(final, new)
            return
        if PHASE_STATES.index(choice) <= PHASE_STATES.index(state):
            self._rerun.add(choice)
        await self._transition(choice, f"the {state.name} handler chose it")

    async def _abort(
        self,
        state: NomicState,
        cycle: CycleState,
        error: TransitionError,
        outcome: Outcome = Outcome.ERROR,
    ) -> None:
        """End the cycle FAILED (cleanly: worktree removed, record written), then raise."""
        ended = cycle.end(outcome, str(error)[:2000], state.phase or Phase.CONTEXT)
        self._errors.append(FailureNote(state=state, kind="handler", error=str(error)))
        bus.emit(EventType.ERROR, cycle.cycle_id, error=str(error), phase=state.value)
        await self._end(S.FAILED, ended)
        raise error

    # ------------------------------------------------------------ running a state

    async def _run_child(
        self, state: NomicState, before: CycleState, timeout: float, prepare: bool
    ) -> _Attempt:
        phase = state.phase
        assert phase is not None
        ctx = _mp_context()
        receiver, sender = ctx.Pipe(duplex=False)
        close_fds = [self._lock_fd] if self._lock_fd is not None else []
        proc = ctx.Process(
            target=_phase_child,
            args=(
                phase.value,
                before.model_dump_json(),
                prepare,
                self.runtime,
                sender,
                os.getpid(),
                close_fds,
            ),
            name=f"nomic-{phase.value}-{before.cycle_id}",
        )
        proc.start()
        sender.close()
        with contextlib.suppress(OSError):
            os.setpgid(proc.pid, proc.pid)
        self._child = proc
        deadline = time.monotonic() + timeout if timeout > 0 else None
        message: tuple[Any, ...] | None = None
        kind: str | None = None
        try:
            while True:
                message = self._drain(receiver)
                if message is not None:
                    break
                if not proc.is_alive():
                    message = self._drain(receiver)  # its last words, if any
                    break
                if self._stop_requested is not None:
                    kind = "stopped"
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    kind = "timeout"
                    break
                await asyncio.sleep(POLL_S)
            if kind is not None:
                kill_process_tree(proc.pid)
            if not await _join(proc, 10):  # reported but does not exit: it must not linger
                kill_process_tree(proc.pid)
                await _join(proc, 5)
        except BaseException:  # cancelled (Ctrl-C): the phase must not outlive the machine
            kill_process_tree(proc.pid)
            proc.join(5)
            raise
        finally:
            self._child = None
            receiver.close()
        if kind == "stopped":
            return _Attempt("stopped")
        if kind == "timeout":
            return _Attempt(
                "timeout",
                error=f"{phase.value} timed out after {timeout:g}s (timeout): its processes "
                "were killed",
                error_type="TimeoutError",
            )
        if message is None:
            code = proc.exitcode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            return _Attempt(
                "died",
                error=f"the {phase.value} process died ({how}) before it reported",
                error_type="ProcessDied",
            )
        self.runtime.breakers.restore(message[-1])
        if message[0] == "result":
            return _Attempt("ok", cycle=CycleState.model_validate_json(message[1]))
        log.error("cycle %s: %s crashed in its process\n%s", before.cycle_id, phase, message[2])
        return _Attempt("crash", error=message[1], error_type=message[1].split(":", 1)[0])

    def _drain(self, receiver: Any) -> tuple[Any, ...] | None:
        """Publish forwarded events; return the final message when it has arrived."""
        final = None
        while True:
            try:
                if not receiver.poll():
                    return final
                message = receiver.recv()
            except (EOFError, OSError):
                return final
            if message[0] == "event":
                with contextlib.suppress(ValueError):
                    bus.publish(NomicEvent.model_validate_json(message[1]))
            else:
                final = message

    async def _run_handler(
        self, handler: Handler, state: NomicState, before: CycleState, timeout: float
    ) -> _Attempt:
        if inspect.iscoroutinefunction(handler):
            task: asyncio.Future[Any] = asyncio.ensure_future(handler(before))
        else:
            task = asyncio.ensure_future(asyncio.to_thread(handler, before))
        deadline = time.monotonic() + timeout if timeout > 0 else None
        while not task.done():
            if self._stop_requested is not None:
                task.cancel()
                return _Attempt("stopped")
            if deadline is not None and time.monotonic() >= deadline:
                task.cancel()
                return _Attempt(
                    "timeout",
                    error=f"the {state.value} handler timed out after {timeout:g}s (timeout)",
                    error_type="TimeoutError",
                )
            await asyncio.wait({task}, timeout=POLL_S)
        try:
            result = task.result()
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            log.error(
                "cycle %s: the %s handler raised\n%s",
                before.cycle_id,
                state.value,
                traceback.format_exc(),
            )
            return _Attempt(
                "crash", error=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__
            )
        try:
            return self._parse_handler_result(state, result, before)
        except (TypeError, ValueError) as exc:
            return _Attempt("crash", error=str(exc), error_type=type(exc).__name__)

    @staticmethod
    def _parse_handler_result(state: NomicState, result: Any, before: CycleState) -> _Attempt:
        if isinstance(result, CycleState):
            return _Attempt("ok", cycle=result)
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], CycleState):
            return _Attempt("ok", cycle=result[1], choice=NomicState.parse(result[0]))
        if isinstance(result, NomicState | str):
            return _Attempt("ok", cycle=before, choice=NomicState.parse(result))
        raise TypeError(
            f"the {state.name} handler returned {type(result).__name__}; return a NomicState, "
            "a CycleState, or (NomicState, CycleState)"
        )

    # ------------------------------------------------------------ failure and recovery

    async def _to_recovery(self, note: FailureNote) -> None:
        self._errors.append(note)
        self._failure = note
        await self._transition(S.RECOVERY, f"{note.kind} in {note.state.value}", error=note.error)

    async def _recover(self) -> None:
        """Decide after a failure and move along a legal transition — always (W2)."""
        cycle = self._cycle
        assert cycle is not None
        if cycle.ended:  # passing through on the way to COMPLETED/FAILED/IDLE
            final = self._closing_to or (
                S.FAILED if cycle.outcome and cycle.outcome.is_failure else S.COMPLETED
            )
            await self._end(final, cycle)
            return
        note = self._failure
        if note is None:
            await self._give_up("RECOVERY was entered without a failure to recover from")
            return
        failed = note.state
        meta = self.config[failed]
        attempts = self._retry_counts.get(failed.value, 0)
        error: BaseException | str = (
            TimeoutError(note.error) if note.kind == "timeout" else note.error
        )
        decision = self._decide(error, failed, attempts, meta)
        self._recoveries += 1
        action = decision.action
        if self._recoveries > self.max_recoveries:
            decision = self._override(
                decision, RecoveryAction.FAIL, f"more than {self.max_recoveries} recoveries"
            )
        elif action is RecoveryAction.RETRY and attempts >= meta.max_retries:
            decision = self._override(
                decision,
                RecoveryAction.FAIL,
                f"{failed.value} has used its {meta.max_retries} retr"
                f"{'y' if meta.max_retries == 1 else 'ies'}",
            )
        action = decision.action

        if action is RecoveryAction.RETRY:
            attempt = attempts + 1
            self._retry_counts[failed.value] = attempt
            target = S.VERIFY if failed is S.COMMIT else failed  # never RECOVERY -> COMMIT
            delay = max(0.0, min(decision.delay_s, self.max_retry_delay_s))
            bus.emit(
                EventType.RETRY,
                cycle.cycle_id,
                state=failed.value,
                phase=failed.value,
                attempt=attempt,
                max=meta.max_retries,
                max_attempts=meta.max_retries,
                delay_s=round(delay, 3),
                target_state=target.value,
            )
            await self._sleep(delay)
            if self._stop_requested is not None:
                await self._stop_now(S.RECOVERY)
                return
            self._rerun.add(target)
            await self._transition(target, f"retry {attempt}/{meta.max_retries} of {failed.value}")
            return

        await self._fire_error(failed, error)
        if action is RecoveryAction.SKIP:
            await self._skip(failed, cycle, note, decision)
        elif action is RecoveryAction.ROLLBACK:
            await self._rollback(cycle, decision)
        elif action is RecoveryAction.RESTART:
            self._close_quietly(cycle)
            self._cycle = self._fresh(cycle)
            self._rerun.clear()
            await self._transition(S.IDLE, f"restart: {decision.reason}")
        elif action is RecoveryAction.PAUSE:
            self._resume_to = failed
            bus.emit(
                EventType.PAUSED,
                cycle.cycle_id,
                reason=decision.reason,
                resume_to=failed.value,
                requires_human=decision.requires_human,
            )
            await self._transition(S.PAUSED, f"recovery paused: {decision.reason}")
        else:  # FAIL, or anything this machine does not know
            phase = failed.phase or Phase.CONTEXT
            ended = cycle.end(
                Outcome.ERROR,
                f"{failed.value} failed: {note.error} — {decision.reason}"[:2000],
                phase,
            )
            await self._end(S.FAILED, ended)

    def _decide(
        self, error: BaseException | str, failed: NomicState, attempts: int, meta: StateMetadata
    ) -> RecoveryDecision:
        try:
            try:
                decision = self.recovery.decide_sync(
                    error,
                    failed.value,
                    attempts,
                    meta.max_retries,
                    meta.is_critical,
                    cycle_id=self.cycle_id,
                )
            except TypeError:  # a manager without the cycle_id keyword
                decision = self.recovery.decide_sync(
                    error, failed.value, attempts, meta.max_retries, meta.is_critical
                )
            if not isinstance(decision, RecoveryDecision):
                decision = RecoveryDecision.model_validate(
                    decision if isinstance(decision, dict) else decision.__dict__
                )
            return decision
        except Exception as exc:
            log.exception("cycle %s: the recovery manager failed", self.cycle_id)
            return self._override(
                RecoveryDecision(action=RecoveryAction.FAIL, reason="no decision"),
                RecoveryAction.FAIL,
                f"the recovery manager failed ({type(exc).__name__}: {exc})",
            )

    def _override(
        self, decision: RecoveryDecision, action: RecoveryAction, why: str
    ) -> RecoveryDecision:
        new = RecoveryDecision(
            action=action,
            target_state=S.FAILED.value if action is RecoveryAction.FAIL else None,
            reason=f"{why} (recovery asked for {decision.action.value})",
            requires_human=decision.requires_human,
        )
        bus.emit(
            EventType.RECOVERY_DECISION,
            self.cycle_id,
            action=new.action.value,
            target_state=new.target_state,
            delay_s=0,
            reason=new.reason,
            requires_human=new.requires_human,
            overridden=decision.action.value,
            source="state_machine",
        )
        return new

    async def _skip(
        self,
        failed: NomicState,
        cycle: CycleState,
        note: FailureNote,
        decision: RecoveryDecision,
    ) -> None:
        phase = failed.phase or Phase.CONTEXT
        if failed is S.VERIFY:  # W2: skipping VERIFY never leads to COMMIT
            ended = cycle.end(
                Outcome.VERIFICATION_FAILED,
                f"verification could not run ({note.error}) and was skipped: an unverified "
                "change is never committed"[:2000],
                Phase.VERIFY,
            )
            await self._end(S.FAILED, ended)
            return
        target: NomicState | None = None
        if decision.target_state:
            with contextlib.suppress(ValueError):
                target = NomicState.parse(decision.target_state)
        if target is None:
            target = HAPPY_NEXT[failed]
        if target.is_phase and target is not S.COMMIT and self._has_inputs(target, cycle):
            await self._transition(target, f"skip {failed.value}: {decision.reason}")
            return
        reason = (
            f"{failed.value} failed ({note.error}); recovery skipped the rest of the cycle: "
            f"nothing is committed ({decision.reason})"
        )
        await self._end(S.COMPLETED, cycle.end(Outcome.ABANDONED, reason[:2000], phase))

    async def _rollback(self, cycle: CycleState, decision: RecoveryDecision) -> None:
        wanted: NomicState | None = None
        if decision.target_state:
            with contextlib.suppress(ValueError):
                wanted = NomicState.parse(decision.target_state)
        can_implement = self._has_inputs(S.IMPLEMENT, cycle)
        if wanted is not S.CONTEXT and can_implement:
            self._cycle = cycle.model_copy(
                update={"changeset": None, "verification": None, "commit": None}
            )
            self._rerun.add(S.IMPLEMENT)  # start_branch resets the worktree onto the branch
            await self._transition(S.IMPLEMENT, f"rollback: {decision.reason}")
            return
        self._close_quietly(cycle)
        self._cycle = self._fresh(cycle)
        await self._transition(S.CONTEXT, f"rollback: {decision.reason}")

    async def _give_up(self, why: str) -> None:
        cycle = self._cycle
        assert cycle is not None
        phase = self._state.phase or (self._failure.state.phase if self._failure else None)
        ended = cycle if cycle.ended else cycle.end(Outcome.ERROR, why, phase or Phase.CONTEXT)
        bus.emit(EventType.ERROR, cycle.cycle_id, error=why, phase=self._state.value)
        await self._end(S.FAILED, ended)

    async def _stop_now(self, state: NomicState) -> None:
        cycle = self._cycle
        assert cycle is not None
        reason = self._stop_requested or "stopped"
        ended = cycle if cycle.ended else self._abandon(cycle, f"stopped: {reason}", state)
        await self._end(S.FAILED, ended)

    async def _pause_now(self, resume_to: NomicState) -> None:
        reason = self._pause_requested or "paused"
        self._pause_requested = None
        self._resume_to = resume_to
        bus.emit(EventType.PAUSED, self.cycle_id, reason=reason, resume_to=resume_to.value)
        await self._transition(S.PAUSED, reason)

    async def _end(self, final: NomicState, cycle: CycleState) -> None:
        """Finish the cycle (worktree removed, record stored), then enter `final`.

        Where the table has no direct edge (CONTEXT/VERIFY -> COMPLETED, any phase ->
        FAILED) the machine passes through RECOVERY; that checkpoint holds the ended
        cycle, so a resume from it only finishes."""
        self._cycle = cycle
        self._closing_to = final
        if not is_valid_transition(self._state, final):
            await self._transition(
                S.RECOVERY, f"closing: {cycle.outcome.value if cycle.outcome else 'ended'}"
            )
        self._record = finish_cycle(cycle)
        self._total_counters(final)
        await self._transition(final, cycle.reason[:500], outcome=self._record.outcome.value)

    def _total_counters(self, final: NomicState) -> None:
        if final is S.COMPLETED:
            self._successful_cycles += 1
        else:
            self._failed_cycles += 1

    # ------------------------------------------------------------ helpers

    def _abandon(self, cycle: CycleState, reason: str, state: NomicState) -> CycleState:
        phase = state.phase or (cycle.ended_in if cycle.ended_in else Phase.CONTEXT)
        return cycle.end(Outcome.ABANDONED, reason, phase)

    @staticmethod
    def _verified(cycle: CycleState | None) -> bool:
        return bool(
            cycle is not None
            and cycle.changeset is not None
            and cycle.verification is not None
            and cycle.verification.passed
        )

    @staticmethod
    def _has_inputs(state: NomicState, cycle: CycleState) -> bool:
        """Does the cycle hold what `state`'s step needs?"""
        needs = {
            S.CONTEXT: True,
            S.DEBATE: cycle.context is not None and cycle.workspace is not None,
            S.DESIGN: cycle.debate is not None and cycle.debate.winner is not None,
            S.IMPLEMENT: cycle.design is not None and bool(cycle.scope and cycle.scope.allowed),
            S.VERIFY: cycle.changeset is not None,
            S.COMMIT: NomicStateMachine._verified(cycle),
        }
        return bool(needs.get(state, False))

    @staticmethod
    def _fresh(cycle: CycleState) -> CycleState:
        return CycleState(
            cycle_id=cycle.cycle_id,
            run_id=cycle.run_id,
            settings=cycle.settings,
            goal=cycle.goal,
            started_at=cycle.started_at,
            phase_durations=cycle.phase_durations,
        )

    def _close_quietly(self, cycle: CycleState) -> None:
        if cycle.workspace is not None:
            try:
                close_workspace(cycle.workspace)
            except Exception:
                log.exception("cycle %s: could not remove the worktree", cycle.cycle_id)

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._stop_requested is None and time.monotonic() < deadline:
            await asyncio.sleep(min(POLL_S * 5, max(0.0, deadline - time.monotonic())))

    async def _fire_error(self, state: NomicState, error: BaseException | str) -> None:
        for callback in list(self._error_callbacks):
            try:
                result = callback(state, error)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("error callback %r failed", callback)

    async def _transition(self, to: NomicState, reason: str = "", **data: Any) -> None:
        frm = self._state
        if to not in VALID_TRANSITIONS[frm]:
            raise TransitionError(frm, to, reason)
        now = time.monotonic()
        duration = now - self._entered_at
        self._state_durations[frm.value] = round(duration, 3)
        self._previous, self._state, self._entered_at = frm, to, now
        self._phase_complete = False
        self._transitions += 1
        if to.is_phase:
            self._failure = None  # the failure RECOVERY decided about is behind us
        event = bus.emit(
            EventType.TRANSITION,
            self.cycle_id,
            from_state=frm.value,
            to_state=to.value,
            reason=reason[:500],
            duration_s=round(duration, 3),
            **data,
        )
        if self.config[to].requires_checkpoint or self._record is not None:
            self._save()
        for callback in list(self._transition_callbacks):
            try:
                result = (
                    callback(frm, to, event, duration, self.cycle_id)
                    if _takes_five(callback)
                    else callback(frm, to, event)
                )
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("transition callback %r failed", callback)

    def _snapshot(self) -> Checkpoint:
        assert self._cycle is not None
        return Checkpoint(
            cycle_id=self._cycle.cycle_id,
            state=self._state,
            previous_state=self._previous,
            resume_to=self._resume_to,
            closing_to=self._closing_to,
            phase_complete=self._phase_complete,
            retry_counts=dict(self._retry_counts),
            recoveries=self._recoveries,
            transitions=self._transitions,
            resumes=self._resumes,
            errors=list(self._errors),
            failure=self._failure,
            state_durations=dict(self._state_durations),
            cycle=self._cycle,
            record=self._record,
            events=list(self._events),
        )

    def _save(self) -> None:
        if not self.enable_checkpoints or self._cycle is None:
            return
        try:
            path = self.checkpoints.save(self._snapshot())
        except (OSError, CheckpointError) as exc:
            log.error("cycle %s: checkpoint not saved: %s", self.cycle_id, exc)
            bus.emit(
                EventType.ERROR,
                self.cycle_id,
                error=f"checkpoint not saved: {exc}",
                phase=self._state.value,
            )
            return
        bus.emit(
            EventType.CHECKPOINT_SAVED,
            self.cycle_id,
            path=str(path),
            state=self._state.value,
            phase_complete=self._phase_complete,
        )


def _takes_five(callback: Callable[..., Any]) -> bool:
    try:
        params = list(inspect.signature(callback).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 5


def create_nomic_state_machine(
    checkpoint_dir: str | os.PathLike[str] | None = None,
    enable_checkpoints: bool = True,
    enable_metrics: bool = True,
    **kwargs: Any,
) -> NomicStateMachine:
    """The recommended way to build a machine (same arguments as NomicStateMachine)."""
    return NomicStateMachine(
        checkpoint_dir=checkpoint_dir,
        enable_checkpoints=enable_checkpoints,
        enable_metrics=enable_metrics,
        **kwargs,
    )


async def resume_from_checkpoint(
    path_or_cycle_id: str | os.PathLike[str],
    checkpoint_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> CycleRecord | None:
    """Continue a cycle from its checkpoint with a new machine (see the method)."""
    machine = create_nomic_state_machine(checkpoint_dir=checkpoint_dir, **kwargs)
    return await machine.resume_from_checkpoint(path_or_cycle_id)


__all__ = [
    "STATE_CONFIG",
    "VALID_TRANSITIONS",
    "NomicState",
    "NomicStateMachine",
    "StateMetadata",
    "TransitionError",
    "create_nomic_state_machine",
    "default_repo",
    "get_state_config",
    "is_valid_transition",
    "kill_process_tree",
    "resume_from_checkpoint",
]
