"""A small append-only log of finished cycles, so the next cycle's context can learn from them."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Collection
from pathlib import Path

from nomic_dagster.core.records import CycleRecord


class CycleHistory:
    """`cycles.jsonl` under the state folder: one CycleRecord per line, newest last."""

    def __init__(self, root: Path) -> None:
        self.path = root / "cycles.jsonl"

    def append(self, record: CycleRecord, replace_outcomes: Collection[str] = ()) -> bool:
        """Append the record; False (and nothing written) when its cycle is already recorded,
        as when a resumed cycle finishes a second time — unless the recorded outcome is in
        `replace_outcomes` (a cycle re-executed from failure): then the new record replaces it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = record.model_dump_json() + "\n"
        with self.path.open("a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # concurrent runs append whole lines
            fh.seek(0)
            lines = fh.readlines()
            earlier = [x for x in lines if _cycle_id(x) == record.cycle_id]
            if not earlier:
                fh.write(line)  # append mode: always at the end
                return True
            if not all(_outcome(x) in replace_outcomes for x in earlier):
                return False
            kept = [x for x in lines if _cycle_id(x) != record.cycle_id]
            # Rewritten in place (not replaced by a new file): a writer waiting on the lock
            # holds this file open, and its line must land in the file that stays.
            fh.truncate(0)
            fh.write("".join(kept) + line)
            return True

    def all(self) -> list[CycleRecord]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    records.append(CycleRecord.model_validate_json(line))
                except ValueError:
                    continue  # a line from another format version: skip, never fail a cycle on it
        return records

    def recent(self, origin: str | None = None, limit: int = 5) -> list[CycleRecord]:
        records = [r for r in self.all() if origin is None or r.origin == origin]
        return records[-limit:]

    def get(self, cycle_id: str) -> CycleRecord | None:
        return next((r for r in reversed(self.all()) if r.cycle_id == cycle_id), None)


def _outcome(line: str) -> str | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value.get("outcome") if isinstance(value, dict) else None


def _cycle_id(line: str) -> str | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value.get("cycle_id") if isinstance(value, dict) else None
