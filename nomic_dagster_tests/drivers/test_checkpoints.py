"""Checkpoint files: atomic writes (even under SIGKILL), the latest pointer, id checks,
and errors that say what is wrong and which checkpoints can be used instead."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from nomic_dagster.core.events import EventType, NomicEvent
from nomic_dagster.core.records import Goal, utcnow
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.core.state import CycleState
from nomic_dagster.core.states import NomicState
from nomic_dagster.drivers.checkpoints import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    CheckpointError,
    CheckpointManager,
    atomic_write,
    checkpoint_path,
    cleanup_old_checkpoints,
    cycle_lock,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[2]


def cycle(cycle_id: str) -> CycleState:
    # built directly: start_cycle would announce a cycle on the bus that never finishes
    return CycleState(
        cycle_id=cycle_id,
        settings=CycleSettings(repo="/nowhere", goal="g"),
        goal=Goal(text="g"),
        started_at=utcnow(),
    )


def checkpoint(cycle_id: str, state: NomicState = NomicState.DEBATE, events: int = 0) -> Checkpoint:
    return Checkpoint(
        cycle_id=cycle_id,
        state=state,
        cycle=cycle(cycle_id),
        events=[
            NomicEvent(
                type=EventType.TRANSITION, cycle_id=cycle_id, data={"n": n, "pad": "x" * 200}
            )
            for n in range(events)
        ],
    )


def test_round_trip_and_latest_pointer(tmp_path: Path) -> None:
    first = save_checkpoint(checkpoint("aaa"), tmp_path)
    time.sleep(0.01)
    second = save_checkpoint(checkpoint("bbb", NomicState.VERIFY, events=3), tmp_path)
    assert first.name == "checkpoint_aaa.json" and second.name == "checkpoint_bbb.json"
    loaded = load_checkpoint("bbb", tmp_path)
    assert loaded.state is NomicState.VERIFY and len(loaded.events) == 3
    assert loaded.format_version == CHECKPOINT_FORMAT and loaded.cycle is not None
    pointer = json.loads((tmp_path / "latest.json").read_text())
    assert pointer["path"] == "checkpoint_bbb.json" and pointer["cycle_id"] == "bbb"
    assert load_latest_checkpoint(tmp_path).cycle_id == "bbb"  # type: ignore[union-attr]

    save_checkpoint(checkpoint("aaa", NomicState.DESIGN), tmp_path)  # saved last: now latest
    assert load_latest_checkpoint(tmp_path).cycle_id == "aaa"  # type: ignore[union-attr]
    assert [i.cycle_id for i in list_checkpoints(tmp_path)] == ["aaa", "bbb"]

    (tmp_path / "latest.json").write_text("{broken")  # a bad pointer falls back to the newest
    assert load_latest_checkpoint(tmp_path).cycle_id == "aaa"  # type: ignore[union-attr]
    (tmp_path / "latest.json").write_text('{"path": "../../etc/passwd"}')
    assert load_latest_checkpoint(tmp_path).cycle_id == "aaa"  # type: ignore[union-attr]
    assert load_latest_checkpoint(tmp_path / "empty") is None
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file is left behind


def test_a_reader_never_sees_half_a_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(checkpoint("race", events=1), tmp_path)
    stop = threading.Event()
    seen: list[int] = []
    failures: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(len(load_checkpoint("race", tmp_path).events))
            except CheckpointError as exc:
                failures.append(str(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(2, 120):
            save_checkpoint(checkpoint("race", events=n), tmp_path)
    finally:
        stop.set()
        thread.join()
    assert failures == [] and len(seen) > 10
    assert seen == sorted(seen)  # always a whole checkpoint, never an older one after a newer


WRITER = """
import sys
from nomic_dagster.drivers.checkpoints import save_checkpoint
from nomic_dagster_tests.drivers.test_checkpoints import checkpoint
folder = sys.argv[1]
print("ready", flush=True)
n = 1
while True:
    save_checkpoint(checkpoint("killed", events=n % 400 + 1), folder)
    n += 1
