"""Wall time of one cycle on the demo repository, and what Dagster adds to it.

The same cycle (the bundled demo, the offline agents) run four ways, side by side in one
run: the phases called directly (`run_cycle`), the job in process
(`execute_in_process`), and the real `dagster job execute` CLI in a subprocess with the
in-process executor (the default) and with the multiprocess executor. Per-phase times
come from each cycle's own record; "overhead" is the wall time minus the phases.

    python benchmarks/cycle.py [--repeat N] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nomic_dagster.core.records import CycleRecord, Phase  # noqa: E402
from nomic_dagster.core.settings import CycleSettings  # noqa: E402
from nomic_dagster.cycle.history import CycleHistory  # noqa: E402
from nomic_dagster.cycle.steps import run_cycle  # noqa: E402
from nomic_dagster.definitions import build_defs  # noqa: E402
from nomic_dagster.orchestration.instance import isolated_home  # noqa: E402
from nomic_dagster.orchestration.resources import NomicResource  # noqa: E402

PHASES = [p.value for p in Phase]
DAGSTER = str(Path(sys.executable).parent / "dagster")


def _home(base: Path) -> Path:
    return isolated_home(base / "dagster_home")


def direct(base: Path, n: int) -> CycleRecord:
    return run_cycle(CycleSettings(state_dir=str(base / "state")), cycle_id=f"direct-{n}")


def in_process(base: Path, n: int) -> CycleRecord:
    defs = build_defs({"nomic": NomicResource(state_dir=str(base / "state"))})
    with dg.DagsterInstance.from_config(str(_home(base))) as instance:
        result = defs.get_job_def("nomic_cycle").execute_in_process(
            instance=instance, tags={"nomic/cycle_id": f"inproc-{n}"}
        )
    return result.output_for_node("record_cycle_op")


def _cli(base: Path, cycle_id: str, executor: str) -> CycleRecord:
    home = _home(base)
    config = base / "run.yaml"
    config.write_text(yaml.safe_dump({"execution": {"config": {executor: {}}}}))
    env = {**os.environ, "DAGSTER_HOME": str(home), "NOMIC_STATE_DIR": str(base / "state")}
    subprocess.run(
        [DAGSTER, "job", "execute", "-m", "nomic_dagster.definitions", "-j", "nomic_cycle",
         "-c", str(config), "--tags", json.dumps({"nomic/cycle_id": cycle_id})],
        cwd=base, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    record = CycleHistory(base / "state").get(cycle_id)
    assert record is not None
    return record


def cli_in_process(base: Path, n: int) -> CycleRecord:
    return _cli(base, f"cli-{n}", "in_process")


def cli_multiprocess(base: Path, n: int) -> CycleRecord:
    return _cli(base, f"climp-{n}", "multiprocess")


MODES: dict[str, Callable[[Path, int], CycleRecord]] = {
    "phases called directly (run_cycle)": direct,
    "job in process (execute_in_process)": in_process,
    "CLI `dagster job execute`, in_process executor": cli_in_process,
    "CLI `dagster job execute`, multiprocess executor": cli_multiprocess,
}


def measure(repeat: int) -> dict[str, list[tuple[float, CycleRecord]]]:
    results: dict[str, list[tuple[float, CycleRecord]]] = {m: [] for m in MODES}
    # interleave the modes so drift on the machine hits each of them alike
    for n in range(repeat):
        for mode, fn in MODES.items():
            with tempfile.TemporaryDirectory(prefix="nomic-bench-") as tmp:
                start = time.perf_counter()
                record = fn(Path(tmp), n)
                wall = time.perf_counter() - start
            if record.outcome.value != "committed":
                raise SystemExit(f"{mode}: cycle ended {record.outcome.value}: {record.reason}")
            results[mode].append((wall, record))
            print(f"  {mode}: {wall:.2f}s", file=sys.stderr)
    return results


def table(results: dict[str, list[tuple[float, CycleRecord]]]) -> str:
    head = "| mode | wall (median) | " + " | ".join(PHASES) + " | phases total | overhead |"
    rule = "|" + "---|" * (len(PHASES) + 4)
    rows = [head, rule]
    for mode, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        per_phase = [
            statistics.median(r.phase_durations.get(p, 0.0) for _, r in runs) for p in PHASES
        ]
        total = statistics.median(sum(r.phase_durations.values()) for _, r in runs)
        cells = " | ".join(f"{v:.2f}" for v in per_phase)
        rows.append(f"| {mode} | {wall:.2f} s | {cells} | {total:.2f} | {wall - total:.2f} s |")
    return "\n".join(rows)


def write_section(out: Path, body: str) -> None:
    marker_start, marker_end = "<!-- cycle.py:start -->", "<!-- cycle.py:end -->"
    text = out.read_text() if out.exists() else "# Benchmarks\n"
    section = f"{marker_start}\n{body}\n{marker_end}"
    if marker_start in text:
        before, rest = text.split(marker_start, 1)
        text = before + section + rest.split(marker_end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    out.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="cycles per mode (median reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    results = measure(args.repeat)
    first = next(iter(results.values()))[0][1]
    body = (
        "## One cycle on the demo repository (`benchmarks/cycle.py`)\n\n"
        f"Command: `python benchmarks/cycle.py --repeat {args.repeat}` — "
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, dagster {dg.__version__}. Seconds, median of {args.repeat} cycles per mode, "
        "modes interleaved. Each cycle: the offline panel on a fresh copy of `examples/demo_repo`; "
        f"every cycle committed (winner here: `{first.winner}`, {len(first.files)} files, "
        f"+{first.lines_added}/-{first.lines_removed}).\n\n"
        f"{table(results)}\n\n"
        "Overhead = wall time minus the sum of the phases: process start and imports for the "
        "CLI, instance and event-log writes, the record op (worktree removal, materialization), "
        "and one process per step under the multiprocess executor."
    )
    write_section(args.out, body)
    print(body)


if __name__ == "__main__":
    main()
