"""Subprocess tools shared by the phases and the offline agents: tests, ruff, git CLI.

Every command runs with an environment that keeps the target's worktree clean (no
bytecode, no pytest cache, coverage data in the scratch folder) and is killed with its
whole process group when it times out.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.events import report_progress
from nomic_dagster.core.records import Finding, TestInventory

PYTHON_NAMES = {"python", "python3", f"python3.{sys.version_info.minor}"}


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    exit_code: int  # -9 when killed at the timeout
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def output(self) -> str:
        return self.stdout + ("\n" + self.stderr if self.stderr else "")


_SECRET_SUFFIXES = ("_API_KEY", "_AUTH_TOKEN", "_SECRET", "_SECRET_KEY", "_PASSWORD", "_TOKEN")


def _withheld(name: str) -> bool:
    """Variables a target's tests never see: our pytest's own, and secrets — the tests run
    code an agent just wrote, which must not be able to read the LLM keys."""
    return name.startswith(("PYTEST_", "COV_CORE")) or name.upper().endswith(_SECRET_SUFFIXES)


def tool_env(scratch: Path | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _withheld(k)}
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTEST_ADDOPTS"] = "-p no:cacheprovider"
    env.pop("PYTHONPATH", None)  # the target's tests must import the worktree, not our path
    if scratch is not None:
        env["COVERAGE_FILE"] = str(scratch / ".coverage")
    env.update(extra or {})
    return env


def run_command(
    argv: list[str],
    cwd: Path,
    timeout_s: float,
    scratch: Path | None = None,
    env_extra: dict[str, str] | None = None,
) -> CommandResult:
    """Run argv in cwd; FileNotFoundError propagates so callers can name the missing tool."""
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=tool_env(scratch, env_extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    except BaseException:  # Ctrl-C: the group is in its own session, so it must be killed here
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return CommandResult(
        argv=argv,
        exit_code=-9 if timed_out else proc.returncode,
        stdout=out,
        stderr=err,
        duration_s=time.monotonic() - start,
        timed_out=timed_out,
    )


def python_argv(command: str) -> list[str]:
    """Split a command line; a leading `python` means the interpreter nomic runs on."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise BadInput(
            f"test command {command!r} cannot be parsed: {exc}", "fix its quoting"
        ) from exc
    if not argv:
        raise BadInput("the test command is empty", "set test_command, e.g. 'python -m pytest -q'")
    if argv[0] in PYTHON_NAMES:
        argv[0] = sys.executable
    return argv


_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")
_COLLECTED = re.compile(r"collected (\d+) items?")


def _pytest_counts(output: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n, word in _COUNT.findall(output):
        key = "error" if word.startswith("error") else word
        counts[key] = max(counts.get(key, 0), int(n))
    return counts


# Where pytest finds its configuration ([pytest] / [tool.pytest.ini_options] / [tool:pytest]).
_PYTEST_CONFIGS = {
    "pytest.ini": "",
    ".pytest.ini": "",
    "pyproject.toml": "[tool.pytest.ini_options]",
    "tox.ini": "[pytest]",
    "setup.cfg": "[tool:pytest]",
}


def _has_pytest_config(folder: Path) -> bool:
    for name, section in _PYTEST_CONFIGS.items():
        path = folder / name
        if path.is_file():
            if not section:
                return True
            try:
                if section in path.read_text(encoding="utf-8", errors="replace"):
                    return True
            except OSError:
                continue
    return False


def pytest_isolation_args(cwd: Path, scratch: Path | None) -> list[str]:
    """Arguments that keep pytest from taking its configuration from a folder *above* the
    target (a worktree inside the nomic_dagster checkout's .dagster_home/ would otherwise
    get nomic's own addopts, `-n auto` and all): an empty ini and the worktree as rootdir,
    exactly what the target gets in a clone of its own. Empty when the target has its own
    configuration or nothing above it has one."""
    here = cwd.resolve()
    if _has_pytest_config(here) or not any(_has_pytest_config(p) for p in here.parents):
        return []
    folder = scratch if scratch is not None else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    ini = folder / "nomic-pytest-isolated.ini"
    ini.write_text("[pytest]\n", encoding="utf-8")
    return ["-c", str(ini), "--rootdir", str(here)]


def run_tests(
    command: str,
    cwd: Path,
    timeout_s: float,
    scratch: Path | None = None,
    extra_args: list[str] | None = None,
    env_extra: dict[str, str] | None = None,
) -> TestInventory:
    """Run the target's test command and read what pytest says it ran.

    Raises BadInput when the command itself does not exist (not a failing suite).
    """
    argv = python_argv(command) + list(extra_args or [])
    if "pytest" in " ".join(argv[:3]):
        argv += pytest_isolation_args(cwd, scratch)
    report_progress(f"running the tests: {command}"[:120])
    try:
        res = run_command(argv, cwd, timeout_s, scratch, env_extra)
    except FileNotFoundError as exc:
        raise BadInput(
            f"test command {command!r} does not exist ({argv[0]} not found)",
            "set test_command to a command that runs the target's tests, e.g. 'python -m pytest -q'",
        ) from exc
    out = res.output
    if len(argv) >= 3 and argv[1] == "-m":
        missing = re.search(r"No module named ([\w.]+)", res.stderr)
        if missing and missing.group(1) == argv[2] and res.exit_code != 0:
            raise BadInput(
                f"test command {command!r} names module {argv[2]!r}, which is not installed",
                f"install {argv[2]} where nomic_dagster runs, or change test_command",
            )
    counts = _pytest_counts(out)
    collected_match = _COLLECTED.search(out)
    is_pytest = "pytest" in " ".join(argv[:3])
    if collected_match:
        collected: int | None = int(collected_match.group(1))
    elif is_pytest:
        collected = sum(
            counts.get(k, 0) for k in ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
        )
        if res.exit_code == 5:
            collected = 0
    else:
        collected = None
    tail = out[-4000:]
    if res.timed_out:
        tail += f"\n[nomic] killed after {timeout_s:.0f}s timeout"
    return TestInventory(
        command=command,
        passed=res.ok,
        collected=collected,
        exit_code=res.exit_code,
        duration_s=round(res.duration_s, 3),
        output_tail=tail,
    )


def ruff_findings(
    root: Path, paths: list[str] | None = None, select: str | None = None
) -> list[Finding]:
    """ruff's findings for `paths` (default: the whole tree), honouring the target's ruff config."""
    argv = [
        sys.executable,
        "-m",
        "ruff",
        "check",
        "--no-cache",
        "--output-format",
        "json",
        "--exit-zero",
    ]
    if select:
        argv += ["--select", select]
    argv += paths if paths else ["."]
    res = run_command(argv, root, timeout_s=300)
    if res.exit_code != 0:
        return []  # ruff could not parse its config or a file: no findings we can trust
    findings = []
    for item in json.loads(res.stdout or "[]"):
        fix = item.get("fix") or {}
        rel = os.path.relpath(item["filename"], root).replace(os.sep, "/")
        findings.append(
            Finding(
                path=rel,
                line=(item.get("location") or {}).get("row", 0),
                code=item.get("code") or "syntax",
                message=item.get("message", ""),
                fixable=bool(fix) and fix.get("applicability") == "safe",
            )
        )
    return findings
