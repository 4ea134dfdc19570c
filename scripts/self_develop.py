#!/usr/bin/env python
"""Let nomic improve a repository by itself: cycles per track, with progress as they run.

    python scripts/self_develop.py --goal "Improve test coverage" --dry-run
    python scripts/self_develop.py --goal "Tidy the code" --repo PATH --tracks developer qa
    python scripts/self_develop.py --repo PATH --require-approval   # stop after the design
    nomic pending; nomic approve CYCLE_ID                            # then a person decides

Each track gets up to --max-cycles cycles (through NomicLoop and the state machine when
this installation has them, else the plain cycle driver). A cycle works in its own
worktree; the only change to the repository is a nomic/<track>/<cycle_id> branch per
verified commit (and the base branch, with --auto-merge).

Exit codes: 0 the cycles ran (committed, or a gate closed); 1 bad input or an internal
error; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from nomic_dagster.agents import build_panel
from nomic_dagster.cli.main import (
    EXIT_OK,
    TRACKS,
    HelpFormatter,
    Parser,
    Progress,
    UsageError,
    add_output_arguments,
    add_settings_arguments,
    cli_runtime,
    configure_logging,
    exit_code_for,
    fail,
    guarded_main,
    resume_hint_on_interrupt,
    run_cycles,
    run_phases,
    runner_name,
    settings_from_args,
)
from nomic_dagster.cli.report import describe
from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.records import CycleRecord, Outcome, Phase, utcnow
from nomic_dagster.core.settings import CycleSettings, state_dir
from nomic_dagster.cycle.finish import finish_cycle
from nomic_dagster.cycle.runtime import CycleRuntime
from nomic_dagster.cycle.steps import start_cycle
from nomic_dagster.infra.git import DEMO_TARGET, is_url, validate_repo

BUDGET_NOTE = (
    "for the whole run, every track and cycle together: each cycle may spend what the "
    "earlier ones left, and the run stops at the first cycle that ends budget_exhausted"
)


def describe_target(settings: CycleSettings) -> list[str]:
    """Where the cycles will run (the settings' target, already chosen by `choose_target`
    at the entry point), found with read-only git commands (BadInput if unusable)."""
    target = settings.repo or ""
    if target == DEMO_TARGET:
        return ["target:   the bundled demo (a fresh copy of examples/demo_repo per cycle)"]
    if is_url(target):
        return [f"target:   {target} (cloned into the state folder when a cycle starts)"]
    path = Path(target).expanduser()
    if not path.is_dir():
        raise BadInput(f"repository path {str(path)!r} does not exist", "pass --repo a checkout")
    root, base_branch, base_sha = validate_repo(path, settings.base_branch, target)
    return [f"target:   {root}", f"base:     {base_branch} at {base_sha[:12]}"]


def plan_lines(args: argparse.Namespace, settings: CycleSettings, tracks: list[str]) -> list[str]:
    panel = build_panel(settings.agents)  # unknown agents fail here, before anything runs
    lines = [
        f"goal:     {settings.goal}",
        *describe_target(settings),
        f"tracks:   {', '.join(tracks)} (branches nomic/<track>/<cycle_id>)",
        f"agents:   {', '.join(a.name for a in panel)}",
        f"rule:     {settings.consensus_rule}; at most {settings.max_files} files per design",
        f"tests:    {settings.test_command} (timeout {settings.test_timeout_s}s)",
        f"cycles:   up to {args.max_cycles} per track, stop after "
        f"{args.max_consecutive_failures} in a row without a commit",
        f"runner:   {runner_name()}",
        "approval: "
        + ("stop after DESIGN until `nomic approve`" if args.require_approval else "none"),
        f"merge:    {'fast-forward the base after a verified commit' if settings.auto_merge else 'leave the branch for review'}",
        "budget:   "
        + (
            f"${args.budget_limit:.4f} ({BUDGET_NOTE})"
            if args.budget_limit is not None
            else "none for the run"
        )
        + (
            f"; at most ${settings.budget_usd:.4f} per cycle"
            if settings.budget_usd is not None
            else ""
        ),
        f"protected: {', '.join(settings.protected_paths)}",
    ]
    return lines


def design_for_approval(settings: CycleSettings, runtime: CycleRuntime) -> int:
    """Context, debate and design; the design waits, durably, for `nomic approve|reject`."""
    state = start_cycle(settings.model_copy(update={"require_approval": True}))
    state = run_phases(state, [Phase.CONTEXT, Phase.DEBATE, Phase.DESIGN], runtime)
    record = finish_cycle(state)  # parks a cycle awaiting approval in the approval store
    if record.outcome is not Outcome.AWAITING_APPROVAL:
        print(describe(record, patch=False))
        return exit_code_for([record])
    d = state.design
    assert d is not None and state.debate is not None
    print(f"cycle {state.cycle_id}: design awaiting approval (nothing implemented)")
    print(f"  winner:  {state.debate.consensus.winner_id} (tally {state.debate.consensus.tally})")
    print(f"  design:  {d.title} by {d.agent}, risk {d.risk}")
    print(f"  files:   {', '.join(d.files)}")
    for i, step in enumerate(d.steps, 1):
        print(f"  {i}. {step}")
    print(f"  tests:   {d.test_plan}")
    print(f"  why:     {d.rationale}")
    print(
        f"approve:  nomic approve {state.cycle_id}  (implement, verify, commit; or the nomic_approve job)"
    )
    print(f"reject:   nomic reject {state.cycle_id}")
    return EXIT_OK


def run_budget_left(limit: float | None, records: list[CycleRecord]) -> float | None:
    """What the run may still spend (None: no run budget)."""
    if limit is None:
        return None
    return max(0.0, limit - sum(r.cost_usd for r in records))


def write_summary(
    args: argparse.Namespace, settings: CycleSettings, records: list[CycleRecord]
) -> Path:
    folder = state_dir(settings) / "self_develop"
    folder.mkdir(parents=True, exist_ok=True)
    path = (
        folder
        / f"{utcnow().strftime('%Y%m%dT%H%M%S')}-{records[0].cycle_id if records else 'none'}.json"
    )
    path.write_text(
        json.dumps(
            {
                "goal": settings.goal,
                "tracks": args.tracks,
                "max_cycles": args.max_cycles,
                "budget_limit_usd": args.budget_limit,
                "budget_enforced": args.budget_limit is not None,
                "cost_usd": round(sum(r.cost_usd for r in records), 8),
                "runner": runner_name(),
                "cycles": [
                    {
                        "cycle_id": r.cycle_id,
                        "track": r.track.value,
                        "outcome": r.outcome.value,
                        "cost_usd": r.cost_usd,
                        "llm_calls": r.llm_calls,
                        "commit_sha": r.commit_sha,
                        "branch": r.branch,
                    }
                    for r in records
                ],
            },
            indent=2,
        )
    )
    return path


def self_develop(args: argparse.Namespace) -> int:
    configure_logging(args.verbose)
    if args.max_cycles < 1:
        raise UsageError("--max-cycles must be at least 1")
    if args.max_consecutive_failures < 1:
        raise UsageError("--max-consecutive-failures must be at least 1")
    if args.budget_limit is not None and args.budget_limit < 0:
        raise UsageError("--budget-limit must not be negative")
    base = settings_from_args(args)
    tracks = args.tracks or [base.track or "developer"]
    args.tracks = tracks
    print("self_develop plan:")
    for line in plan_lines(args, base, tracks):
        print(f"  {line}")
    if args.dry_run:
        print("dry run: nothing was run and nothing was changed")
        return EXIT_OK

    progress = Progress(heartbeat_s=args.heartbeat, enabled=not args.quiet)
    records: list[CycleRecord] = []
    started = time.monotonic()
    with (
        cli_runtime(base) as runtime,
        progress.attached(),
        resume_hint_on_interrupt(base, args.checkpoint_dir),
    ):
        for track in tracks:
            settings = base.model_copy(update={"track": track})
            left = run_budget_left(args.budget_limit, records)
            if left is not None and left <= 0:
                print(f"budget: ${args.budget_limit:.4f} spent; track {track} not started")
                break
            if args.require_approval:
                if left is not None:  # the design steps are the run's spend too
                    own = settings.budget_usd
                    cap = left if own is None else min(own, left)
                    settings = settings.model_copy(update={"budget_usd": cap})
                code = design_for_approval(settings, runtime)
                if code != EXIT_OK:
                    return code
                continue
            records += run_cycles(
                settings,
                runtime,
                max_cycles=args.max_cycles,
                max_consecutive_failures=args.max_consecutive_failures,
                checkpoint_dir=args.checkpoint_dir,
                budget_usd=left,
            )
            if records and records[-1].outcome is Outcome.BUDGET_EXHAUSTED:
                break
    if args.require_approval:
        return EXIT_OK
    for record in records:
        print(describe(record, patch=False))
    summary = write_summary(args, base, records)
    committed = sum(1 for r in records if r.commit_sha)
    spent = sum(r.cost_usd for r in records)
    limit = f" of ${args.budget_limit:.4f}" if args.budget_limit is not None else ""
    print(
        f"{len(records)} cycle(s) in {time.monotonic() - started:.1f}s, {committed} committed, "
        f"cost ${spent:.4f}{limit}; summary {summary}"
    )
    if not records:
        return fail("no cycle ran")
    return exit_code_for(records)


def build_parser() -> Parser:
    parser = Parser(prog="self_develop.py", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--tracks",
        nargs="+",
        choices=TRACKS,
        metavar="TRACK",
        help=f"tracks to run, one after the other ({', '.join(TRACKS)}); default: --track or "
        "developer",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="show the plan (settings, agents, tracks, target) and change nothing",
    )
    parser.add_argument("--max-cycles", type=int, default=1, help="cycles per track")
    parser.add_argument(
        "--max-consecutive-failures",
        type=int,
        default=3,
        help="stop a track after this many cycles in a row without a commit",
    )
    parser.add_argument(
        "--budget-limit", type=float, metavar="USD", help=f"spend limit in USD, {BUDGET_NOTE}"
    )
    approval = parser.add_mutually_exclusive_group()
    approval.add_argument(
        "--require-approval",
        action="store_true",
        help="stop after DESIGN, print the design and exit 0 without implementing; the design "
        "waits for `nomic approve CYCLE_ID` (or `nomic reject`, or the nomic_approve job)",
    )
    approval.add_argument(
        "--no-approval",
        dest="require_approval",
        action="store_false",
        help="run every phase without stopping (the default)",
    )
    parser.add_argument("--checkpoint-dir", help="where the state machine keeps checkpoints")
    add_output_arguments(parser)
    add_settings_arguments(parser, approval=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded_main(lambda: self_develop(args))


if __name__ == "__main__":
    sys.exit(main())
