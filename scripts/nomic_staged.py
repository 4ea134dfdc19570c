#!/usr/bin/env python
"""Run a nomic cycle one phase at a time, with each phase's state stored as JSON.

    python scripts/nomic_staged.py context --goal "..."   # the repository you are in (or --repo PATH)
    python scripts/nomic_staged.py debate        # reads context.json, writes debate.json
                                                 # (no context.json: runs context first)
    python scripts/nomic_staged.py design
    python scripts/nomic_staged.py implement
    python scripts/nomic_staged.py verify
    python scripts/nomic_staged.py commit        # only ever after a passed verify
    python scripts/nomic_staged.py all --repo PATH   # every phase in one go
    python scripts/nomic_staged.py discard       # drop an unfinished staged cycle

Each phase is `nomic_dagster.cycle.steps.run_phase` on the `CycleState` the previous phase left
in `<dir>/<previous>.json` (or `--state-file`); its result goes to `<dir>/<phase>.json`.
When a phase ends the cycle (a gate closed, or the commit landed) the worktree is removed
and the cycle record is written to `<dir>/record.json` and to the cycle history. A cycle
that failed verification never reaches commit, in `all` or phase by phase.

Exit codes: 0 the phase ran and the cycle goes on, or the commit landed; 1 the cycle
ended without a commit, or bad input; 130 on Ctrl-C (the cycle is ended and cleaned up).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from nomic_dagster.cli.main import (
    EXIT_FAILURE,
    EXIT_OK,
    HelpFormatter,
    Parser,
    Progress,
    UsageError,
    add_output_arguments,
    add_settings_arguments,
    cli_runtime,
    configure_logging,
    fail,
    guarded_main,
    run_phases,
    settings_from_args,
)
from nomic_dagster.cli.report import describe
from nomic_dagster.core.phases import PHASES
from nomic_dagster.core.records import CycleRecord, Outcome, Phase
from nomic_dagster.core.settings import CycleSettings, state_dir
from nomic_dagster.core.state import CycleState
from nomic_dagster.cycle.finish import finish_cycle
from nomic_dagster.cycle.steps import start_cycle
from nomic_dagster.infra.git import close_workspace

ORDER = list(PHASES)  # the phase table's order
# every settings option (one per CycleSettings field, and --protect)
SETTINGS_OPTIONS = (*CycleSettings.model_fields, "protect")


def phase_file(folder: Path, phase: Phase) -> Path:
    return folder / f"{phase.value}.json"


def save(path: Path, state: CycleState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(state.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(path)


def load(path: Path) -> CycleState:
    try:
        return CycleState.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"state file {path} does not exist") from None
    except (ValidationError, ValueError) as exc:
        raise UsageError(f"{path} is not a cycle state written by nomic_staged: {exc}") from None


def latest_state(folder: Path) -> tuple[Phase, CycleState] | None:
    """The newest phase file in `folder` that belongs to the cycle of its context.json."""
    first = phase_file(folder, Phase.CONTEXT)
    if not first.exists():
        return None
    cycle_id = load(first).cycle_id
    latest: tuple[Phase, CycleState] | None = None
    for phase in ORDER:
        path = phase_file(folder, phase)
        if path.exists():
            state = load(path)
            if state.cycle_id == cycle_id:
                latest = (phase, state)
    return latest


def summarize(phase: Phase, state: CycleState) -> str:
    """What the phase decided, for a person deciding whether to go on."""
    lines = [f"{phase.value}: done in {state.phase_durations.get(phase.value, 0):.2f}s"]
    if phase is Phase.CONTEXT and state.context:
        c = state.context
        lines.append(
            f"  {len(c.files)} files, {len(c.findings)} ruff findings, "
            f"{c.tests.collected} tests collected (baseline {'green' if c.tests.passed else 'red'})"
        )
    elif phase is Phase.DEBATE and state.debate:
        d = state.debate
        for p in d.proposals:
            lines.append(f"  proposal {p.id}: {p.title}")
        lines.append(f"  tally {d.consensus.tally} -> winner {d.consensus.winner_id}")
        for agent, failure in d.agent_failures.items():
            lines.append(f"  agent {agent} dropped out: {failure}")
    elif phase is Phase.DESIGN and state.design:
        lines.append(design_text(state))
    elif phase is Phase.IMPLEMENT and state.changeset:
        cs = state.changeset
        lines.append(
            f"  {len(cs.files)} files, +{cs.lines_added}/-{cs.lines_removed}: {', '.join(cs.paths)}"
        )
        if cs.summary:
            lines.append(f"  {cs.summary}")
    elif phase is Phase.VERIFY and state.verification:
        for g in state.verification.gates:
            lines.append(f"  {'ok  ' if g.passed else 'FAIL'} {g.name} {g.detail[:120]}")
    return "\n".join(lines)


def design_text(state: CycleState) -> str:
    d = state.design
    if d is None:
        return "  (no design)"
    steps = "\n".join(f"    {i}. {s}" for i, s in enumerate(d.steps, 1))
    return (
        f"  design {d.title!r} by {d.agent} (risk {d.risk})\n"
        f"  files: {', '.join(d.files)}\n  steps:\n{steps}\n  test plan: {d.test_plan}\n"
        f"  rationale: {d.rationale}"
    )


def finish(state: CycleState, folder: Path) -> int:
    record = finish_cycle(state)
    write_record(folder, record)
    print(describe(record, patch=False))
    return EXIT_OK if record.outcome is Outcome.COMMITTED else EXIT_FAILURE


def write_record(folder: Path, record: CycleRecord) -> None:
    (folder / "record.json").write_text(record.model_dump_json(indent=2), encoding="utf-8")


def _settings_given(args: argparse.Namespace) -> list[str]:
    return [
        "--" + name.replace("_", "-")
        for name in SETTINGS_OPTIONS
        if getattr(args, name, None) is not None
    ]


def run_staged(args: argparse.Namespace) -> int:
    configure_logging(args.verbose)
    folder = Path(args.dir).expanduser() if args.dir else state_dir() / "staged"
    if args.state_dir and not args.dir:
        folder = Path(args.state_dir).expanduser() / "staged"
    folder = folder.resolve()
    progress = Progress(heartbeat_s=args.heartbeat, enabled=not args.quiet)

    if args.phase == "discard":
        return discard(args, folder)

    if args.phase in ("context", "all"):
        phases = ORDER if args.phase == "all" else [Phase.CONTEXT]
        started = start_staged(args, folder, progress, phases)
        if isinstance(started, int):
            return started
        state = started
        if args.phase == "context" and not state.ended:
            print(f"next: python scripts/nomic_staged.py debate --dir {folder}")
            return EXIT_OK
        return finish(state, folder)

    phase = Phase(args.phase)
    previous = ORDER[ORDER.index(phase) - 1]
    source = Path(args.state_file).expanduser() if args.state_file else phase_file(folder, previous)
    if phase is Phase.DEBATE and not args.state_file and not source.exists():
        # As in the seed, `nomic_staged.py debate` works on its own: the context it reads
        # is made first (from the settings options, which therefore count here).
        print(
            f"note: no context phase output at {source}: running the context phase first",
            file=sys.stderr,
        )
        started = start_staged(args, folder, progress, [Phase.CONTEXT])
        if isinstance(started, int):
            return started
        if started.ended:
            return finish(started, folder)
    else:
        given = _settings_given(args)
        if given:
            print(
                f"note: {', '.join(given)} ignored: after context the settings come from the state",
                file=sys.stderr,
            )
    if not source.exists():
        raise UsageError(
            f"no state from the {previous.value} phase at {source}: run "
            f"`nomic_staged.py {previous.value}` first (or pass --state-file)"
        )
    state = load(source)
    if state.ended:
        return fail(
            f"cycle {state.cycle_id} already ended: {state.outcome.value if state.outcome else ''} "
            f"— {state.reason}",
            "start a new cycle with `nomic_staged.py context`",
        )
    if previous.value not in state.phase_durations:
        raise UsageError(
            f"{source} is cycle {state.cycle_id} before its {previous.value} phase; "
            f"run `nomic_staged.py {previous.value}` first"
        )
    if phase.value in state.phase_durations:
        raise UsageError(f"cycle {state.cycle_id} already ran its {phase.value} phase")
    target = phase_file(folder, phase)
    if target.exists() and load(target).cycle_id == state.cycle_id:
        raise UsageError(
            f"the {phase.value} phase of cycle {state.cycle_id} already ran; its result is {target}"
        )
    with cli_runtime(state.settings) as runtime, progress.attached():
        state = run_phases(state, [phase], runtime, after_phase=lambda p, s: save(target, s))
    if state.ended:
        return finish(state, folder)
    print(summarize(phase, state))
    following = ORDER[ORDER.index(phase) + 1]
    print(f"next: python scripts/nomic_staged.py {following.value} --dir {folder}")
    return EXIT_OK


def start_staged(
    args: argparse.Namespace, folder: Path, progress: Progress, phases: list[Phase]
) -> CycleState | int:
    """A new staged cycle from the settings options, run through `phases` (from CONTEXT on,
    each saved to its file). An exit code instead when `folder` holds an unfinished cycle."""
    unfinished = latest_state(folder)
    if unfinished and not unfinished[1].ended:
        phase, state = unfinished
        return fail(
            f"{folder} holds the unfinished cycle {state.cycle_id} (last phase: {phase.value})",
            f"continue it, drop it with `nomic_staged.py discard --dir {folder}`, "
            "or use another --dir",
        )
    for phase in ORDER:  # files of an earlier, finished cycle
        phase_file(folder, phase).unlink(missing_ok=True)
    (folder / "record.json").unlink(missing_ok=True)
    settings = settings_from_args(args)
    folder.mkdir(parents=True, exist_ok=True)
    with cli_runtime(settings) as runtime, progress.attached():
        state = start_cycle(settings)
        state = run_phases(
            state, phases, runtime, after_phase=lambda p, s: save(phase_file(folder, p), s)
        )
    print(f"cycle {state.cycle_id}: phase files in {folder}")
    if phases == [Phase.CONTEXT] and not state.ended:
        print(summarize(Phase.CONTEXT, state))
    return state


def discard(args: argparse.Namespace, folder: Path) -> int:
    if args.state_file:
        state = load(Path(args.state_file).expanduser())
    else:
        found = latest_state(folder)
        if found is None:
            return fail(f"no staged cycle in {folder}")
        state = found[1]
    if state.ended:
        return fail(f"cycle {state.cycle_id} already ended ({state.outcome}); nothing to discard")
    if state.workspace is not None:
        close_workspace(state.workspace)
    for phase in ORDER:
        path = phase_file(folder, phase)
        if path.exists() and load(path).cycle_id == state.cycle_id:
            path.unlink()
    print(f"discarded cycle {state.cycle_id}: worktree removed, nothing committed")
    return EXIT_OK


def build_parser() -> Parser:
    parser = Parser(
        prog="nomic_staged.py",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "phase",
        choices=[*(p.value for p in ORDER), "all", "discard"],
        help="the phase to run (each reads the previous phase's JSON), all of them, or "
        "discard an unfinished staged cycle",
    )
    parser.add_argument("--dir", help="folder of the phase JSON files (default: STATE_DIR/staged)")
    parser.add_argument(
        "--state-file",
        help="read the input state from this file instead of DIR/<previous phase>.json",
    )
    add_output_arguments(parser)
    add_settings_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded_main(lambda: run_staged(args))


if __name__ == "__main__":
    sys.exit(main())
