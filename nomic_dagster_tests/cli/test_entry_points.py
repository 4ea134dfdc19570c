"""Every entry point alike: the same target rule (resolved to an absolute path where the
command starts), progress lines while a long phase runs, and self_develop's run budget."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from nomic_dagster.core.records import Outcome
from nomic_dagster.cycle.steps import drive_cycle, finish_cycle
from nomic_dagster.definitions import build_defs
from nomic_dagster.orchestration.resources import NomicResource
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support import llm_scripts as ls
from nomic_dagster_tests.support.fake_llm_servers import FakeAnthropicServer
from nomic_dagster_tests.support.llm_env import clean_llm_env
from nomic_dagster_tests.support.repo_builders import FAST_TEST_COMMAND, make_repo, settings_for
from nomic_dagster_tests.support.snapshots import nomic_branches, worktrees

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
STAGED = str(ROOT / "scripts" / "nomic_staged.py")
SELF_DEVELOP = str(ROOT / "scripts" / "self_develop.py")
NOMIC = str(Path(sys.executable).parent / "nomic")
GOOD = ta.spec(ta.GoodAgent)
ANTHROPIC_KEY = "sk-ant-test-entry-0123456789"


def run(*argv: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        list(argv),
        cwd=cwd,
        # the scripted agents are imported by path from this repository
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in res.stderr, res.stderr
    return res


def target(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "target", {**ta.GATE_REPO, "calc/sub/__init__.py": ""})
    return repo


# ---------------------------------------------------------------- the target


def test_the_scripts_target_the_repository_they_run_in(tmp_path: Path) -> None:
    """Run from a folder inside a repository, with no --repo and no $NOMIC_REPO: the
    staged script and the dry run take that repository (as `nomic run` does), not the demo."""
    repo = target(tmp_path)
    inside = repo / "calc" / "sub"
    folder = tmp_path / "staged"
    res = run(
        PY, STAGED, "context", "--dir", str(folder), "--agents", GOOD,
        "--test-command", FAST_TEST_COMMAND, "-q", cwd=inside,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    workspace = json.loads((folder / "context.json").read_text())["workspace"]
    assert workspace["origin"] == str(repo) and workspace["source_repo"] == str(repo)
    assert run(PY, STAGED, "discard", "--dir", str(folder)).returncode == 0
    assert worktrees(repo) == [str(repo)]

    plan = run(PY, SELF_DEVELOP, "--dry-run", "--agents", GOOD, cwd=inside)
    assert plan.returncode == 0, plan.stderr
    assert f"target:   {repo}\n" in plan.stdout and "demo" not in plan.stdout


def test_a_relative_repo_is_made_absolute_where_the_command_starts(tmp_path: Path) -> None:
    repo = target(tmp_path)
    res = run(
        NOMIC, "run", "--repo", ".", "--agents", GOOD, "--test-command", FAST_TEST_COMMAND,
        "--json", "-q", cwd=repo,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (record,) = json.loads(res.stdout)
    assert record["outcome"] == "committed", record["reason"]
    assert record["origin"] == str(repo) and record["repo"] == str(repo)
    history = run(NOMIC, "history", "--origin", str(repo), "--json", cwd=tmp_path)
    assert [r["cycle_id"] for r in json.loads(history.stdout)] == [record["cycle_id"]]


def test_help_texts_say_the_same_rule() -> None:
    for argv in ([NOMIC, "run", "--help"], [PY, STAGED, "--help"], [PY, SELF_DEVELOP, "--help"]):
        text = " ".join(run(*argv).stdout.split())
        assert "Default: $NOMIC_REPO, else the git repository containing the current" in text


# ---------------------------------------------------------------- progress

SLOW_TESTS = """
import os, sys, time
time.sleep(3)  # a slow suite: the phase is silent without progress lines
os.execv(sys.executable, [sys.executable, "-m", "pytest", *sys.argv[1:]])
"""


def slow_test_command(tmp_path: Path) -> str:
    script = tmp_path / "slow_tests.py"
    script.write_text(SLOW_TESTS)
    return f"python {script} -q -p no:hypothesispytest -p no:anyio -p no:xdist"


TICK = re.compile(
    r"(context|verify): running the tests: python \S+slow_tests\.py .* \((\d+) s\)\.\.\."
)


def test_nomic_run_says_what_a_slow_phase_is_doing(tmp_path: Path) -> None:
    repo = target(tmp_path)
    res = run(
        NOMIC, "run", "--repo", str(repo), "--agents", GOOD,
        "--test-command", slow_test_command(tmp_path), "--heartbeat", "1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    ticks = TICK.findall(res.stderr)
    # each of the two 3-second test runs (the baseline, then verify) shows up while it runs
    assert {phase for phase, _ in ticks} == {"context", "verify"}, res.stderr
    assert max(int(seconds) for _, seconds in ticks) >= 2


def test_a_dagster_run_logs_what_a_slow_phase_is_doing(
    tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOMIC_PROGRESS_S", "1")
    repo = target(tmp_path)
    job = build_defs({"nomic": NomicResource(state_dir=str(state_dir))}).get_job_def("nomic_cycle")
    config = {
        "ops": {
            "context_op": {
                "config": {
                    "repo": str(repo),
                    "agents": [GOOD],
                    "test_command": slow_test_command(tmp_path),
                }
            }
        }
    }
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, run_config=config)
        assert result.output_for_node("record_cycle_op").outcome is Outcome.COMMITTED
        logs = [
            (e.step_key, e.user_message)
            for e in instance.all_logs(result.run_id)
            if "running the tests" in e.user_message
        ]
    steps = {step for step, message in logs if TICK.search(message)}
    assert steps == {"context_op", "verify_op"}, logs


# ---------------------------------------------------------------- self_develop's budget


@pytest.fixture
def llm_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from clean_llm_env(monkeypatch, max_retries=0)


@pytest.fixture
def claude_server(llm_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer(ls.anthropic_script(ls.winning_steps("claude:1"))) as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        yield server


def test_self_develop_holds_its_budget_limit_for_the_whole_run(
    tmp_path: Path, claude_server: FakeAnthropicServer, state_dir: Path
) -> None:
    """--budget-limit is what the whole run may spend: with room for one cycle of real
    (loopback) Claude calls, the second cycle stops at the call it cannot afford, and the
    summary prints what was really spent."""
    probe_repo = make_repo(tmp_path / "probe", ls.CALC_REPO)
    probe = drive_cycle(settings_for(probe_repo, agents=["claude"]))
    assert finish_cycle(probe).outcome is Outcome.COMMITTED, probe.reason
    calls = probe.llm_calls
    limit = max(
        sum(c.usage.usd for c in calls[:k]) + calls[k].worst_case_usd for k in range(len(calls))
    )
    before = len(claude_server.api_requests())
    repo = make_repo(tmp_path / "target", ls.CALC_REPO)  # a twin: same prompts as the probe
    res = run(
        PY, SELF_DEVELOP, "--repo", str(repo), "--agents", "claude", "--test-command",
        FAST_TEST_COMMAND, "--max-cycles", "3", "--budget-limit", f"{limit:.6f}", "-q",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary_path = Path(res.stdout.rsplit("summary ", 1)[1].strip())
    summary = json.loads(summary_path.read_text())
    outcomes = [c["outcome"] for c in summary["cycles"]]
    assert outcomes == ["committed", "budget_exhausted"], res.stdout
    spent = sum(c["cost_usd"] for c in summary["cycles"])
    assert summary["budget_enforced"] is True and summary["cost_usd"] == pytest.approx(spent)
    assert 0 < summary["cost_usd"] <= limit
    assert f"cost ${summary['cost_usd']:.4f} of ${limit:.4f}" in res.stdout
    # every request sent is in a record: the second cycle sent none it could not afford
    sent = len(claude_server.api_requests()) - before
    assert sent == sum(c["llm_calls"] for c in summary["cycles"]) > 0
    assert len(nomic_branches(repo)) == 1
