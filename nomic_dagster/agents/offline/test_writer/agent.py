"""The test-writer agent: proposes characterization tests, then writes and checks them.

implement() probes each module (probe_runner.py), writes one test file per module
(render.py), then runs the files until they are stable: the first round runs them
RERUNS times, one of those runs being the target's own suite under coverage.py; a test
that fails any run is dropped and the file regenerated and run again. Last, a test is
kept only if it covers a line of its module that nothing before it covered.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from nomic_dagster.agents.base import WorkArea
from nomic_dagster.agents.offline.common import OfflineAgent
from nomic_dagster.agents.offline.test_writer.analysis import ModulePlan, analyse, test_files_of
from nomic_dagster.agents.offline.test_writer.probe_runner import probe_module
from nomic_dagster.agents.offline.test_writer.render import GeneratedTest, build_tests, render
from nomic_dagster.agents.offline.test_writer.reports import (
    TestKey,
    coverage_report,
    file_entry,
    line_owners,
    read_junit,
    write_coverage_rc,
)
from nomic_dagster.agents.offline.test_writer.worktree import clean_new, ruff_new_files, snapshot
from nomic_dagster.core.errors import ImplementationFailed
from nomic_dagster.core.records import Design, Goal, Proposal, RepoContext
from nomic_dagster.sandbox.commands import CommandResult, python_argv, run_command

MAX_MODULES = 3  # most modules (one new test file each) one proposal covers
RERUNS = 3
RERUN_TIMEOUT_S = 300
STABILIZE_ROUNDS = 3
# The coverage plugin's module name in the target's test run (see coverage_contexts.py).
CONTEXT_PLUGIN_NAME = "_nomic_test_writer_contexts"
CONTEXT_PLUGIN_SOURCE = Path(__file__).with_name("coverage_contexts.py")


@dataclass
class _Module:
    """One module's new test file while it is being written and checked."""

    plan: ModulePlan
    tests: list[GeneratedTest]
    dropped_failing: list[str] = field(default_factory=list)
    dropped_no_coverage: list[str] = field(default_factory=list)
    before: float = 0.0  # line coverage of the module without the new tests, %
    after: float = 0.0  # and with them
    statements: int = 0  # 0: coverage was not measured

    @property
    def stem(self) -> str:
        return PurePosixPath(self.plan.test_path).stem


class _Job(NamedTuple):
    """One pytest run of a round."""

    argv: list[str]
    timeout: float
    env: dict[str, str] | None = None


class _RoundResult(NamedTuple):
    """What one round of runs found."""

    passed: set[TestKey]  # passed every run of the round
    report: dict[str, Any] | None  # coverage.py's JSON report (first round only)
    problems: list[str]  # why tests failed


class _Stable(NamedTuple):
    """The files after the reruns: only tests that passed every run are left."""

    modules: list[_Module]
    report: dict[str, Any]
    lint: str  # what ruff said about the files last written
    stale: bool  # the last round dropped tests: the files on disk still hold them


@dataclass(frozen=True)
class _Coverage:
    """coverage.py around pytest with a context per test, for the first round."""

    rc: Path
    data: Path
    junit: Path
    env: dict[str, str]

    def argv(self, pytest_args: list[str], extra: list[str], append: bool = False) -> list[str]:
        run = [sys.executable, "-m", "coverage", "run", "--rcfile", str(self.rc)]
        run += ["--data-file", str(self.data), *(["--append"] if append else [])]
        contexts = ["-p", CONTEXT_PLUGIN_NAME, f"--junitxml={self.junit}"]
        return [*run, "-m", "pytest", *pytest_args, *contexts, *extra]


