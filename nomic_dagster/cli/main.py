"""`nomic`: run a cycle, show status and history, resume a checkpoint, serve metrics.

    nomic run --repo PATH --goal "..."     one cycle on a repository (--repo demo: the bundled demo)
    nomic status                           the latest cycle (and checkpoint)
    nomic history [--limit N] [--json]     recent cycles as a table
    nomic resume CYCLE_ID                  continue a cycle from its checkpoint
    nomic pending                          cycles waiting for approval, with their designs
    nomic approve|reject CYCLE_ID          decide; approve runs it from IMPLEMENT
    nomic phases [--json]                  the phases: timeouts, retries, what each does
    nomic metrics-server [--port 9464]     serve the Prometheus metrics

Also the helpers `scripts/self_develop.py` and `scripts/nomic_staged.py` share: the
settings options (one per `CycleSettings` field), progress lines from the event bus, and
the cycle drivers. Exit codes: 0 success, 1 failure or bad input (a message, never a
traceback), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import os
import sys
import threading
import time
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from nomic_dagster.cli.report import describe
from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.events import (
    EventType,
    NomicEvent,
    ProgressTicker,
    bus,
    progress_period_s,
)
from nomic_dagster.core.pathrules import DEFAULT_PROTECTED_PATHS
from nomic_dagster.core.phases import PHASES, phases_table, resume_phases
from nomic_dagster.core.records import CycleRecord, Outcome, Phase
from nomic_dagster.core.settings import CycleSettings, state_dir
from nomic_dagster.core.state import CycleState
from nomic_dagster.cycle.approvals import ApprovalStore
from nomic_dagster.cycle.finish import finish_cycle
from nomic_dagster.cycle.history import CycleHistory
from nomic_dagster.cycle.runtime import CycleRuntime
from nomic_dagster.cycle.steps import run_phase, start_cycle
from nomic_dagster.drivers.approval_flow import approve, reject
from nomic_dagster.infra import metrics
from nomic_dagster.infra.git import choose_target
from nomic_dagster.infra.metrics import DEFAULT_ADDR, DEFAULT_PORT, PORT_ENV

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
TRACKS = ("sme", "developer", "self_hosted", "qa", "core", "security")

log = logging.getLogger("nomic_dagster.cli.main")


class UsageError(Exception):
    """Bad input from the command line: printed as one message, exit code 1."""


class Parser(argparse.ArgumentParser):
    """argparse that exits 1 (not 2) on bad arguments, with the usage and the problem."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_FAILURE, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written; shows a default only when there is a real one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and default not in (None, False, argparse.SUPPRESS)
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def fail(message: str, fix: str | None = None) -> int:
    print(f"error: {message}", file=sys.stderr)
    if fix:
        print(f"  fix: {fix}", file=sys.stderr)
    return EXIT_FAILURE


# ---------------------------------------------------------------- settings options


# Options spelled differently from their field, kept so that existing command lines work.
OPTION_ALIASES: dict[str, tuple[str, ...]] = {
    "test_timeout_s": ("--test-timeout",),
    "context_budget_chars": ("--context-budget",),
}
# Help texts for the command line where the field's own description speaks of the run
# config (the target and the state folder follow their entry-point rules).
OPTION_HELP: dict[str, str] = {
    "repo": "target repository: a local path (made absolute here), a git URL, or 'demo' for "
    "a fresh copy of the bundled demo. Default: $NOMIC_REPO, else the git repository "
    "containing the current directory (README: The target)",
    "state_dir": "nomic's state folder (default: $NOMIC_STATE_DIR, else $DAGSTER_HOME/nomic, "
    "else .dagster_home/nomic of the nomic_dagster checkout, else "
    "~/.local/state/nomic_dagster; README: The state folder)",
}


