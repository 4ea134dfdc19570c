"""The approval store: parked cycles and the decisions people took on their designs.

The flow that resumes or ends a decided cycle is `drivers.approval_flow`.

With `require_approval`, a cycle ends DESIGN with the outcome `awaiting_approval` and
`finish_cycle` parks its whole `CycleState` here (the design, the debate, the workspace
coordinates, the model calls paid so far). A person then decides:

    nomic pending                      cycles waiting, with their design and planned files
    nomic approve CYCLE [--by NAME]    record the approval and run IMPLEMENT → VERIFY → COMMIT
    nomic reject CYCLE [--note WHY]    record the rejection; the cycle ends rejected_by_human

or launches the `nomic_approve` Dagster job. Every decision is stored with who, when, the
design's hash and an optional expiry. An approval is honoured only for the design it was
given for (the stored design's hash must match) and only before it expires; the resumed
cycle re-opens its worktree at the base commit and runs the remaining phases with the same
`cycle.run_phase` steps, so context, debate and design are neither re-run nor paid again.

The store is one SQLite file under the state folder (`approvals.sqlite`); every state
change is one transaction, so decisions survive the process and two approvers cannot both
start the same cycle.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.events import EventType, bus
from nomic_dagster.core.records import CycleRecord, Design, Record, utcnow
from nomic_dagster.core.settings import state_dir
from nomic_dagster.core.state import CycleState

log = logging.getLogger("nomic_dagster.cycle.approvals")

DB_NAME = "approvals.sqlite"
Decision = Literal["approve", "reject"]
# awaiting: parked, no decision yet; approved: a person approved, not yet resumed;
# running: the approved cycle was claimed and runs IMPLEMENT onwards; rejected: a person
# rejected it; finished: the cycle's final record is in the history.
ApprovalStatus = Literal["awaiting", "approved", "running", "rejected", "finished"]


class ApprovalDecision(Record):
    """One person's decision on one design."""

    cycle_id: str
    decision: Decision
    who: str
    decided_at: datetime
    design_hash: str  # the design the person decided on (sha256 of its canonical JSON)
    expires_at: datetime | None = None  # an approval not acted on by then is refused
    note: str = ""

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and (now or utcnow()) > self.expires_at


class ParkedCycle(Record):
    """A cycle stopped for approval, as `nomic pending` and the UI show it."""

    cycle_id: str
    status: ApprovalStatus
    track: str
    goal: str
    origin: str
    base: str  # base branch @ sha the cycle started from
    design: Design
    design_hash: str
    planned_files: list[str]
    winner: str | None = None
    run_id: str | None = None
    cost_usd: float = 0.0
    parked_at: datetime
    decision: ApprovalDecision | None = None  # the latest decision, if any
    outcome: str | None = None  # the final outcome once finished


