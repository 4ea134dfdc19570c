"""Every snippet of the seed README outside its Gastown section, run as written.

The snippets are read from the seed README itself (`../shared/reference/nomic-seed-README.md`,
beside the checkout here and on CI) when the tests run, not copied into them, so a snippet
that changes is tested as changed.
The only substitutions: the seed's package `aragora.nomic` is `nomic_dagster`; paths the
seed hard-codes (`/tmp/nomic`, `scripts/`, `python`) become this test's; and the seed's
`[...]` placeholders in the cross-cycle learning snippet become concrete lists. Each
snippet runs against a small git repository with the default offline panel (lint-fixer,
test-writer, dead-code) and the test asserts what it produced.

Not run here (later issues; `test_every_snippet_outside_gastown_has_a_test` lists them):
the Gastown section (beads, convoys, the convoy executor's storage variable).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

import nomic_dagster
from nomic_dagster.core.records import Outcome, Phase, Track
from nomic_dagster.core.settings import CLAUDE_ONLY_TRACKS
from nomic_dagster.cycle.approvals import ApprovalStore
from nomic_dagster.drivers.recovery import RecoveryAction
from nomic_dagster.infra.breakers import CircuitState
from nomic_dagster.orchestration.instance import LOCAL_INSTANCE_YAML, PROJECT_ROOT, isolated_home
from nomic_dagster.orchestration.orchestrator import DEFAULT_TRACK_CONFIGS
from nomic_dagster_tests.conftest import service_missing
from nomic_dagster_tests.support.repo_builders import make_repo, run_git
from nomic_dagster_tests.support.snapshots import checkout_snapshot, nomic_branches, worktrees

SEED_README = PROJECT_ROOT.parent / "shared" / "reference" / "nomic-seed-README.md"
GASTOWN = "Gastown Patterns"
# The headings of the snippets this file runs, one test each (CLI Tools: one per command).
TESTED = {
    "Quick Start": "python",
    "Development Tracks": "python",
    "Task Decomposition": "python",
    "Recovery & Resilience": "python",
    "Cross-Cycle Learning": "python",
    "CLI Tools": "bash",
}
# Plain-text blocks outside Gastown: pictures, not code (the phase line is checked below).
DIAGRAMS = {"Architecture", "Nomic Loop Phases"}

PROJECT = {
    # the target's own pytest config turns off plugins it does not use (speed only)
    "pyproject.toml": (
        '[project]\nname = "shapes"\nversion = "0.1.0"\n\n'
        "[tool.pytest.ini_options]\n"
        'addopts = "-p no:hypothesispytest -p no:anyio -p no:xdist -p no:cacheprovider"\n'
    ),
    "shapes/__init__.py": '"""Shapes."""\n',
    "shapes/geometry.py": (
        '"""Areas and perimeters."""\nimport math\nimport os\n\n\n'
        "def circle_area(r: float) -> float:\n    return round(math.pi*r*r, 4)\n\n\n"
        "def square_perimeter(side: int) -> int:\n    if side < 0:\n"
        "        raise ValueError('negative side')\n    return 4 * side\n\n\n"
        "def clamp(value: int, low: int = 0, high: int = 10) -> int:\n"
        "    return max(low, min(high, value))\n"
    ),
    "tests/test_geometry.py": (
        "from shapes.geometry import circle_area\n\n\n"
        "def test_circle_area():\n    assert circle_area(1.0) == 3.1416\n"
    ),
}


# ---------------------------------------------------------------- the README


class Snippet:
    def __init__(self, section: str, heading: str, language: str, code: str) -> None:
        self.section = section  # the `## ` section
        self.heading = heading  # the nearest heading (`##`, `###`, `####`)
        self.language = language
        self.code = code


def seed_readme() -> str:
    if not SEED_README.is_file():
        service_missing(f"the seed README is not at {SEED_README} (../shared beside the checkout)")
    return SEED_README.read_text(encoding="utf-8")


def snippets() -> list[Snippet]:
    """The README's fenced blocks, with the section and heading each sits under."""
    found: list[Snippet] = []
    section = heading = ""
    lines = iter(seed_readme().splitlines())
    for line in lines:
        if line.startswith("#"):
            level, _, title = line.partition(" ")
            if set(level) == {"#"}:
                heading = title.strip()
                if level == "##":
                    section = heading
        elif line.startswith("```"):
            language = line[3:].strip()
            body: list[str] = []
            for inner in lines:
                if inner.startswith("```"):
                    break
                body.append(inner)
            found.append(Snippet(section, heading, language, "\n".join(body) + "\n"))
    return found


