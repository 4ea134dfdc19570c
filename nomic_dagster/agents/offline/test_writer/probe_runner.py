"""Running the probe (probe.py) on a module and keeping the outcomes it can rely on.

The probe runs once per PYTHONHASHSEED value, in parallel, each in its own empty working
directory in the scratch folder. Only an outcome every run agrees on is kept: a result
that depends on hash order (the repr of a set of strs) or on anything else that changes
between interpreters would make a flaky test.
"""

from __future__ import annotations

import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nomic_dagster.agents.offline.test_writer.analysis import ModulePlan
from nomic_dagster.agents.offline.test_writer.inputs import Call
from nomic_dagster.sandbox.commands import run_command

PROBE_SOURCE = Path(__file__).with_name("probe.py")
PROBE_SEEDS = ("1", "2", "3", "4")  # PYTHONHASHSEED values: set-order dependence shows up
PROBE_CALL_TIMEOUT_S = 1.0
PROBE_TIMEOUT_S = 10.0
MAX_REPR = 240  # longer results are not pinned: the test would be unreadable

# One line of the probe's output (see probe.py for the kinds).
Outcome = dict[str, Any]


def probe_module(plan: ModulePlan, worktree: Path, work: Path) -> tuple[dict[str, Outcome], str]:
    """(call key -> outcome for calls whose outcome is the same in every probe run, problem).

    The problem is why the module could not be imported, "" when it could."""
    calls = [c for f in plan.functions for c in f.calls]
    base = work / f"probe-{plan.module}"
    base.mkdir(parents=True, exist_ok=True)
    # A copy, not the package's own file: a script's folder goes first on sys.path, and
    # this package's modules must not shadow the target's.
    script = base / "probe.py"
    shutil.copyfile(PROBE_SOURCE, script)
    spec_file = base / "spec.json"
    spec_file.write_text(json.dumps(_spec(plan, worktree, calls)), encoding="utf-8")

    def probe_once(seed: str) -> list[dict[str, Any]]:
        return _run_probe(script, spec_file, base, seed)

    with ThreadPoolExecutor(max_workers=len(PROBE_SEEDS)) as pool:
        runs = list(pool.map(probe_once, PROBE_SEEDS))
    problem = next((r["import_error"] for run in runs for r in run if "import_error" in r), "")
    return _agreed(calls, runs), problem


def _spec(plan: ModulePlan, worktree: Path, calls: list[Call]) -> dict[str, Any]:
    return {
        "import_dir": str(worktree / plan.import_dir) if plan.import_dir else str(worktree),
        "module": plan.module,
        "call_timeout": PROBE_CALL_TIMEOUT_S,
        "max_repr": MAX_REPR,
        "calls": [
            {"id": i, "func": c.func, "args": list(c.args), "kwargs": [list(kv) for kv in c.kwargs]}
            for i, c in enumerate(calls)
        ],
    }


def _run_probe(script: Path, spec_file: Path, base: Path, seed: str) -> list[dict[str, Any]]:
    """The records of one probe run ([] when it wrote none)."""
    cwd = base / f"cwd-{seed}"
    cwd.mkdir(exist_ok=True)
    out = base / f"out-{seed}.jsonl"
    run_command(
        [sys.executable, str(script), str(spec_file), str(out)],
        cwd=cwd,
        timeout_s=PROBE_TIMEOUT_S,
        scratch=base,
        env_extra={"PYTHONHASHSEED": seed},
    )
    try:
        lines = out.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def _agreed(calls: list[Call], runs: list[list[dict[str, Any]]]) -> dict[str, Outcome]:
    """call key -> outcome, for the calls every run recorded with the same outcome."""
    by_run = [{r["id"]: r for r in run if "id" in r} for run in runs]
    outcomes: dict[str, Outcome] = {}
    for i, call in enumerate(calls):
        seen = [records.get(i) for records in by_run]
        first = seen[0]
        if first is not None and all(s == first for s in seen):
            outcomes[call.key] = first
    return outcomes