class TestWriter(OfflineAgent):
    """Writes characterization tests for public functions that no test names."""

    __test__ = False  # not a pytest test class, despite the name

    name = "test-writer"
    kind = "add-tests"
    criterion = "benefit"

    # ------------------------------------------------------------ propose

    def survey(self, context: RepoContext, root: Path | None = None) -> list[ModulePlan]:
        return analyse(root or Path(context.root), context)

    def propose(self, context: RepoContext, goal: Goal) -> list[Proposal]:
        plans = self.survey(context)
        if not plans:
            return []
        chosen = plans[: max(1, min(context.max_files, MAX_MODULES))]
        functions = sum(len(p.functions) for p in chosen)
        public = sum(len(p.public) for p in chosen)
        untested = sum(len(p.untested) for p in chosen)
        share = untested / public if public else 0.0
        volume = min(1.0, functions / 10)
        modules = ", ".join(p.module for p in chosen)
        return [
            self.make_proposal(
                title=f"Add characterization tests for {functions} untested function(s) in {modules}",
                description=(
                    f"{untested} of {public} public functions in {modules} are never named in a "
                    "test. Call them with inputs built from their annotations and defaults, pin "
                    "the results (values or exceptions) in new pytest files, and keep only tests "
                    "that pass three runs and raise line coverage. Adds files only; no existing "
                    "file changes."
                ),
                files=[p.test_path for p in chosen],
                evidence=_evidence(context, plans, chosen),
                benefit=round(min(0.95, 0.15 + 0.5 * share + 0.3 * volume), 3),
                risk=round(min(0.1, 0.05 + 0.02 * (len(chosen) - 1)), 3),
                estimated_lines=sum(
                    12 + sum(2 + len(f.calls) for f in p.functions) for p in chosen
                ),
            )
        ]

    def plan_steps(self, proposal: Proposal) -> list[str]:
        steps = []
        for f in proposal.files:
            what = _pinned_names(proposal, f) or "the untested public functions of its module"
            steps.append(
                f"probe {what} in a subprocess (cwd in the scratch folder, several hash seeds) "
                "with inputs built from annotations and defaults; record return values that are "
                "plain data and builtin or module exceptions"
            )
            steps.append(
                f"write {f}: one characterization test per function asserting the recorded outcomes"
            )
        steps += [
            f"run the new file(s) {RERUNS} times with `python -m pytest -q`; drop tests that fail "
            "or flake and regenerate",
            "measure line coverage of the target module(s) with coverage.py with and without the "
            "new tests; drop tests that add no covered line",
            "ruff check --fix and ruff format on the new file(s) only; leave no caches or "
            "temporary files in the worktree",
        ]
        return steps

    # ------------------------------------------------------------ implement

    def implement(self, design: Design, area: WorkArea) -> str:
        worktree = area.worktree
        plans = [p for p in analyse(worktree, area.context) if p.test_path in design.files]
        if not plans:
            raise ImplementationFailed(
                f"{self.name}: none of {design.files} is a test file it can write here "
                "(no untested, callable public functions left)"
            )
        plans = [p for p in plans if not (worktree / p.test_path).exists()]
        if not plans:
            raise ImplementationFailed(f"{self.name}: the test files {design.files} already exist")
        area.scratch.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="test-writer-", dir=area.scratch))
        before = snapshot(worktree)
        written: set[str] = set()  # the test files on disk now
        try:
            return self._implement(plans, area, work, written)
        except BaseException:
            for rel in written:
                (worktree / rel).unlink(missing_ok=True)
            written.clear()
            raise
        finally:
            clean_new(worktree, before, written)
            shutil.rmtree(work, ignore_errors=True)

    def _implement(
        self, plans: list[ModulePlan], area: WorkArea, work: Path, written: set[str]
    ) -> str:
        worktree = area.worktree
        modules, problems = self._generate(plans, worktree, work)
        stable = self._stabilize(modules, area, work, written, problems)
        self._select_by_coverage(stable.modules, stable.report, worktree, work)
        for m in [m for m in stable.modules if not m.tests]:
            self._remove(m, worktree, written)
        survivors = [m for m in stable.modules if m.tests]
        if not survivors:
            raise ImplementationFailed(
                f"{self.name}: the generated tests pass but add no covered line to "
                + ", ".join(m.plan.path for m in stable.modules)
                + " (the existing tests already run that code)"
            )
        lint = stable.lint
        if stable.stale or any(m.dropped_no_coverage for m in survivors):
            # every survivor passed all runs; the file only loses the tests that were dropped
            lint = self._write(survivors, worktree, written)
        summary = self._summary(survivors)
        # only the target's own, stricter ruff rules can still complain here
        return f"{summary}; {lint.splitlines()[0]}" if lint else summary

    def _generate(
        self, plans: list[ModulePlan], worktree: Path, work: Path
    ) -> tuple[list[_Module], list[str]]:
        """Probe each module and build its tests: (modules with tests, problems of the rest)."""
        modules: list[_Module] = []
        problems: list[str] = []
        for plan in plans:
            outcomes, problem = probe_module(plan, worktree, work)
            tests = build_tests(plan, outcomes)
            if tests:
                modules.append(_Module(plan, tests))
            elif problem:
                problems.append(f"{plan.module} cannot be imported: {problem}")
            else:
                problems.append(f"{plan.module}: no call gave a result that can be pinned")
        if not modules:
            raise ImplementationFailed(f"{self.name}: {'; '.join(problems)}")
        return modules, problems

    def _stabilize(
        self,
        modules: list[_Module],
        area: WorkArea,
        work: Path,
        written: set[str],
        problems: list[str],
    ) -> _Stable:
        """Write and run the files, dropping failing tests, until a round drops none (or
        STABILIZE_ROUNDS rounds have run)."""
        worktree = area.worktree
        report: dict[str, Any] | None = None
        lint = ""
        changed = False
        for round_no in range(STABILIZE_ROUNDS):
            lint = self._write(modules, worktree, written)
            if lint.startswith("ruff (default rules)"):
                raise ImplementationFailed(
                    f"{self.name}: the generated tests are not ruff-clean: {lint}"
                )
            result = self._run_round(modules, area, work, round_no)
            if report is None:
                report = result.report
            changed = _drop_failing(modules, result.passed)
            for m in [m for m in modules if not m.tests]:
                self._remove(m, worktree, written)
            modules = [m for m in modules if m.tests]
            if changed:
                problems.extend(n for n in result.problems[:3] if n not in problems)
            if not changed or not modules:
                break
        if not modules:
            raise ImplementationFailed(
                f"{self.name}: no generated test passed {RERUNS} runs"
                + (f" ({'; '.join(problems[:3])})" if problems else "")
            )
        return _Stable(modules, report or {}, lint, stale=changed)

    # ------------------------------------------------------------ runs

    def _run_round(
        self, modules: list[_Module], area: WorkArea, work: Path, round_no: int
    ) -> _RoundResult:
        """Run the new files in parallel: tests that passed every run, coverage, problems.

        The first round runs them RERUNS times, the first run being the target's own test
        command under coverage.py with one coverage context per test, which measures before
        and after in one go (the new files are added with --append when the command does not
        collect them). Later rounds confirm a regenerated file whose tests all passed RERUNS
        times already, so one run is enough.
        """
        worktree = area.worktree
        files = [m.plan.test_path for m in modules]
        first = round_no == 0
        tag = f"r{round_no}"
        junits = [work / f"junit-{tag}-{i}.xml" for i in range(RERUNS if first else 1)]
        timeout = self._timeout(area)
        jobs = [
            _Job([sys.executable, "-m", "pytest", "-q", f"--junitxml={j}", *files], timeout)
            for j in junits
        ]

        def run(job: _Job) -> CommandResult:
            return run_command(job.argv, worktree, job.timeout, scratch=work, env_extra=job.env)

        coverage: _Coverage | None = None
        if first:
            coverage = self._prepare_coverage(modules, area, work, tag, junits[0])
            suite = coverage.argv(self._suite_args(area), ["--continue-on-collection-errors"])
            jobs[0] = _Job(suite, float(area.settings.test_timeout_s), coverage.env)
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            list(pool.map(run, jobs))
        report = None
        if coverage is not None:
            stems = {m.stem for m in modules}
            if not any(stem in stems for stem, _ in read_junit(junits[0]).reported):
                # the test command does not collect the new files (its own paths, testpaths,
                # -x and a failure...): run them on their own, adding to the same coverage data
                run(_Job(coverage.argv(["-q"], files, append=True), timeout, coverage.env))
            report = coverage_report(coverage.data, coverage.rc, work / f"{tag}.json", work)
        return _round_result(junits, report)

    def _prepare_coverage(
        self, modules: list[_Module], area: WorkArea, work: Path, tag: str, junit: Path
    ) -> _Coverage:
        """The coverage config, and the context plugin alone in a folder for PYTHONPATH."""
        rc = write_coverage_rc(work / f"{tag}.rc", [area.worktree / m.plan.path for m in modules])
        plugin_dir = work / "plugin"
        plugin_dir.mkdir(exist_ok=True)
        shutil.copyfile(CONTEXT_PLUGIN_SOURCE, plugin_dir / f"{CONTEXT_PLUGIN_NAME}.py")
        return _Coverage(rc, work / f"{tag}.coverage", junit, {"PYTHONPATH": str(plugin_dir)})

    def _timeout(self, area: WorkArea) -> float:
        return float(min(area.settings.test_timeout_s, RERUN_TIMEOUT_S))

    def _suite_args(self, area: WorkArea) -> list[str]:
        """pytest's arguments in the target's own test command (`-q` when it is not pytest)."""
        try:
            argv = python_argv(area.settings.test_command)
        except Exception:
            return ["-q"]
        if len(argv) >= 3 and argv[0] == sys.executable and argv[1:3] == ["-m", "pytest"]:
            return argv[3:]
        return ["-q"]

    def _select_by_coverage(
        self, modules: list[_Module], report: dict[str, Any], worktree: Path, work: Path
    ) -> None:
        """Keep a test only if it runs a line of its module that nothing before it ran."""
        new_stems = {m.stem for m in modules}
        for m in modules:
            entry = file_entry(report, worktree / m.plan.path, work) or {}
            statements = set(entry.get("executed_lines", [])) | set(entry.get("missing_lines", []))
            if not statements:
                continue  # coverage saw nothing (e.g. the suite runs in workers): keep the tests
            owners = line_owners(entry, m.stem, new_stems)
            before = set(owners.before)
            if before:
                # the existing suite runs this module, so it imports it too: the import-time
                # lines only look new because pytest happened to collect a new file first
                before |= owners.on_import
            covered = set(before)
            keep: list[GeneratedTest] = []
            for t in m.tests:
                lines = owners.by_test.get(t.name, set())
                if lines - covered:
                    keep.append(t)
                    covered |= lines
                else:
                    m.dropped_no_coverage.append(t.func)
            if keep:
                covered |= owners.on_import
            m.tests = keep
            m.statements = len(statements)
            m.before = 100.0 * len(before & statements) / len(statements)
            m.after = 100.0 * len(covered & statements) / len(statements)

    # ------------------------------------------------------------ files and summary

    def _write(self, modules: list[_Module], worktree: Path, written: set[str]) -> str:
        """Write the modules' test files; what ruff still reports about them ('' if clean)."""
        paths = []
        for m in modules:
            target = worktree / m.plan.test_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(render(m.plan, m.tests), encoding="utf-8")
            written.add(m.plan.test_path)
            paths.append(m.plan.test_path)
        return ruff_new_files(worktree, paths)

    def _remove(self, m: _Module, worktree: Path, written: set[str]) -> None:
        (worktree / m.plan.test_path).unlink(missing_ok=True)
        written.discard(m.plan.test_path)

    def _summary(self, modules: list[_Module]) -> str:
        tests = sum(len(m.tests) for m in modules)
        asserts = sum(t.assertions for m in modules for t in m.tests)
        parts = [
            f"{m.plan.test_path}: {len(m.tests)} tests for {m.plan.module}, {_coverage_note(m)}"
            f"{_dropped_note(m)}"
            for m in modules
        ]
        return (
            f"wrote {tests} characterization tests ({asserts} assertions, each passing "
            f"{RERUNS} runs) in {len(modules)} file(s): " + "; ".join(parts)
        )