"""


@pytest.mark.parametrize("delay", [0.15, 0.3, 0.45, 0.6])
def test_sigkill_while_saving_leaves_a_loadable_checkpoint(tmp_path: Path, delay: float) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    loaded = load_checkpoint("killed", tmp_path)
    assert loaded.cycle_id == "killed" and loaded.events
    assert [i.cycle_id for i in list_checkpoints(tmp_path)] == ["killed"]  # a stray .tmp is ignored
    assert load_latest_checkpoint(tmp_path).cycle_id == "killed"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "bad", ["../evil", "a/b", "", "..", "x.y", "a b", "évil", "-" * 65, "/etc/passwd"]
)
def test_ids_that_could_name_another_path_are_rejected(tmp_path: Path, bad: str) -> None:
    with pytest.raises(CheckpointError, match="not a valid checkpoint id"):
        checkpoint_path(tmp_path, bad)
    with pytest.raises(CheckpointError, match="not a valid checkpoint id"):
        save_checkpoint(checkpoint("ok").model_copy(update={"cycle_id": bad}), tmp_path)
    with pytest.raises(CheckpointError, match="not a valid checkpoint id"):
        load_checkpoint(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_corrupt_and_newer_checkpoints_name_the_usable_ones(tmp_path: Path) -> None:
    save_checkpoint(checkpoint("good1", NomicState.IMPLEMENT), tmp_path)
    save_checkpoint(checkpoint("good2", NomicState.COMMIT), tmp_path)

    with pytest.raises(CheckpointError) as missing:
        load_checkpoint("gone", tmp_path)
    assert "does not exist" in str(missing.value)
    assert "good1 (implement" in str(missing.value) and "good2 (commit" in str(missing.value)

    (tmp_path / "checkpoint_garbage.json").write_bytes(b"\x00\x01not json")
    (tmp_path / "checkpoint_truncated.json").write_text(
        checkpoint("truncated").model_dump_json()[:150]
    )
    wrong = json.loads(checkpoint("wrong").model_dump_json())
    wrong["state"] = "sleeping"
    (tmp_path / "checkpoint_wrong.json").write_text(json.dumps(wrong))
    newer = json.loads(checkpoint("newer").model_dump_json())
    newer["format_version"] = CHECKPOINT_FORMAT + 98
    newer["a_field_from_the_future"] = True
    (tmp_path / "checkpoint_newer.json").write_text(json.dumps(newer))

    for name, message in [
        ("garbage", "is corrupt (not JSON"),
        ("truncated", "is corrupt (not JSON"),
        ("wrong", "is corrupt (1 invalid field(s), first: state"),
        ("newer", f"format {CHECKPOINT_FORMAT + 98}, newer than"),
    ]:
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(name, tmp_path)
        text = str(info.value)
        assert message in text, text
        assert "usable checkpoints" in text and "good1" in text and "good2" in text
        assert "garbage (" not in text and "newer (" not in text  # only usable ones are listed
    with pytest.raises(CheckpointError, match="upgrade nomic_dagster to resume it"):
        load_checkpoint(tmp_path / "checkpoint_newer.json")

    listed = {i.cycle_id: i for i in list_checkpoints(tmp_path, include_unusable=True)}
    assert listed["garbage"].error and listed["good1"].error is None
    assert {i.cycle_id for i in list_checkpoints(tmp_path)} == {"good1", "good2"}

    with pytest.raises(CheckpointError, match="there are no usable checkpoints"):
        load_checkpoint("anything", tmp_path / "nothing-here")


def test_recovery_options_cleanup_and_lock(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, max_checkpoints=1)
    assert [o["action"] for o in manager.get_recovery_options()] == ["start_fresh"]

    old = utcnow() - timedelta(days=30)
    for n, state in enumerate([NomicState.COMPLETED, NomicState.FAILED, NomicState.VERIFY]):
        ckpt = checkpoint(f"old{n}", state).model_copy(
            update={"saved_at": old + timedelta(minutes=n)}
        )
        atomic_write(tmp_path / f"checkpoint_old{n}.json", ckpt.model_dump_json().encode())
    manager.save(checkpoint("new1", NomicState.DESIGN))
    options = manager.get_recovery_options()
    assert [(o["action"], o["cycle_id"]) for o in options] == [
        ("resume_latest", "new1"),
        ("resume_older_1", "old2"),
        ("start_fresh", None),
    ]
    assert options[0]["recommended"] and not options[-1]["recommended"]

    deleted = cleanup_old_checkpoints(tmp_path, keep_count=1, keep_days=7)
    assert sorted(deleted) == ["old0", "old1"]  # ended and old; the resumable old2 stays
    assert {i.cycle_id for i in list_checkpoints(tmp_path)} == {"new1", "old2"}

    with (
        cycle_lock(tmp_path, "new1"),
        pytest.raises(CheckpointError, match="being run by another process"),
        cycle_lock(tmp_path, "new1", wait_s=0.2),
    ):
        pass
    with cycle_lock(tmp_path, "new1", wait_s=0.2):
        pass  # released