def design_hash(design: Design) -> str:
    """sha256 over the design's canonical JSON: what an approval is bound to."""
    canonical = json.dumps(design.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def default_approver() -> str:
    """$NOMIC_APPROVER, $USER, git's user.name, then the OS account."""
    for name in (os.environ.get("NOMIC_APPROVER"), os.environ.get("USER")):
        if name and name.strip():
            return name.strip()
    try:
        name = subprocess.run(
            ["git", "config", "user.name"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        name = ""
    return name or getpass.getuser()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS approval_cycles (
    cycle_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    design_hash TEXT NOT NULL,
    state_json TEXT NOT NULL,
    parked_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    outcome TEXT
);
CREATE TABLE IF NOT EXISTS approval_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cycle_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    who TEXT NOT NULL,
    decided_at TEXT NOT NULL,
    design_hash TEXT NOT NULL,
    expires_at TEXT,
    note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS approval_decisions_cycle ON approval_decisions (cycle_id, id);
"""


class ApprovalStore:
    """`<state_dir>/approvals.sqlite`: parked cycle states and the decisions on them."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root else state_dir()
        self.path = self.root / DB_NAME

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers queue, readers see whole states)."""
        self.root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    # -- parking ----------------------------------------------------------------------

    def park(self, state: CycleState) -> ParkedCycle:
        """Keep the post-design state of a cycle awaiting approval. Parking the same cycle
        again (a re-run) replaces its state: an approval of the same design stands, one of
        another design no longer counts. A cycle already running, rejected or finished is
        never reopened."""
        if state.design is None:
            raise BadInput(
                f"cycle {state.cycle_id} has no design to approve",
                "only a cycle that finished DESIGN can wait for approval",
            )
        now = utcnow().isoformat()
        digest = design_hash(state.design)
        with self._tx() as db:
            db.execute(
                """INSERT INTO approval_cycles
                       (cycle_id, status, design_hash, state_json, parked_at, updated_at)
                   VALUES (?, 'awaiting', ?, ?, ?, ?)
                   ON CONFLICT (cycle_id) DO UPDATE SET
                       status = CASE WHEN approval_cycles.design_hash = excluded.design_hash
                                THEN approval_cycles.status ELSE 'awaiting' END,
                       design_hash = excluded.design_hash, state_json = excluded.state_json,
                       parked_at = excluded.parked_at, updated_at = excluded.updated_at,
                       outcome = NULL
                   WHERE approval_cycles.status IN ('awaiting', 'approved')""",
                (state.cycle_id, digest, state.model_dump_json(), now, now),
            )
            (status,) = db.execute(
                "SELECT status FROM approval_cycles WHERE cycle_id = ?", (state.cycle_id,)
            ).fetchone()
        if status not in ("awaiting", "approved"):
            raise BadInput(
                f"cycle {state.cycle_id} is already {status}: its design cannot wait for "
                "approval again",
                "start a new cycle (a new cycle id) for a new design",
            )
        parked = self.get(state.cycle_id)
        assert parked is not None
        return parked

    def state(self, cycle_id: str) -> CycleState:
        """The parked state, exactly as DESIGN left it (outcome awaiting_approval)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT state_json FROM approval_cycles WHERE cycle_id = ?", (cycle_id,)
            ).fetchone()
        if row is None:
            raise self._unknown(cycle_id)
        return CycleState.model_validate_json(row[0])

    def get(self, cycle_id: str) -> ParkedCycle | None:
        with self._tx() as db:
            row = db.execute(
                "SELECT cycle_id, status, state_json, parked_at, outcome FROM approval_cycles "
                "WHERE cycle_id = ?",
                (cycle_id,),
            ).fetchone()
            return self._parked(db, row) if row else None

    def pending(self) -> list[ParkedCycle]:
        """Cycles waiting for a decision or for their approved run, oldest first."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT cycle_id, status, state_json, parked_at, outcome FROM approval_cycles "
                "WHERE status IN ('awaiting', 'approved') ORDER BY parked_at"
            ).fetchall()
            return [self._parked(db, row) for row in rows]

    def decisions(self, cycle_id: str) -> list[ApprovalDecision]:
        with self._tx() as db:
            return self._decisions(db, cycle_id)

    # -- deciding ---------------------------------------------------------------------

    def decide(
        self,
        cycle_id: str,
        decision: Decision,
        who: str,
        note: str = "",
        expires_in_hours: float | None = None,
        expected_hash: str | None = None,
    ) -> ApprovalDecision:
        """Record a decision on the stored design. `expected_hash` is the design the person
        reviewed (a prefix is enough): a different stored design is refused."""
        if decision not in ("approve", "reject"):
            raise BadInput(f"decision {decision!r} is not approve or reject", "use one of them")
        if not who.strip():
            raise BadInput("the decision names nobody", "pass who decides (--by NAME)")
        if expires_in_hours is not None and expires_in_hours <= 0:
            raise BadInput(
                f"expiry {expires_in_hours} hours is not in the future",
                "pass a positive number of hours, or none",
            )
        with self._tx() as db:
            row = db.execute(
                "SELECT status, design_hash, state_json FROM approval_cycles WHERE cycle_id = ?",
                (cycle_id,),
            ).fetchone()
            if row is None:
                raise self._unknown(cycle_id)
            status, stored_hash, state_json = row
            if status not in ("awaiting", "approved"):
                raise BadInput(
                    f"cycle {cycle_id} is {status}: there is no design waiting for a decision",
                    "see `nomic pending` for the cycles awaiting approval",
                )
            if expected_hash and not stored_hash.startswith(expected_hash.strip().lower()):
                raise BadInput(
                    f"the design of cycle {cycle_id} changed: it is {stored_hash[:12]}, "
                    f"not the {expected_hash[:12]} you reviewed",
                    "review the current design (`nomic pending`) and decide on it",
                )
            if decision == "reject":
                expires_in_hours = None  # a rejection is final
            elif expires_in_hours is None:
                parked = CycleState.model_validate_json(state_json)
                expires_in_hours = parked.settings.approval_expiry_hours
            now = utcnow()
            made = ApprovalDecision(
                cycle_id=cycle_id,
                decision=decision,
                who=who.strip(),
                decided_at=now,
                design_hash=stored_hash,
                expires_at=now + timedelta(hours=expires_in_hours) if expires_in_hours else None,
                note=note,
            )
            db.execute(
                """INSERT INTO approval_decisions
                       (cycle_id, decision, who, decided_at, design_hash, expires_at, note)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (
                    cycle_id,
                    made.decision,
                    made.who,
                    made.decided_at.isoformat(),
                    made.design_hash,
                    made.expires_at.isoformat() if made.expires_at else None,
                    made.note,
                ),
            )
            db.execute(
                "UPDATE approval_cycles SET status = ?, updated_at = ? WHERE cycle_id = ?",
                ("approved" if decision == "approve" else "rejected", now.isoformat(), cycle_id),
            )
        bus.emit(
            EventType.GATE_DECISION,
            cycle_id,
            gate="human_approval",
            passed=decision == "approve",
            detail=f"{decision} by {made.who}" + (f": {note}" if note else ""),
        )
        return made

    def claim(
        self, cycle_id: str, now: datetime | None = None
    ) -> tuple[CycleState, ApprovalDecision]:
        """Take an approved cycle for its run (approved → running), after checking that the
        approval is for the stored design and has not expired. Only one caller wins."""
        with self._tx() as db:
            row = db.execute(
                "SELECT status, design_hash, state_json FROM approval_cycles WHERE cycle_id = ?",
                (cycle_id,),
            ).fetchone()
            if row is None:
                raise self._unknown(cycle_id)
            status, stored_hash, state_json = row
            decisions = self._decisions(db, cycle_id)
            latest = decisions[-1] if decisions else None
            if status != "approved" or latest is None or latest.decision != "approve":
                hint = {
                    "awaiting": f"approve it first: nomic approve {cycle_id}",
                    "running": "its approved run already started (see `nomic history`)",
                    "rejected": "a person rejected it; start a new cycle",
                    "finished": "it already ended (see `nomic history`)",
                }.get(status, "see `nomic pending`")
                raise BadInput(f"cycle {cycle_id} is {status}, not approved", hint)
            state = CycleState.model_validate_json(state_json)
            assert state.design is not None
            # the state that will run must be exactly the approved design, as it hashes now
            current = design_hash(state.design)
            if current != latest.design_hash or current != stored_hash:
                raise BadInput(
                    f"the design of cycle {cycle_id} changed after {latest.who} approved it "
                    f"(approved {latest.design_hash[:12]}, stored {current[:12]})",
                    f"review the current design and approve it again: nomic approve {cycle_id}",
                )
            if latest.expired(now):
                assert latest.expires_at is not None
                raise BadInput(
                    f"the approval of cycle {cycle_id} by {latest.who} expired at "
                    f"{latest.expires_at:%Y-%m-%d %H:%M:%S} UTC",
                    f"approve it again: nomic approve {cycle_id}",
                )
            db.execute(
                "UPDATE approval_cycles SET status = 'running', updated_at = ? WHERE cycle_id = ?",
                (utcnow().isoformat(), cycle_id),
            )
        return state, latest

    def release(self, cycle_id: str) -> None:
        """Give back a claim whose run did not get going (it failed or was interrupted
        before IMPLEMENT ran): the cycle is approved again, for the next `nomic approve`."""
        with self._tx() as db:
            db.execute(
                "UPDATE approval_cycles SET status = 'approved', updated_at = ? "
                "WHERE cycle_id = ? AND status = 'running'",
                (utcnow().isoformat(), cycle_id),
            )

    def settle(self, record: CycleRecord) -> None:
        """The cycle's final record is written: it is no longer pending."""
        with self._tx() as db:
            db.execute(
                "UPDATE approval_cycles SET status = 'finished', outcome = ?, updated_at = ? "
                "WHERE cycle_id = ? AND status IN ('running', 'rejected', 'approved', 'finished')",
                (record.outcome.value, utcnow().isoformat(), record.cycle_id),
            )

    # -- helpers ----------------------------------------------------------------------

    def _unknown(self, cycle_id: str) -> BadInput:
        return BadInput(
            f"no cycle {cycle_id!r} is waiting for approval in {self.path}",
            "see `nomic pending` (and --state-dir, when the cycle ran with another state folder)",
        )

    def _decisions(self, db: sqlite3.Connection, cycle_id: str) -> list[ApprovalDecision]:
        rows = db.execute(
            "SELECT cycle_id, decision, who, decided_at, design_hash, expires_at, note "
            "FROM approval_decisions WHERE cycle_id = ? ORDER BY id",
            (cycle_id,),
        ).fetchall()
        return [
            ApprovalDecision(
                cycle_id=r[0],
                decision=r[1],
                who=r[2],
                decided_at=datetime.fromisoformat(r[3]),
                design_hash=r[4],
                expires_at=datetime.fromisoformat(r[5]) if r[5] else None,
                note=r[6],
            )
            for r in rows
        ]

    def _parked(self, db: sqlite3.Connection, row: tuple) -> ParkedCycle:
        cycle_id, status, state_json, parked_at, outcome = row
        state = CycleState.model_validate_json(state_json)
        assert state.design is not None
        ws = state.workspace
        decisions = self._decisions(db, cycle_id)
        winner = state.debate.winner if state.debate else None
        return ParkedCycle(
            cycle_id=cycle_id,
            status=status,
            track=state.settings.track_enum.value,
            goal=state.goal.text,
            origin=ws.origin if ws else (state.settings.repo or "demo"),
            base=f"{ws.base_branch}@{ws.base_sha[:12]}" if ws else "",
            design=state.design,
            design_hash=design_hash(state.design),
            planned_files=list(state.design.files),
            winner=winner.id if winner else None,
            run_id=state.run_id,
            cost_usd=round(sum(c.usage.usd for c in state.llm_calls), 8),
            parked_at=datetime.fromisoformat(parked_at),
            decision=decisions[-1] if decisions else None,
            outcome=outcome,
        )


# ---------------------------------------------------------------- the cycle side


def park(state: CycleState) -> ParkedCycle:
    """Called by `finish_cycle` for a cycle ending DESIGN awaiting approval."""
    return ApprovalStore(state_dir(state.settings)).park(state)


def settle(root: Path, record: CycleRecord) -> None:
    """Called by `finish_cycle` for every finished cycle; never raises."""
    if not (root / DB_NAME).exists():
        return
    try:
        ApprovalStore(root).settle(record)
    except Exception:  # the cycle's record is written; a stale pending row is cosmetic
        log.exception("cycle %s: could not mark its approval finished", record.cycle_id)


def approval_hint(cycle_id: str) -> str:
    """How a person approves: the command and the job."""
    return (
        f"nomic approve {cycle_id} (or nomic reject {cycle_id}); in the UI: launch the "
        f"nomic_approve job with cycle_id: {cycle_id}"
    )


__all__ = [
    "ApprovalDecision",
    "ApprovalStore",
    "ParkedCycle",
    "default_approver",
    "design_hash",
    "park",
]
