"""A Dagster home of its own for tests of launched runs: `dagster job launch` queues them and
a real `dagster-daemon` drains them, both reading this home's dagster.yaml (the project's run
queue and tag limits)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from nomic_dagster.orchestration.instance import PROJECT_ROOT, isolated_home

BIN = Path(sys.executable).parent


@dataclass
class DagsterHome:
    path: Path
    instance: dg.DagsterInstance

    @property
    def env(self) -> dict[str, str]:
        """This process's environment pointed at this home, for the dagster CLI and daemon."""
        return {**os.environ, "DAGSTER_HOME": str(self.path)}

    @contextmanager
    def daemon(self) -> Iterator[subprocess.Popen[bytes]]:
        """`dagster-daemon run` on this home while the block runs; killed with its whole
        process group after it (the runs it launched included)."""
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            yield daemon
        finally:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()


@contextmanager
def dagster_home(path: Path) -> Iterator[DagsterHome]:
    """A home at `path` like the project's (isolated_home) and its open instance."""
    isolated_home(path)
    with dg.DagsterInstance.from_config(str(path)) as instance:
        # create the SQLite storages before the daemon and the launch CLI open them at once
        # (concurrent first-time schema setup races)
        instance.get_runs()
        assert instance.event_log_storage is not None and instance.schedule_storage is not None
        yield DagsterHome(path, instance)