# ---------------------------------------------------------------- helpers


def _names(names: Iterable[str], limit: int = 10) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _evidence(context: RepoContext, plans: list[ModulePlan], chosen: list[ModulePlan]) -> list[str]:
    evidence = []
    for p in chosen:
        evidence.append(
            f"{p.path}: {len(p.untested)} of {len(p.public)} public functions are never named "
            f"in a test: {_names(p.untested)}"
        )
        evidence.append(f"{p.test_path} will pin {p.module}: {_names(p.names, 20)}")
        if p.skipped:
            evidence.append(
                f"{p.path}: not characterized: "
                + "; ".join(f"{n} ({why})" for n, why in p.skipped[:6])
            )
    all_untested = sum(len(p.untested) for p in plans)
    evidence.append(
        f"{len(test_files_of(context))} test files scanned; {all_untested} untested public "
        f"functions in {len(plans)} module(s) this agent can characterize"
    )
    return evidence


def _pinned_names(proposal: Proposal, test_file: str) -> str | None:
    """The function names the proposal's evidence says the test file will pin."""
    marker = f"{test_file} will pin "
    return next((e[len(marker) :] for e in proposal.evidence if e.startswith(marker)), None)


def _drop_failing(modules: list[_Module], passed: set[TestKey]) -> bool:
    """Drop the tests that did not pass; whether any was dropped."""
    changed = False
    for m in modules:
        keep = [t for t in m.tests if (m.stem, t.name) in passed]
        if len(keep) != len(m.tests):
            changed = True
            m.dropped_failing += [t.func for t in m.tests if t not in keep]
            m.tests = keep
    return changed


def _round_result(junits: list[Path], report: dict[str, Any] | None) -> _RoundResult:
    """The tests that passed in every junit report, with the problems of all of them."""
    passed: set[TestKey] | None = None
    problems: list[str] = []
    for j in junits:
        result = read_junit(j)
        passed = result.passed if passed is None else passed & result.passed
        problems.extend(p for p in result.problems if p not in problems)
    return _RoundResult(passed or set(), report, problems)


def _coverage_note(m: _Module) -> str:
    if not m.statements:
        return f"coverage of {m.plan.path} not measured"
    return f"line coverage of {m.plan.path} {m.before:.0f}% -> {m.after:.0f}%"


def _dropped_note(m: _Module) -> str:
    dropped = []
    if m.dropped_failing:
        dropped.append(f"{len(m.dropped_failing)} failing/flaky")
    if m.dropped_no_coverage:
        dropped.append(f"{len(m.dropped_no_coverage)} adding no coverage")
    return f", dropped {' and '.join(dropped)}" if dropped else ""