def settings_field_kind(annotation: Any) -> tuple[Any, tuple[str, ...] | None, bool]:
    """(scalar type, choices, is a list) of a CycleSettings field's annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return settings_field_kind(args[0])
    if typing.get_origin(annotation) is list:
        return str, None, True
    if typing.get_origin(annotation) is typing.Literal:
        return str, tuple(str(a) for a in typing.get_args(annotation) if a != ""), False
    return annotation, None, False


def _default_text(field: Any) -> str:
    default = field.get_default(call_default_factory=True)
    if default in (None, "", [], ()) or isinstance(default, list):
        return ""
    if isinstance(default, bool):
        if "default" in (field.description or "").lower():
            return ""  # the description says it already
        return f" (default: {'on' if default else 'off'})"
    return f" (default: {default})"


def settings_options() -> dict[str, str]:
    """Every CycleSettings field and its option on the command line."""
    return {name: "--" + name.replace("_", "-") for name in CycleSettings.model_fields}


def add_settings_arguments(
    parser: argparse.ArgumentParser,
    track: bool = True,
    approval: bool = True,
    skip: Sequence[str] = (),
) -> None:
    """One option per CycleSettings field, generated from the model (type, choices, help
    from the field's description), so that the options cannot drift from the settings:
    lists are comma-separated or repeated, booleans are --x/--no-x, Literal fields take
    their choices. An option left out keeps the settings' default. `track=False` /
    `approval=False` / `skip`: the caller declares those options itself (or not at all)."""
    skipped = set(skip) | ({"track"} if not track else set())
    if not approval:
        skipped.add("require_approval")
    g = parser.add_argument_group(
        "cycle settings (one per CycleSettings field; README: Run config)"
    )
    for name, option in settings_options().items():
        if name in skipped:
            continue
        field = CycleSettings.model_fields[name]
        kind, choices, is_list = settings_field_kind(field.annotation)
        text = OPTION_HELP.get(name) or (field.description or name)
        text = text.replace("%", "%%") + ("" if name in OPTION_HELP else _default_text(field))
        if is_list:
            text += " Comma-separated or repeated."
        names = (option, *OPTION_ALIASES.get(name, ()))
        if is_list:
            g.add_argument(*names, dest=name, action="append", metavar="VALUES", help=text)
        elif kind is bool:
            g.add_argument(*names, dest=name, action=argparse.BooleanOptionalAction, help=text)
        else:
            g.add_argument(
                *names,
                dest=name,
                type=kind if kind in (int, float) else str,
                choices=choices,
                metavar=None if choices else name.upper(),
                help=text,
            )
    if "protected_paths" not in skipped:
        g.add_argument(
            "--protect",
            action="append",
            metavar="GLOB",
            help="another protected path glob, on top of the defaults (repeatable)",
        )


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def settings_from_args(
    args: argparse.Namespace, *, resolve_repo: bool = True, **overrides: Any
) -> CycleSettings:
    """The CycleSettings of the options given (every field by its own name), with the
    target chosen by `choose_target` (the current repository when none is named) and made
    absolute here, at the entry point."""
    fields: dict[str, Any] = {
        name: getattr(args, name, None) for name in CycleSettings.model_fields
    }
    for name, field in CycleSettings.model_fields.items():
        if settings_field_kind(field.annotation)[2]:
            fields[name] = _split(fields[name])
    if getattr(args, "protect", None):
        base = fields.get("protected_paths") or list(DEFAULT_PROTECTED_PATHS)
        fields["protected_paths"] = [*base, *args.protect]
    fields.update(overrides)
    if fields.get("repo") is not None and not str(fields["repo"]).strip():
        raise UsageError("--repo is empty")
    if fields.get("goal") is not None and not str(fields["goal"]).strip():
        raise UsageError("--goal is empty")
    try:
        settings = CycleSettings(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(f"invalid settings: {problems}") from None
    if resolve_repo:
        settings = settings.model_copy(update={"repo": choose_target(settings.repo)})
    return settings


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("nomic_dagster").setLevel(logging.DEBUG if verbose else logging.WARNING)


# ---------------------------------------------------------------- progress


class Progress:
    """Prints what a running cycle does, from the event bus: phases with elapsed times,
    failed gates, agent failures, breakers, recovery decisions; and, every `heartbeat_s`
    seconds while a phase runs, what it is doing (a `ProgressTicker`: "verify: running the
    tests: ... (12 s)...", "debate: asking claude to vote (3 s)..."). `heartbeat_s` None:
    $NOMIC_PROGRESS_S, else 5 s; 0: no such lines."""

    def __init__(self, stream: Any = None, heartbeat_s: float | None = None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.heartbeat_s = progress_period_s() if heartbeat_s is None else heartbeat_s
        self.enabled = enabled
        self._cycle_started: dict[str, float] = {}
        self._lock = threading.Lock()

    def _say(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"[{stamp}] {text}", file=self.stream, flush=True)

    def _say_locked(self, text: str) -> None:
        with self._lock:
            self._say(text)

    def _elapsed(self, cycle: str) -> str:
        started = self._cycle_started.get(cycle)
        return f" (cycle {time.monotonic() - started:.1f}s)" if started is not None else ""

    def on_event(self, e: NomicEvent) -> None:
        cid, d = e.cycle_id or "-", e.data
        with self._lock:
            if e.type is EventType.CYCLE_STARTED:
                self._cycle_started[cid] = time.monotonic()
                self._say(f"cycle {cid} started: {d.get('goal', '')!r} (track {d.get('track')})")
            elif e.type is EventType.PHASE_STARTED:
                self._say(f"cycle {cid}: {d.get('phase')} ...{self._elapsed(cid)}")
            elif e.type is EventType.PHASE_FINISHED:
                end = f" -> {d['outcome']}" if d.get("outcome") else ""
                self._say(
                    f"cycle {cid}: {d.get('phase')} done in {d.get('duration_s', 0):.2f}s{end}"
                    f"{self._elapsed(cid)}"
                )
            elif e.type is EventType.GATE_DECISION and not d.get("passed"):
                self._say(f"cycle {cid}: gate {d.get('gate')} failed: {d.get('detail', '')[:200]}")
            elif e.type is EventType.AGENT_FAILURE:
                self._say(f"cycle {cid}: agent {d.get('agent')} failed: {(e.error or '')[:200]}")
            elif e.type in (EventType.CIRCUIT_OPENED, EventType.CIRCUIT_CLOSED):
                what = "opened" if e.type is EventType.CIRCUIT_OPENED else "closed"
                self._say(f"circuit breaker of agent {d.get('agent')} {what}")
            elif e.type is EventType.RECOVERY_DECISION:
                self._say(f"cycle {cid}: recovery: {d.get('action')} ({d.get('reason')})")
            elif e.type in (EventType.RETRY, EventType.TIMEOUT, EventType.PAUSED):
                self._say(f"cycle {cid}: {e.type.value} {d}")
            elif e.type is EventType.CYCLE_FINISHED:
                self._say(
                    f"cycle {cid} finished: {d.get('outcome')} in {d.get('duration_s', 0):.1f}s"
                )
                self._cycle_started.pop(cid, None)

    @contextmanager
    def attached(self) -> Iterator[Progress]:
        if not self.enabled:
            yield self
            return
        unsubscribe = bus.subscribe(self.on_event)
        try:
            with ProgressTicker(self._say_locked, period_s=self.heartbeat_s):
                yield self
        finally:
            unsubscribe()


# ---------------------------------------------------------------- cycle drivers


@contextmanager
def cli_runtime(settings: CycleSettings) -> Iterator[CycleRuntime]:
    """The runtime of one CLI run (backends from the environment), its agents' circuit
    breakers carried from one run to the next in `<state dir>/breakers.json` (an agent that
    failed three runs in a row stays out)."""
    runtime = CycleRuntime.for_settings(settings)
    with runtime.persisted_breakers():
        yield runtime


def run_phases(
    state: CycleState,
    phases: Sequence[Phase],
    runtime: CycleRuntime,
    after_phase: Callable[[Phase, CycleState], None] | None = None,
) -> CycleState:
    """run_phase over `phases`. On Ctrl-C the cycle is ended ("interrupted"), its worktree
    removed and its record stored, then KeyboardInterrupt goes on."""
    for phase in phases:
        ran = not state.ended
        try:
            state = run_phase(phase, state, runtime)
        except KeyboardInterrupt:
            if not state.ended:
                state = state.end(
                    Outcome.ERROR, f"interrupted (Ctrl-C) during {phase.value}", phase
                )
            finish_cycle(state)
            raise
        if ran and after_phase is not None:
            after_phase(phase, state)
    return state


def run_one_cycle(
    settings: CycleSettings, runtime: CycleRuntime, cycle_id: str | None = None
) -> CycleRecord:
    """One cycle with the plain driver (run_phase per phase), Ctrl-C safe."""
    state = start_cycle(settings, cycle_id)
    state = run_phases(state, list(PHASES), runtime)
    return finish_cycle(state)


def optional_module(name: str) -> Any | None:
    """A sibling module that may not exist in this installation (loop, state machine, ...)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def runner_name() -> str:
    return (
        "NomicLoop (state machine)"
        if optional_module("nomic_dagster.drivers.loop")
        else "plain driver"
    )


def _wait(value: Any) -> Any:
    return asyncio.run(value) if inspect.isawaitable(value) else value


def run_cycles(
    settings: CycleSettings,
    runtime: CycleRuntime,
    max_cycles: int = 1,
    max_consecutive_failures: int = 3,
    checkpoint_dir: str | None = None,
    budget_usd: float | None = None,
) -> list[CycleRecord]:
    """Cycles through `nomic_dagster.drivers.loop.NomicLoop` when it exists, else the plain driver
    (stops after `max_consecutive_failures` cycles in a row without a commit, and at once
    on bad input). `budget_usd`: what all these cycles together may spend (each cycle gets
    what the earlier ones left; the run stops once a cycle ends budget_exhausted)."""
    loop_module = optional_module("nomic_dagster.drivers.loop")
    if loop_module is not None:
        loop = loop_module.NomicLoop(
            repo=settings.repo,
            max_cycles=max_cycles,
            max_consecutive_failures=max_consecutive_failures,
            checkpoint_dir=checkpoint_dir,
            settings=settings,
            runtime=runtime,
            budget_usd=budget_usd,
        )
        return list(_wait(loop.run()))
    records: list[CycleRecord] = []
    misses = 0
    for _ in range(max_cycles):
        own = settings
        if budget_usd is not None:
            left = max(0.0, budget_usd - sum(r.cost_usd for r in records))
            cap = left if settings.budget_usd is None else min(settings.budget_usd, left)
            own = settings.model_copy(update={"budget_usd": cap})
        record = run_one_cycle(own, runtime)
        records.append(record)
        if record.outcome in (Outcome.BAD_INPUT, Outcome.BUDGET_EXHAUSTED):
            break
        misses = 0 if record.outcome is Outcome.COMMITTED else misses + 1
        if misses >= max_consecutive_failures:
            log.warning("stopping after %d cycles in a row without a commit", misses)
            break
    return records


@contextmanager
def resume_hint_on_interrupt(
    settings: CycleSettings, checkpoint_dir: str | None = None
) -> Iterator[None]:
    """On Ctrl-C, name the interrupted cycle the state machine can resume (if any)."""
    try:
        yield
    except KeyboardInterrupt:
        checkpoints = optional_module("nomic_dagster.drivers.checkpoints")
        if checkpoints is not None:
            folder = Path(checkpoint_dir) if checkpoint_dir else state_dir(settings) / "checkpoints"
            try:
                latest = checkpoints.load_latest_checkpoint(folder)
            except Exception:  # a hint only: never hide the interrupt
                latest = None
            if latest is not None and latest.resumable:
                print(
                    f"\ncycle {latest.cycle_id} stopped in {latest.state.value}; its checkpoint "
                    f"is kept: `nomic resume {latest.cycle_id}` continues it",
                    file=sys.stderr,
                    flush=True,
                )
        raise


def exit_code_for(records: Sequence[CycleRecord]) -> int:
    """0 when every cycle ran (committed or a gate closed), 1 on bad input or an error."""
    if not records or any(r.outcome.is_failure for r in records):
        return EXIT_FAILURE
    return EXIT_OK


def guarded_main(fn: Callable[[], int]) -> int:
    """Bad input -> message, exit 1; Ctrl-C -> exit 130; never a traceback for either."""
    try:
        return fn()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except UsageError as exc:
        return fail(str(exc))
    except BadInput as exc:
        return fail(exc.problem, exc.fix)
    except BrokenPipeError:  # `nomic history | head`: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE


# ---------------------------------------------------------------- nomic run


def cmd_run(args: argparse.Namespace) -> int:
    configure_logging(args.verbose)
    settings = settings_from_args(args)
    progress = Progress(heartbeat_s=args.heartbeat, enabled=not args.quiet)
    with (
        cli_runtime(settings) as runtime,
        progress.attached(),
        resume_hint_on_interrupt(settings, args.checkpoint_dir),
    ):
        records = run_cycles(
            settings,
            runtime,
            max_cycles=args.cycles,
            max_consecutive_failures=args.max_consecutive_failures,
            checkpoint_dir=args.checkpoint_dir,
        )
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
    else:
        for record in records:
            print(describe(record, patch=False))
    if not records:
        return fail("no cycle ran")
    return exit_code_for(records)


# ---------------------------------------------------------------- status / history


def _history(args: argparse.Namespace) -> CycleHistory:
    if getattr(args, "state_dir", None):
        os.environ["NOMIC_STATE_DIR"] = args.state_dir
    return CycleHistory(state_dir())


def _checkpoint_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "checkpoint_dir", None):
        return Path(args.checkpoint_dir)
    return state_dir() / "checkpoints"


def latest_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The newest checkpoint in `folder`, summarized; None when there is none."""
    checkpoints = optional_module("nomic_dagster.drivers.checkpoints")
    if checkpoints is not None:
        infos = checkpoints.list_checkpoints(folder)
        if not infos:
            return None
        newest = infos[0]
        return {
            **newest.model_dump(mode="json", exclude_none=True),
            "files": len(infos),
            "resumable_cycles": [i.cycle_id for i in infos if i.resumable],
        }
    if not folder.is_dir():
        return None
    files = sorted(
        (p for p in folder.rglob("*.json") if p.is_file()), key=lambda p: p.stat().st_mtime
    )
    if not files:
        return None
    newest = files[-1]
    summary: dict[str, Any] = {"path": str(newest), "files": len(files)}
    try:
        data = json.loads(newest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return summary
    if isinstance(data, dict):
        for key in (
            "cycle_id",
            "current_state",
            "state",
            "previous_state",
            "saved_at",
            "timestamp",
        ):
            if key in data and not isinstance(data[key], dict | list):
                summary[key] = data[key]
        ctx = data.get("context")
        if isinstance(ctx, dict):
            for key in ("cycle_id", "current_state"):
                if key in ctx and key not in summary:
                    summary[key] = ctx[key]
    return summary


def cmd_status(args: argparse.Namespace) -> int:
    history = _history(args)
    records = history.all()
    checkpoint = latest_checkpoint(_checkpoint_dir(args))
    if args.json:
        print(
            json.dumps(
                {
                    "state_dir": str(history.path.parent),
                    "cycles": len(records),
                    "latest": records[-1].model_dump(mode="json") if records else None,
                    "checkpoint": checkpoint,
                },
                indent=2,
            )
        )
        return EXIT_OK
    print(f"state folder: {history.path.parent}")
    if not records:
        print("no cycle has run yet (nomic run --repo PATH)")
    else:
        counts: dict[str, int] = {}
        for r in records:
            counts[r.outcome.value] = counts.get(r.outcome.value, 0) + 1
        tally = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        print(f"cycles: {len(records)} ({tally})")
        print("latest:")
        print(describe(records[-1], patch=False))
    if checkpoint:
        where = checkpoint.get("current_state") or checkpoint.get("state") or "?"
        print(
            f"latest checkpoint: cycle {checkpoint.get('cycle_id', '?')} at {where} "
            f"({checkpoint['path']})"
        )
        for cycle_id in checkpoint.get("resumable_cycles", [])[:5]:
            print(f"  resumable: nomic resume {cycle_id}")
    return EXIT_OK


def _cell(value: object, width: int) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def history_table(records: Sequence[CycleRecord]) -> str:
    columns = [
        ("CYCLE", 10),
        ("FINISHED (UTC)", 16),
        ("TRACK", 11),
        ("OUTCOME", 21),
        ("WINNER", 26),
        ("FILES", 5),
        ("+/-", 9),
        ("SECS", 6),
        ("COMMIT", 12),
    ]
    lines = ["  ".join(name.ljust(width) for name, width in columns).rstrip()]
    for r in records:
        row = [
            r.cycle_id,
            r.finished_at.strftime("%Y-%m-%d %H:%M"),
            r.track.value,
            r.outcome.value,
            r.winner or "-",
            len(r.files),
            f"+{r.lines_added}/-{r.lines_removed}",
            f"{r.duration_s:.0f}",
            (r.commit_sha or "-")[:12],
        ]
        lines.append(
            "  ".join(_cell(v, w).ljust(w) for v, (_, w) in zip(row, columns, strict=True)).rstrip()
        )
    return "\n".join(lines)


def cmd_history(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    history = _history(args)
    records = history.recent(origin=args.origin, limit=args.limit)
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return EXIT_OK
    if not records:
        print(f"no cycles recorded in {history.path}")
        return EXIT_OK
    print(history_table(records))
    return EXIT_OK


# ---------------------------------------------------------------- resume


def cmd_resume(args: argparse.Namespace) -> int:
    configure_logging(args.verbose)
    module = optional_module("nomic_dagster.drivers.state_machine")
    if module is None:
        return fail(
            "resume needs nomic_dagster.drivers.state_machine, which this installation does not have",
            "update nomic_dagster, or start a new cycle with `nomic run`",
        )
    if getattr(args, "state_dir", None):
        os.environ["NOMIC_STATE_DIR"] = args.state_dir
    checkpoint_dir = args.checkpoint_dir  # None: the state machine's default
    machine = module.create_nomic_state_machine(checkpoint_dir=checkpoint_dir)
    with Progress(heartbeat_s=args.heartbeat, enabled=not args.quiet).attached():
        try:
            result = _wait(machine.resume_from_checkpoint(args.cycle_id))
        except (ValueError, FileNotFoundError, KeyError) as exc:
            return fail(
                f"cannot resume cycle {args.cycle_id!r}: {exc}",
                "see `nomic status` for the latest checkpoint, or `nomic history`",
            )
    if isinstance(result, CycleRecord):
        print(describe(result, patch=False))
        return exit_code_for([result])
    if isinstance(result, list) and all(isinstance(r, CycleRecord) for r in result) and result:
        for record in result:
            print(describe(record, patch=False))
        return exit_code_for(result)
    record = CycleHistory(state_dir()).get(args.cycle_id)
    if record is not None:
        print(describe(record, patch=False))
        return exit_code_for([record])
    print(f"cycle {args.cycle_id} resumed: {result!r}")
    return EXIT_OK


# ---------------------------------------------------------------- approval


def _approvals_root(args: argparse.Namespace) -> Path:
    if getattr(args, "state_dir", None):
        os.environ["NOMIC_STATE_DIR"] = args.state_dir
    return state_dir()


def cmd_pending(args: argparse.Namespace) -> int:
    store = ApprovalStore(_approvals_root(args))
    parked = store.pending()
    if args.json:
        print(json.dumps([p.model_dump(mode="json") for p in parked], indent=2))
        return EXIT_OK
    if not parked:
        print(f"no cycle is waiting for approval ({store.path})")
        return EXIT_OK
    for p in parked:
        d = p.design
        print(f"cycle {p.cycle_id} [{p.track}] {p.status} since {p.parked_at:%Y-%m-%d %H:%M} UTC")
        print(f"  goal:    {p.goal}")
        print(f"  target:  {p.origin} {p.base}")
        print(f"  design:  {d.title} by {d.agent}, risk {d.risk} (hash {p.design_hash[:12]})")
        print(f"  files:   {', '.join(p.planned_files)}")
        for i, step in enumerate(d.steps, 1):
            print(f"    {i}. {step}")
        print(f"  tests:   {d.test_plan}")
        if p.decision is not None:
            print(f"  decided: {p.decision.decision} by {p.decision.who}")
        print(f"  approve: nomic approve {p.cycle_id}    reject: nomic reject {p.cycle_id}")
    return EXIT_OK


def cmd_approve(args: argparse.Namespace) -> int:
    configure_logging(args.verbose)
    root = _approvals_root(args)
    with Progress(heartbeat_s=args.heartbeat, enabled=not args.quiet).attached():
        decision, record = approve(
            args.cycle_id,
            who=args.by,
            note=args.note or "",
            expires_in_hours=args.expires_in_hours,
            expected_hash=args.design_hash,
            root=root,
            run=not args.no_run,
        )
    print(
        f"cycle {decision.cycle_id}: approved by {decision.who} at "
        f"{decision.decided_at:%Y-%m-%d %H:%M:%S} UTC (design {decision.design_hash[:12]})"
    )
    if record is None:
        print(f"run it later: nomic approve {decision.cycle_id}, or the nomic_approve job")
        return EXIT_OK
    print(describe(record, patch=False))
    return exit_code_for([record])


def cmd_reject(args: argparse.Namespace) -> int:
    configure_logging(args.verbose)
    decision, record = reject(
        args.cycle_id,
        who=args.by,
        note=args.note or "",
        expected_hash=args.design_hash,
        root=_approvals_root(args),
    )
    print(
        f"cycle {decision.cycle_id}: rejected by {decision.who} at "
        f"{decision.decided_at:%Y-%m-%d %H:%M:%S} UTC (design {decision.design_hash[:12]})"
    )
    print(describe(record, patch=False))
    return EXIT_OK


# ---------------------------------------------------------------- metrics server


def cmd_phases(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps([spec.model_dump(mode="json") for spec in PHASES.values()], indent=2))
    else:
        print(phases_table())
    return EXIT_OK


def cmd_metrics_server(args: argparse.Namespace) -> int:
    if args.multiproc_dir:
        Path(args.multiproc_dir).mkdir(parents=True, exist_ok=True)
        os.environ[metrics.MULTIPROC_ENV] = str(Path(args.multiproc_dir).resolve())
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a port number")
    try:
        server = metrics.start_metrics_server(args.port, args.addr)
    except OSError as exc:
        return fail(
            f"cannot serve metrics on {args.addr}:{args.port}: {exc}",
            "pick another --port (0 picks a free one), or stop the process holding it",
        )
    source = os.environ.get(metrics.MULTIPROC_ENV)
    extra = f" (every process writing to {source})" if source else " (this process only)"
    print(f"serving nomic metrics at {server.url}{extra}; Ctrl-C stops", flush=True)
    while True:
        time.sleep(3600)


# ---------------------------------------------------------------- the parser


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    """-v, -q and --heartbeat: shared by `nomic` and the scripts."""
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs of nomic_dagster")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--heartbeat",
        type=float,
        default=None,
        metavar="SECONDS",
        help="while a phase runs, say what it is doing this often (default: $NOMIC_PROGRESS_S, "
        "else 5; 0: never)",
    )


def build_parser() -> Parser:
    parser = Parser(
        prog="nomic",
        description=__doc__.split("\n\n")[0]
        + "\n\nExit codes: 0 success, 1 failure or bad input, 130 on Ctrl-C.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    run = sub.add_parser(
        "run",
        help=f"run one cycle ({', '.join(PHASES)})",
        description="Run cycles on a repository and print what each did. The cycle works in "
        "its own worktree; the only change to the repository is the nomic/<track>/<cycle_id> "
        "branch of a verified commit. Exit 0 when the cycles ran (committed, or a gate "
        "closed), 1 on bad input or an internal error, 130 on Ctrl-C.",
        formatter_class=HelpFormatter,
    )
    add_settings_arguments(run)
    run.add_argument("--cycles", type=int, default=1, help="how many cycles to run")
    run.add_argument(
        "--max-consecutive-failures",
        type=int,
        default=3,
        help="stop after this many cycles in a row without a commit",
    )
    run.add_argument("--checkpoint-dir", help="where the state machine keeps checkpoints")
    run.add_argument("--json", action="store_true", help="print the cycle records as JSON")
    add_output_arguments(run)
    run.set_defaults(fn=cmd_run)

    status = sub.add_parser(
        "status",
        help="the latest cycle and checkpoint",
        description="Show the latest cycle's record, the tally of outcomes and the newest "
        "checkpoint.",
        formatter_class=HelpFormatter,
    )
    status.add_argument("--state-dir", help="nomic's state folder")
    status.add_argument("--checkpoint-dir", help="checkpoint folder (default: STATE/checkpoints)")
    status.add_argument("--json", action="store_true", help="print as JSON")
    status.set_defaults(fn=cmd_status)

    history = sub.add_parser(
        "history",
        help="a table of recent cycles",
        description="Recent cycles from the state folder's cycles.jsonl, oldest first.",
        formatter_class=HelpFormatter,
    )
    history.add_argument("--limit", type=int, default=20, help="how many cycles")
    history.add_argument("--origin", help="only cycles on this target (path, URL or 'demo')")
    history.add_argument("--state-dir", help="nomic's state folder")
    history.add_argument("--json", action="store_true", help="print the records as JSON")
    history.set_defaults(fn=cmd_history)

    resume = sub.add_parser(
        "resume",
        help="continue a cycle from its checkpoint",
        description="Continue an interrupted or paused cycle from its last checkpoint "
        "(through the state machine).",
        formatter_class=HelpFormatter,
    )
    resume.add_argument("cycle_id", help="the cycle to resume (see `nomic status`)")
    resume.add_argument("--checkpoint-dir", help="checkpoint folder (default: the state machine's)")
    resume.add_argument("--state-dir", help="nomic's state folder")
    add_output_arguments(resume)
    resume.set_defaults(fn=cmd_resume)

    pending = sub.add_parser(
        "pending",
        help="cycles waiting for approval, with their designs",
        description="Cycles that stopped after DESIGN (require_approval) and wait for a "
        "person: the design, its hash, the planned files and how to approve or reject.",
        formatter_class=HelpFormatter,
    )
    pending.add_argument("--state-dir", help="nomic's state folder")
    pending.add_argument("--json", action="store_true", help="print as JSON")
    pending.set_defaults(fn=cmd_pending)

    for name, verb in (("approve", "approve"), ("reject", "reject")):
        decide = sub.add_parser(
            name,
            help=f"{verb} the design of a cycle awaiting approval",
            description=(
                "Record the approval (who, when, the design's hash, an optional expiry) and run "
                f"the cycle from {resume_phases()[0].name}: {', '.join(resume_phases())}. "
                f"{', '.join(p for p in PHASES if p not in resume_phases()).capitalize()} "
                "are not run again."
                if name == "approve"
                else "Record the rejection (who, when, the design's hash, why); the cycle ends "
                "rejected_by_human."
            ),
            formatter_class=HelpFormatter,
        )
        decide.add_argument("cycle_id", help="the cycle (see `nomic pending`)")
        decide.add_argument("--by", help="who decides (default: $USER, else git user.name)")
        decide.add_argument("--note", help="why (stored with the decision)")
        decide.add_argument(
            "--design-hash",
            metavar="SHA",
            help="the design hash you reviewed (or a prefix): refused if the design changed",
        )
        decide.add_argument("--state-dir", help="nomic's state folder")
        if name == "approve":
            decide.add_argument(
                "--expires-in-hours",
                type=float,
                metavar="HOURS",
                help="the approval is refused if not acted on within this many hours",
            )
            decide.add_argument(
                "--no-run",
                action="store_true",
                help="only record the approval (run it later: the nomic_approve job)",
            )
            add_output_arguments(decide)
            decide.set_defaults(fn=cmd_approve)
        else:
            decide.add_argument("-v", "--verbose", action="store_true", help="debug logs")
            decide.set_defaults(fn=cmd_reject)

    phases = sub.add_parser(
        "phases",
        help="the phases of a cycle, with their timeouts and retries",
        description="The phase table every driver reads: each phase's timeout per attempt, "
        "retries after the first attempt, whether its exhausted failure fails the cycle "
        "(critical), whether it calls models (the nomic_llm pool), whether a failed cycle can "
        "be re-executed from it, and whether an approved design resumes at it.",
        formatter_class=HelpFormatter,
    )
    phases.add_argument("--json", action="store_true", help="print as JSON")
    phases.set_defaults(fn=cmd_phases)

    env_port = os.environ.get(PORT_ENV, "").strip()
    serve = sub.add_parser(
        "metrics-server",
        help="serve the Prometheus metrics over HTTP",
        description="Serve /metrics until Ctrl-C. With --multiproc-dir (or "
        "$PROMETHEUS_MULTIPROC_DIR) it reports every process that writes its samples to that "
        "folder: set the same variable for `dagster dev`, run workers and `nomic run`.",
        formatter_class=HelpFormatter,
    )
    serve.add_argument(
        "--port",
        type=int,
        default=int(env_port) if env_port.isdigit() else DEFAULT_PORT,
        help=f"port (0: any free port; default ${PORT_ENV} or {DEFAULT_PORT})",
    )
    serve.add_argument("--addr", default=DEFAULT_ADDR, help="address to listen on")
    serve.add_argument(
        "--multiproc-dir",
        help="prometheus multiprocess folder to aggregate (default: $PROMETHEUS_MULTIPROC_DIR)",
    )
    serve.set_defaults(fn=cmd_metrics_server)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help(sys.stderr)
        return EXIT_FAILURE
    return guarded_main(lambda: args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
