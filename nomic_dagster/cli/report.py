"""`nomic-report`: what the last cycle (or a named one) did, and the commit it landed."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nomic_dagster.core.records import CycleRecord
from nomic_dagster.core.settings import state_dir
from nomic_dagster.cycle.history import CycleHistory
from nomic_dagster.infra.git import git


def describe(record: CycleRecord, patch: bool = True) -> str:
    lines = [
        f"cycle {record.cycle_id} ({record.track.value}) on {record.origin}: {record.outcome.value}",
        f"  goal:    {record.goal.text}",
        f"  reason:  {record.reason}",
    ]
    if record.winner:
        debate = " (debate changed the vote-only winner)" if record.changed_by_debate else ""
        lines.append(f"  winner:  {record.winner} of {record.proposals} proposals{debate}")
    durations = ", ".join(f"{k} {v:.1f}s" for k, v in record.phase_durations.items())
    lines.append(f"  phases:  {durations}")
    if record.commit_sha:
        lines.append(f"  commit:  {record.commit_sha} on {record.branch} in {record.repo}")
        fmt = "--format=%n%H%nAuthor: %an <%ae>%n%n%B"
        show = ["show", "--stat", fmt, record.commit_sha]
        if patch:
            show.insert(2, "--patch")
        lines.append(git(Path(record.repo), *show, check=False).rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nomic-report", description="Show what a nomic cycle did and the commit it landed."
    )
    parser.add_argument("cycle_id", nargs="?", help="a cycle id (default: the latest cycle)")
    parser.add_argument(
        "--state-dir",
        help="nomic's state folder (default: $NOMIC_STATE_DIR, else $DAGSTER_HOME/nomic, else "
        ".dagster_home/nomic of the nomic_dagster checkout; README: The state folder)",
    )
    parser.add_argument("--no-patch", action="store_true", help="show the file list, not the diff")
    args = parser.parse_args(argv)
    if args.state_dir:
        os.environ["NOMIC_STATE_DIR"] = args.state_dir
    history = CycleHistory(state_dir())
    record = (
        history.get(args.cycle_id) if args.cycle_id else next(iter(reversed(history.all())), None)
    )
    if record is None:
        what = f"cycle {args.cycle_id!r}" if args.cycle_id else "any cycle"
        print(f"no record of {what} in {history.path}", file=sys.stderr)
        print("  fix: run a cycle first (make demo), or pass --state-dir", file=sys.stderr)
        return 1
    print(describe(record, patch=not args.no_patch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
