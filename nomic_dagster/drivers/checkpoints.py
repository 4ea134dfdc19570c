"""Checkpoints: the state machine's durable state, one JSON file per cycle.

`checkpoint_<cycle_id>.json` is rewritten after every transition (and when a phase has
finished, before the next transition): the machine state, the previous state, retry
counts, the whole `CycleState` (every phase result so far) and the cycle's event log (the
audit trail). `latest.json` points at the checkpoint saved last.

Every write is atomic: a temporary file in the same folder, fsync, `os.replace`, fsync of
the folder — a reader (or a resume after SIGKILL) sees the old checkpoint or the new one,
never half of one. Cycle ids are checked (`[A-Za-z0-9_-]+`) so no id can name a path
outside the folder. A checkpoint written by a newer format is refused with a clear error,
and every error about a missing or unreadable checkpoint lists the usable ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from nomic_dagster.core.errors import NomicError
from nomic_dagster.core.events import NomicEvent
from nomic_dagster.core.records import CycleRecord, Record, utcnow
from nomic_dagster.core.settings import state_dir
from nomic_dagster.core.state import CycleState
from nomic_dagster.core.states import NomicState

CHECKPOINT_FORMAT = 1
LATEST = "latest.json"
PREFIX = "checkpoint_"
_ID = re.compile(r"^[A-Za-z0-9_-]+$")


class CheckpointError(NomicError, ValueError):
    """A checkpoint cannot be written, found, read or resumed. Nothing was changed."""


def validate_id(cycle_id: str) -> str:
    if not isinstance(cycle_id, str) or not _ID.fullmatch(cycle_id) or len(cycle_id) > 64:
        raise CheckpointError(
            f"cycle id {cycle_id!r} is not a valid checkpoint id: use 1-64 letters, digits, "
            "'_' or '-' (no path separators)"
        )
    return cycle_id


class FailureNote(Record):
    """One failed attempt of a state."""

    state: NomicState
    kind: Literal["error", "timeout", "crash", "handler", "stopped"]
    error: str
    error_type: str | None = None
    at: datetime = Field(default_factory=utcnow)


class Checkpoint(Record):
    format_version: int = CHECKPOINT_FORMAT
    cycle_id: str
    saved_at: datetime = Field(default_factory=utcnow)
    state: NomicState
    previous_state: NomicState | None = None
    resume_to: NomicState | None = None  # where PAUSED goes on resume
    closing_to: NomicState | None = None  # RECOVERY on the way to COMPLETED/FAILED/IDLE
    phase_complete: bool = False  # `state` is a phase whose result is already in `cycle`
    retry_counts: dict[str, int] = Field(default_factory=dict)
    recoveries: int = 0
    transitions: int = 0
    resumes: int = 0
    errors: list[FailureNote] = Field(default_factory=list)
    failure: FailureNote | None = None  # the failure RECOVERY is deciding about
    state_durations: dict[str, float] = Field(default_factory=dict)
    cycle: CycleState | None = None
    record: CycleRecord | None = None  # set once the cycle finished
    events: list[NomicEvent] = Field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.state.is_terminal or self.record is not None

    @property
    def resumable(self) -> bool:
        return not self.ended and (self.cycle is not None)


class CheckpointInfo(BaseModel):
    """One checkpoint file as `list_checkpoints` shows it."""

    path: str
    cycle_id: str
    state: str
    saved_at: datetime | None = None
    size_bytes: int
    outcome: str | None = None
    resumable: bool = False
    error: str | None = None  # why it cannot be used (only with include_unusable)

    def describe(self) -> str:
        when = self.saved_at.strftime("%Y-%m-%d %H:%M:%S") if self.saved_at else "?"
        extra = f", {self.outcome}" if self.outcome else ""
        return f"{self.cycle_id} ({self.state}{extra}, saved {when})"


# ---------------------------------------------------------------- files


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `path` so that it holds either its old content or `data`, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def default_checkpoint_dir() -> Path:
    return state_dir() / "checkpoints"


def ensure_writable(folder: Path) -> Path:
    """Create `folder` if needed and prove a file can be written there (CheckpointError if not)."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CheckpointError(
            f"checkpoint folder {str(folder)!r} is not writable ({exc.strerror or exc}); "
            "fix: pass checkpoint_dir= a folder this process can write, or "
            "enable_checkpoints=False to run without resume"
        ) from exc
    return folder.resolve()


def checkpoint_path(folder: Path, cycle_id: str) -> Path:
    return Path(folder) / f"{PREFIX}{validate_id(cycle_id)}.json"