def snippet(heading: str) -> str:
    """The code of the one snippet under `heading`, in our package's name."""
    (chosen,) = [s for s in snippets() if s.heading == heading]
    return chosen.code.replace("aragora.nomic", "nomic_dagster")


def run_python(code: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Execute a snippet as written, top-level `await` included (as in an async REPL)."""
    namespace = {"__name__": "seed_readme_snippet", **(namespace or {})}
    compiled = compile(code, "<seed README>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(compiled, namespace)  # the README's own code, compiled above
    if inspect.iscoroutine(result):
        asyncio.run(result)
    return namespace


def shapes_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's repository, with uncommitted notes; the snippet runs from inside it."""
    repo = make_repo(tmp_path / "shapes", PROJECT)
    (repo / "notes.md").write_text("the user's own uncommitted notes\n")
    monkeypatch.chdir(repo / "shapes")  # anywhere inside the repository
    return repo


def test_every_snippet_outside_gastown_has_a_test() -> None:
    outside = [s for s in snippets() if s.section != GASTOWN]
    code = {s.heading: s.language for s in outside if s.language}
    assert code == TESTED
    assert {s.heading for s in outside if not s.language} == DIAGRAMS
    # what is left to later issues: the Gastown section, and only that
    skipped = [(s.heading, s.language) for s in snippets() if s.section == GASTOWN]
    assert skipped == [
        ("Beads (Atomic Work Units)", "python"),
        ("Convoys (Work Batches)", "python"),
        ("Convoy Executor Storage", "bash"),
    ]


def test_the_phase_line_names_our_phases_in_order() -> None:
    (picture,) = [s.code for s in snippets() if s.heading == "Nomic Loop Phases"]
    names = re.findall(r"[A-Z]+", picture.splitlines()[0])
    assert names == ["START", *(p.name for p in Phase), "END"]


def test_every_name_the_readme_imports_or_lists_is_at_the_package_root() -> None:
    """`from aragora.nomic import X` outside Gastown, and the Key Components table (less the
    Gastown rows and the branch coordinator, later issues)."""
    later = {"BranchCoordinator", "BeadStore", "Bead", "ConvoyManager"}
    outside = "".join(s.code for s in snippets() if s.section != GASTOWN)
    imported = {
        name.strip()
        for names in re.findall(r"from aragora\.nomic import ([\w, ]+)", outside)
        for name in names.split(",")
    }
    listed = set(re.findall(r"^\| `(\w+)` \|", seed_readme(), re.MULTILINE))
    assert "MetaPlanner" in listed and "AutonomousOrchestrator" in imported
    for name in sorted((imported | listed) - later):
        assert name in nomic_dagster.__all__, name
        assert getattr(nomic_dagster, name).__name__ == name


# ---------------------------------------------------------------- Quick Start

ORCHESTRATOR_PART = "# Or use autonomous orchestrator"


def quick_start_parts() -> tuple[str, str]:
    """The quick start in its two parts: the state machine, then the orchestrator."""
    code = snippet("Quick Start")
    cut = code.index(ORCHESTRATOR_PART)
    return code[:cut], code[cut:]


def test_quick_start_state_machine_lands_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No repository is named: as in the seed, the target is the git repository the current
    directory is in."""
    repo = shapes_repo(tmp_path, monkeypatch)
    before = checkout_snapshot(repo)
    checkpoints = tmp_path / "nomic"
    code, _ = quick_start_parts()
    ns = run_python(code.replace('"/tmp/nomic"', repr(str(checkpoints))))

    sm, result = ns["sm"], ns["result"]
    assert isinstance(sm, nomic_dagster.NomicStateMachine)
    assert result is not None and result.outcome.value == "committed", result and result.reason
    assert result.goal.text == "Improve test coverage in debate module"
    assert result.repo == str(repo) and result.agents == ["lint-fixer", "test-writer", "dead-code"]
    assert sm.current_state.value == "completed"
    assert run_git(repo, "rev-parse", result.branch).strip() == result.commit_sha
    assert (
        run_git(repo, "rev-parse", f"{result.commit_sha}^").strip()
        == run_git(repo, "rev-parse", "main").strip()
    )
    assert result.files and result.lines_added + result.lines_removed > 0
    assert checkout_snapshot(repo) == before  # the user's checkout is only read
    assert worktrees(repo) == [str(repo)]
    assert (checkpoints / f"checkpoint_{result.cycle_id}.json").is_file()


def test_quick_start_orchestrator_runs_without_a_daemon_and_waits_for_approval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_dir: Path
) -> None:
    """`await AutonomousOrchestrator.create()` with no arguments: the target is the current
    repository (not the demo), and with no daemon to dequeue runs the run is executed
    (it used to sit queued until the 3600 s timeout). `require_approval=True`: the run
    stops after DESIGN and the subtask waits for `nomic approve`."""
    repo = shapes_repo(tmp_path, monkeypatch)
    before = checkout_snapshot(repo)
    home = isolated_home(tmp_path / "dagster_home")  # what `source scripts/env.sh` sets up
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    _, code = quick_start_parts()
    ns = run_python(code)

    orchestrator, result = ns["orchestrator"], ns["result"]
    assert orchestrator.repo == str(repo)
    assert result.goal == "Enhance SME dashboard experience"
    assert result.tracks == [Track.SME, Track.DEVELOPER] and result.require_approval
    (sub,) = result.subtasks
    assert sub.track is Track.SME, result.summary
    assert (sub.status, sub.outcome, sub.run_status) == (
        "awaiting_approval",
        "awaiting_approval",
        "SUCCESS",
    ), sub.reason
    assert not result.success and result.awaiting_approval == [sub.cycle_id]
    assert f"nomic approve {sub.cycle_id}" in result.summary
    parked = ApprovalStore(state_dir).get(sub.cycle_id)
    assert parked is not None and parked.status == "awaiting"
    assert parked.origin == str(repo) and parked.track == "sme"
    assert parked.design.files  # a design on the user's files, waiting for a person
    assert nomic_branches(repo) == []  # nothing lands before the approval
    assert checkout_snapshot(repo) == before
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert sub.run_id is not None
        run = instance.get_run_by_id(sub.run_id)
        assert run is not None and run.job_name == "nomic_cycle_sme"
        # executed, never queued: no daemon was running
        assert not instance.all_logs(sub.run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED)


# ---------------------------------------------------------------- Development Tracks

TRACK_LINE = re.compile(r"^Track\.(\w+)\s+#\s*(.*?)\((\d+) concurrent(.*)\)\s*$")


def test_development_tracks_have_the_seed_constraints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = snippet("Development Tracks")
    ns = run_python(code)
    assert ns["Track"] is nomic_dagster.Track and ns["TrackConfig"] is nomic_dagster.TrackConfig

    limits = yaml.safe_load(LOCAL_INSTANCE_YAML.read_text())["concurrency"]["runs"]
    tag_limits = {t["value"]: t["limit"] for t in limits["tag_concurrency_limits"]}
    table = [TRACK_LINE.match(line) for line in code.splitlines() if line.startswith("Track.")]
    assert len(table) == 5 and all(table)
    for match in table:
        assert match is not None
        track = Track[match.group(1)]
        concurrent = int(match.group(3))
        assert DEFAULT_TRACK_CONFIGS[track].max_concurrent_tasks == concurrent, track
        assert tag_limits[track.value] == concurrent, track  # the instance's run queue too
        claude_only = "Claude only" in match.group(4)
        assert (track in CLAUDE_ONLY_TRACKS) == claude_only, track

    # "Claude only" holds: a core cycle with the offline panel is refused before any git work
    repo = shapes_repo(tmp_path, monkeypatch)
    sm = nomic_dagster.create_nomic_state_machine(checkpoint_dir=str(tmp_path / "nomic"))
    record = asyncio.run(sm.run(goal="Tidy the debate engine", track="core"))
    assert record is not None and record.outcome is Outcome.BAD_INPUT
    assert "track core is limited to Claude agents" in record.reason
    assert "'lint-fixer'" in record.reason and "agents=['claude']" in record.reason
    assert nomic_branches(repo) == [] and worktrees(repo) == [str(repo)]


# ---------------------------------------------------------------- Task Decomposition


def test_task_decomposition_heuristic_and_through_the_agents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`TaskDecomposer(use_debate=True)` needs no settings: the agents scan the current
    repository, and `decompose` is awaitable."""
    repo = shapes_repo(tmp_path, monkeypatch)
    before = checkout_snapshot(repo)
    ns = run_python(snippet("Task Decomposition"))

    quick = ns["subtasks"]
    assert quick.original_task == "Refactor dashboard.tsx and api.py"
    # as the original: 5/medium, decomposed by concept ("api"), that subtask owns api.py
    assert (quick.complexity_score, quick.complexity_level, quick.should_decompose) == (
        5,
        "medium",
        True,
    )
    assert [(s.title, s.file_scope) for s in quick.subtasks] == [("Api Changes", ["api.py"])]

    result = ns["result"]
    assert isinstance(ns["decomposer"], nomic_dagster.TaskDecomposer)
    assert result.original_task == "Maximize utility for SME businesses"
    assert result.should_decompose and "proposal(s) from the agents' scan" in result.rationale
    assert result.subtasks
    for sub in result.subtasks:  # each a proposal on the user's files (or a new test file)
        assert sub.file_scope and all((repo / f).parent.is_dir() for f in sub.file_scope), sub
        assert sub.success_criteria["proposal"].split(":")[0] in (
            "lint-fixer",
            "test-writer",
            "dead-code",
        )
    assert "shapes/geometry.py" in {f for s in result.subtasks for f in s.file_scope}
    assert checkout_snapshot(repo) == before and nomic_branches(repo) == []
    assert worktrees(repo) == [str(repo)]  # the scan's worktree is gone


# ---------------------------------------------------------------- Recovery & Resilience


@pytest.mark.parametrize(
    ("error", "context", "action", "target"),
    [
        # DEBATE: 1 retry, critical (the state table): a second failure fails the cycle
        (
            ValueError("no quorum"),
            {"state": "debate", "attempts": 0},
            RecoveryAction.RETRY,
            "debate",
        ),
        (
            ValueError("no quorum"),
            {"state": "debate", "attempts": 1},
            RecoveryAction.FAIL,
            "failed",
        ),
        # VERIFY: 3 retries, not critical
        (RuntimeError("flaky"), {"state": "verify", "attempts": 2}, RecoveryAction.RETRY, "verify"),
        (RuntimeError("flaky"), {"state": "verify", "attempts": 3}, RecoveryAction.PAUSE, "paused"),
        # DESIGN: not critical, skippable
        (RuntimeError("bad design"), {"state": "design"}, RecoveryAction.SKIP, "completed"),
    ],
)
def test_recovery_snippet_decides_from_the_state_table(
    error: BaseException, context: dict[str, Any], action: RecoveryAction, target: str
) -> None:
    """`error` and `context` are the seed's free names; the context gives no retries or
    criticality, so the failed state's own (STATE_CONFIG) decide."""
    ns = run_python(snippet("Recovery & Resilience"), {"error": error, "context": context})

    breaker = ns["breaker"]
    assert isinstance(breaker, nomic_dagster.CircuitBreaker)
    assert (breaker.agent_id, breaker.threshold, breaker.reset_timeout_s) == ("claude", 3, 300.0)
    for _ in range(2):
        breaker.record_failure("boom")
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure("boom")  # "3 failures -> open"
    assert breaker.state is CircuitState.OPEN and not breaker.allow()

    decision = ns["decision"]
    assert (decision.action, decision.target_state) == (action, target), decision.reason
    assert decision.strategy is decision.action
    (entry,) = ns["manager"].history
    assert entry["state"] == context["state"]


# ---------------------------------------------------------------- Cross-Cycle Learning

PLACEHOLDERS = {
    "agent_contributions=[...]": (
        "agent_contributions=["
        "{'agent': 'claude', 'proposals_made': 2, 'proposals_won': 1, 'committed': 1}, "
        "{'agent': 'lint-fixer', 'proposals_made': 1, 'votes_cast': 1}]"
    ),
    "surprise_events=[...]": (
        "surprise_events=[{'phase': 'verify', 'description': 'tests failed under the change', "
        "'expected': 'tests pass', 'actual': '1 failed', 'impact': 'high'}]"
    ),
    "pattern_reinforcements=[...]": (
        "pattern_reinforcements=[{'pattern_type': 'add-tests', "
        "'description': 'tests for clamp', 'success': True, 'agent': 'claude'}]"
    ),
}


def test_cross_cycle_learning_record_in_the_seed_form_is_stored(state_dir: Path) -> None:
    code = snippet("Cross-Cycle Learning")
    for placeholder, concrete in PLACEHOLDERS.items():
        assert placeholder in code
        code = code.replace(placeholder, concrete)
    ns = run_python(code)

    record, store = ns["record"], ns["store"]
    assert isinstance(record, nomic_dagster.NomicCycleRecord)
    assert store is nomic_dagster.get_cycle_store(state_dir)  # the state folder's store
    stored = store.get("cycle-123")
    assert stored == record
    # the seed's list of contributions, keyed by agent as finished cycles store them
    assert sorted(stored.agent_contributions) == ["claude", "lint-fixer"]
    assert stored.agent_contributions["claude"].proposals_won == 1
    assert stored.surprise_events[0].phase is Phase.VERIFY
    assert store.pattern_statistics()["add-tests"].successes == 1
    assert store.agent_trajectory("claude").points
    assert stored.outcome is Outcome.ABANDONED and stored.success is False


# ---------------------------------------------------------------- CLI Tools


def cli_commands() -> list[list[str]]:
    """The CLI snippet's commands, with this interpreter and this checkout's scripts."""
    commands = []
    for line in snippet("CLI Tools").splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        argv = [json.loads(a) if a.startswith('"') else a for a in _split(line)]
        assert argv[0] == "python" and argv[1].startswith("scripts/"), argv
        commands.append([sys.executable, str(PROJECT_ROOT / argv[1]), *argv[2:]])
    return commands


def _split(line: str) -> list[str]:
    return re.findall(r'"[^"]*"|\S+', line)


def run_cli(argv: list[str], repo: Path) -> subprocess.CompletedProcess[str]:
    """From inside the repository. NOMIC_REPO names it too: which target the scripts pick
    when nothing names one is another part of issue 9 (one default-target rule)."""
    res = subprocess.run(
        argv,
        cwd=repo,
        env={**os.environ, "NOMIC_REPO": str(repo)},
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in res.stderr, res.stderr
    return res


def test_cli_snippet_has_the_four_commands() -> None:
    assert [c[1:] for c in cli_commands()] == [
        [
            str(PROJECT_ROOT / "scripts/self_develop.py"),
            "--goal",
            "Improve test coverage",
            "--dry-run",
        ],
        [
            str(PROJECT_ROOT / "scripts/self_develop.py"),
            "--goal",
            "Enhance SDK",
            "--tracks",
            "developer",
            "qa",
        ],
        [str(PROJECT_ROOT / "scripts/nomic_staged.py"), "debate"],
        [str(PROJECT_ROOT / "scripts/nomic_staged.py"), "all"],
    ]


def test_cli_self_develop_dry_run_previews_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_dir: Path
) -> None:
    repo = shapes_repo(tmp_path, monkeypatch)
    before = checkout_snapshot(repo)
    res = run_cli(cli_commands()[0], repo)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert "goal:     Improve test coverage" in res.stdout
    assert f"target:   {repo}" in res.stdout
    assert "agents:   lint-fixer, test-writer, dead-code" in res.stdout
    assert checkout_snapshot(repo) == before and nomic_branches(repo) == []
    assert not (state_dir / "history.jsonl").exists()


def test_cli_self_develop_runs_a_cycle_per_track(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = shapes_repo(tmp_path, monkeypatch)
    before = checkout_snapshot(repo)
    res = run_cli(cli_commands()[1], repo)
    assert res.returncode == 0, (res.stdout, res.stderr)
    branches = nomic_branches(repo)
    assert sorted(b.split("/")[1] for b in branches) == ["developer", "qa"], res.stdout
    for branch in branches:  # each a verified commit on top of the base
        assert (
            run_git(repo, "rev-parse", f"{branch}^").strip()
            == run_git(repo, "rev-parse", "main").strip()
        )
    assert checkout_snapshot(repo) == before and worktrees(repo) == [str(repo)]


def test_cli_staged_debate_runs_the_debate_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_dir: Path
) -> None:
    """With nothing staged, `debate` makes the context it needs first (it used to fail)."""
    repo = shapes_repo(tmp_path, monkeypatch)
    res = run_cli(cli_commands()[2], repo)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert "running the context phase first" in res.stderr
    folder = state_dir / "staged"
    debate = json.loads((folder / "debate.json").read_text())
    assert debate["workspace"]["source_repo"] == str(repo)
    assert debate["debate"]["consensus"]["reached"] and debate["outcome"] is None
    assert "nomic_staged.py design" in res.stdout
    assert nomic_branches(repo) == []  # the debate only decides


def test_cli_staged_all_runs_every_phase_and_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_dir: Path
) -> None:
    repo = shapes_repo(tmp_path, monkeypatch)
    res = run_cli(cli_commands()[3], repo)
    assert res.returncode == 0, (res.stdout, res.stderr)
    folder = state_dir / "staged"
    record = json.loads((folder / "record.json").read_text())
    assert record["outcome"] == "committed", record
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(
        [*(p.value for p in Phase), "record"]
    )
    assert nomic_branches(repo) == [f"nomic/developer/{record['cycle_id']}"]
    assert worktrees(repo) == [str(repo)]
