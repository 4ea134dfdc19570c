"""A small append-only log of finished cycles, so the next cycle's context can learn from them."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

from nomic_dagster.records import CycleRecord


class CycleHistory:
    """`cycles.jsonl` under the state folder: one CycleRecord per line, newest last."""

    def __init__(self, root: Path) -> None:
        self.path = root / "cycles.jsonl"

    def append(self, record: CycleRecord) -> bool:
        """Append the record; False (and nothing written) when its cycle is already recorded,
        as when a resumed cycle finishes a second time."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = record.model_dump_json() + "\n"
        with self.path.open("a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # concurrent runs append whole lines
            fh.seek(0)
            if any(_cycle_id(existing) == record.cycle_id for existing in fh):
                return False
            fh.write(line)  # append mode: always at the end
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


def _cycle_id(line: str) -> str | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value.get("cycle_id") if isinstance(value, dict) else None