def _read(path: Path) -> Checkpoint:
    """Parse one file; CheckpointError (without the list of others) when it cannot be used."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {exc}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt (not JSON: {exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt (not a JSON object)")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"checkpoint {str(path)!r} has no format version: not a checkpoint")
    if version > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written in format {version}, newer than this "
            f"nomic_dagster reads (format {CHECKPOINT_FORMAT}); upgrade nomic_dagster to resume it"
        )
    try:
        return Checkpoint.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt ({exc.error_count()} invalid field(s), "
            f"first: {where}: {first.get('msg')})"
        ) from None


def _files(folder: Path) -> list[Path]:
    if not Path(folder).is_dir():
        return []
    return [
        p
        for p in Path(folder).iterdir()
        if p.name.startswith(PREFIX) and p.name.endswith(".json") and p.is_file()
    ]


def _info(path: Path) -> CheckpointInfo:
    size = path.stat().st_size
    fallback_id = path.name.removeprefix(PREFIX).removesuffix(".json")
    try:
        ckpt = _read(path)
    except CheckpointError as exc:
        return CheckpointInfo(
            path=str(path), cycle_id=fallback_id, state="?", size_bytes=size, error=str(exc)
        )
    return CheckpointInfo(
        path=str(path),
        cycle_id=ckpt.cycle_id,
        state=ckpt.state.value,
        saved_at=ckpt.saved_at,
        size_bytes=size,
        outcome=ckpt.record.outcome.value if ckpt.record else None,
        resumable=ckpt.resumable,
    )


def list_checkpoints(
    checkpoint_dir: Path | str | None = None, include_unusable: bool = False
) -> list[CheckpointInfo]:
    """Checkpoints in the folder, newest first; unreadable ones only with include_unusable."""
    folder = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir()
    infos = [_info(p) for p in _files(folder)]
    if not include_unusable:
        infos = [i for i in infos if i.error is None]
    stamp = datetime.min.replace(tzinfo=utcnow().tzinfo)
    return sorted(infos, key=lambda i: (i.saved_at or stamp, i.path), reverse=True)


def _usable_note(folder: Path) -> str:
    usable = list_checkpoints(folder)
    if not usable:
        return f"there are no usable checkpoints in {str(folder)!r}"
    listed = "; ".join(i.describe() for i in usable[:10])
    more = f" and {len(usable) - 10} more" if len(usable) > 10 else ""
    return f"usable checkpoints in {str(folder)!r}: {listed}{more}"


def resolve(path_or_id: str | os.PathLike[str], checkpoint_dir: Path | str | None = None) -> Path:
    """A checkpoint file from a path, or from a cycle id in `checkpoint_dir`."""
    folder = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir()
    text = os.fspath(path_or_id)
    # A Path, or a name ending in .json, is a file the caller chose; anything else is a
    # cycle id and must be one (so "../x" can never name a file outside the folder).
    if isinstance(path_or_id, os.PathLike) or text.endswith(".json"):
        return Path(text).expanduser()
    try:
        return checkpoint_path(folder, text)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {_usable_note(folder)}") from None


def load_checkpoint(
    path_or_id: str | os.PathLike[str], checkpoint_dir: Path | str | None = None
) -> Checkpoint:
    """The checkpoint at a path or of a cycle id; CheckpointError listing the usable ones
    when it is missing, corrupt or from a newer format."""
    path = resolve(path_or_id, checkpoint_dir)
    try:
        return _read(path)
    except CheckpointError as exc:
        folder = Path(checkpoint_dir) if checkpoint_dir else path.parent
        raise CheckpointError(f"{exc}; {_usable_note(folder)}") from None


def _read_pointer(folder: Path) -> Path | None:
    try:
        data = json.loads((folder / LATEST).read_text(encoding="utf-8"))
        name = data["path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(name, str) or "/" in name or os.sep in name or not name.startswith(PREFIX):
        return None
    return folder / name


def load_latest_checkpoint(checkpoint_dir: Path | str | None = None) -> Checkpoint | None:
    """The checkpoint `latest.json` points at, else the newest usable one; None if none."""
    folder = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir()
    pointed = _read_pointer(folder)
    if pointed is not None:
        with contextlib.suppress(CheckpointError):
            return _read(pointed)
    usable = list_checkpoints(folder)
    return _read(Path(usable[0].path)) if usable else None


def save_checkpoint(checkpoint: Checkpoint, checkpoint_dir: Path | str | None = None) -> Path:
    """Write the cycle's checkpoint atomically and point latest.json at it."""
    folder = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, checkpoint.cycle_id)
    checkpoint = checkpoint.model_copy(update={"saved_at": utcnow()})
    atomic_write(path, checkpoint.model_dump_json().encode("utf-8"))
    pointer = {
        "path": path.name,
        "cycle_id": checkpoint.cycle_id,
        "state": checkpoint.state.value,
        "saved_at": checkpoint.saved_at.isoformat(),
        "format_version": CHECKPOINT_FORMAT,
    }
    atomic_write(folder / LATEST, json.dumps(pointer).encode("utf-8"))
    return path


def delete_checkpoint(cycle_id: str, checkpoint_dir: Path | str | None = None) -> bool:
    folder = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir()
    path = checkpoint_path(folder, cycle_id)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    if _read_pointer(folder) == path:
        with contextlib.suppress(OSError):
            (folder / LATEST).unlink()
    with contextlib.suppress(OSError):
        (folder / f".{path.stem}.lock").unlink()
    return True


def cleanup_old_checkpoints(
    checkpoint_dir: Path | str | None = None, keep_count: int = 10, keep_days: float = 7
) -> list[str]:
    """Delete checkpoints of ended cycles that are both beyond the newest `keep_count` and
    older than `keep_days`. A cycle that can still be resumed is never deleted."""
    folder = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir()
    cutoff = utcnow() - timedelta(days=keep_days)
    deleted: list[str] = []
    for info in list_checkpoints(folder)[keep_count:]:
        if info.resumable or info.saved_at is None or info.saved_at >= cutoff:
            continue
        if delete_checkpoint(info.cycle_id, folder):
            deleted.append(info.cycle_id)
    return deleted


# ---------------------------------------------------------------- one cycle at a time


@contextlib.contextmanager
def cycle_lock(folder: Path, cycle_id: str, wait_s: float = 10.0) -> Iterator[int]:
    """Hold the cycle's lock (flock, released by the kernel if this process dies), so two
    processes never drive one cycle. Yields the lock's file descriptor."""
    path = Path(folder) / f".{PREFIX}{validate_id(cycle_id)}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise CheckpointError(
                        f"cycle {cycle_id} is being run by another process (its lock "
                        f"{str(path)!r} is held); wait for it to finish or stop it first"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield fd
    finally:
        os.close(fd)


class CheckpointManager:
    """The checkpoints of one folder."""

    def __init__(
        self,
        checkpoint_dir: Path | str | None = None,
        max_checkpoints: int = 20,
        auto_cleanup: bool = True,
        keep_days: float = 7,
    ) -> None:
        self.checkpoint_dir = (
            Path(checkpoint_dir).expanduser() if checkpoint_dir else default_checkpoint_dir()
        )
        self.max_checkpoints = max_checkpoints
        self.auto_cleanup = auto_cleanup
        self.keep_days = keep_days

    def ensure_writable(self) -> Path:
        self.checkpoint_dir = ensure_writable(self.checkpoint_dir)
        return self.checkpoint_dir

    def path_for(self, cycle_id: str) -> Path:
        return checkpoint_path(self.checkpoint_dir, cycle_id)

    def save(self, checkpoint: Checkpoint) -> Path:
        path = save_checkpoint(checkpoint, self.checkpoint_dir)
        if self.auto_cleanup and checkpoint.state.is_terminal:
            cleanup_old_checkpoints(self.checkpoint_dir, self.max_checkpoints, self.keep_days)
        return path

    def load(self, path_or_id: str | os.PathLike[str]) -> Checkpoint:
        return load_checkpoint(path_or_id, self.checkpoint_dir)

    def load_latest(self) -> Checkpoint | None:
        return load_latest_checkpoint(self.checkpoint_dir)

    def list_all(self, include_unusable: bool = False) -> list[CheckpointInfo]:
        return list_checkpoints(self.checkpoint_dir, include_unusable)

    def delete(self, cycle_id: str) -> bool:
        return delete_checkpoint(cycle_id, self.checkpoint_dir)

    def cleanup(self, keep_count: int | None = None, keep_days: float | None = None) -> list[str]:
        return cleanup_old_checkpoints(
            self.checkpoint_dir,
            self.max_checkpoints if keep_count is None else keep_count,
            self.keep_days if keep_days is None else keep_days,
        )

    def lock(self, cycle_id: str, wait_s: float = 10.0) -> contextlib.AbstractContextManager[int]:
        return cycle_lock(self.checkpoint_dir, cycle_id, wait_s)

    def get_recovery_options(self) -> list[dict[str, Any]]:
        """What a person can do: resume the newest interrupted cycle (recommended), resume
        one of up to three older ones, or start fresh."""
        resumable = [i for i in self.list_all() if i.resumable]
        options: list[dict[str, Any]] = []
        for n, info in enumerate(resumable[:4]):
            options.append(
                {
                    "action": "resume_latest" if n == 0 else f"resume_older_{n}",
                    "cycle_id": info.cycle_id,
                    "state": info.state,
                    "saved_at": info.saved_at.isoformat() if info.saved_at else None,
                    "path": info.path,
                    "recommended": n == 0,
                    "description": f"resume cycle {info.describe()}",
                }
            )
        options.append(
            {
                "action": "start_fresh",
                "cycle_id": None,
                "recommended": not resumable,
                "description": "start a new cycle",
            }
        )
        return options


__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointManager",
    "FailureNote",
    "atomic_write",
    "cleanup_old_checkpoints",
    "delete_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "save_checkpoint",
    "validate_id",
]
