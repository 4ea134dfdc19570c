"""The test-writer agent on real repositories: real git, real probes, pytest, coverage, ruff.

The target repositories are generated here from parameters (package and module names,
constants, layout), so the agent is checked on code it was not written for. Their pytest
configuration switches off the plugins of this environment that they do not use, as a
real project may: the agent runs pytest a dozen times per repository, and plugin imports
would dominate the run time.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from nomic_dagster.agents import Agent, build_agent
from nomic_dagster.agents.base import WorkArea
from nomic_dagster.agents.offline.test_writer import (
    GUESS,
    TestWriter,
    annotation_values,
    direct_side_effects,
    function_params,
    import_aliases,
    plan_calls,
)
from nomic_dagster.core.errors import ImplementationFailed
from nomic_dagster.core.records import Goal, Proposal, RepoContext
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.sandbox.commands import run_command
from nomic_dagster_tests.support.repo_builders import (
    build_context,
    gathered_context,
    make_repo,
    read,
    run_git,
    settings_for,
    status,
    work_area,
)

GOAL = Goal(text="Raise test coverage")
UNUSED_PLUGINS = "-p no:hypothesispytest -p no:anyio -p no:xdist -p no:timeout -p no:platformdirs"


@dataclass(frozen=True)
class Spec:
    """What varies between generated target repositories."""

    package: str
    module: str
    offset: int
    factor: int
    src_layout: bool = False
    with_flaky: bool = False  # add a function that behaves differently under pytest

    @property
    def module_path(self) -> str:
        prefix = "src/" if self.src_layout else ""
        return f"{prefix}{self.package}/{self.module}.py"

    @property
    def dotted(self) -> str:
        return f"{self.package}.{self.module}"

    @property
    def test_path(self) -> str:
        name = f"test_{self.module}_characterization.py"
        return name if self.src_layout else f"tests/{name}"


# characterizable and untested; `clip` is untested by name but fully run by the existing test
EXPECTED = ["scale", "label", "stats", "ratio", "pair", "flags", "letters"]


def generated_repo(spec: Spec) -> dict[str, str]:
    """A small package of pure functions of different signatures, one that writes a file,
    an async one, a generator, and an existing test that covers `add` (and through it `clip`)."""
    module = f'''
        """Helpers of {spec.package}."""

        from __future__ import annotations

        from pathlib import Path
        from typing import Optional


        class {spec.package.title()}Error(ValueError):
            """Raised for input the helpers refuse."""


        def clip(x: int) -> int:
            return max(-100, min(100, x))


        def add(a: int, b: int) -> int:
            return clip(a + b)


        def scale(x: int, factor: int = {spec.factor}) -> int:
            if x < 0:
                raise {spec.package.title()}Error("negative")
            return x * factor + {spec.offset}


        def label(text: str, shout: bool = False) -> str:
            base = text.strip() or "{spec.package}"
            return base.upper() if shout else base


        def stats(values: list[int]) -> dict[str, int]:
            if not values:
                raise ValueError("empty")
            return {{"min": min(values), "max": max(values), "sum": sum(values)}}


        def ratio(a: float, b: float) -> float:
            return a / b


        def pair(x, y):
            return [x, y]


        def flags(mode: Optional[str] = None, *, strict: bool = False) -> tuple[str, bool]:
            return (mode or "default", strict)


        def letters(text: str) -> list[str]:
            return list(set(text))  # in hash order: differs between interpreter runs


        def save(path: str, text: str) -> None:
            Path(path).write_text(text)


        async def fetch(n: int) -> int:
            return n


        def count_up(n: int):
            yield from range(n)


        def _private(x: int) -> int:
            return x
    '''
    if spec.with_flaky:
        module += """

        def caller() -> str:
            return inspect.currentframe().f_back.f_code.co_name
        """
        module = module.replace("from pathlib", "import inspect\n        from pathlib", 1)
    smoke = f"""
        from {spec.package}.{spec.module} import add


        def test_add():
            assert add(2, 3) == 5
            assert add(200, 1) == 100
    """
    files = {
        f"{'src/' if spec.src_layout else ''}{spec.package}/__init__.py": "",
        spec.module_path: module,
    }
    pytest_config = f'[tool.pytest.ini_options]\naddopts = "{UNUSED_PLUGINS}"\n'
    if spec.src_layout:
        files["pyproject.toml"] = pytest_config + 'pythonpath = ["src"]\n'
        files["test_smoke.py"] = smoke
    else:
        files["pyproject.toml"] = pytest_config
        files["tests/test_smoke.py"] = smoke
    return files


def context_for(repo: Path, scratch: Path, settings: CycleSettings, real: bool) -> RepoContext:
    """The context phase's own view (it runs the target's tests: slower), or one by hand."""
    if real:
        return gathered_context(repo, scratch, settings)
    return build_context(repo, max_files=settings.max_files)


@dataclass
class Done:
    repo: Path
    context: RepoContext
    proposal: Proposal
    summary: str
    text: str

    def dump(self) -> dict[str, str]:
        return {
            "repo": str(self.repo),
            "context": self.context.model_dump_json(),
            "proposal": self.proposal.model_dump_json(),
            "summary": self.summary,
            "text": self.text,
        }

    @classmethod
    def load(cls, data: dict[str, str]) -> Done:
        return cls(
            Path(data["repo"]),
            RepoContext.model_validate_json(data["context"]),
            Proposal.model_validate_json(data["proposal"]),
            data["summary"],
            data["text"],
        )


def run_agent(repo: Path, scratch: Path, real_context: bool = False) -> Done:
    settings = settings_for(repo)
    context = context_for(repo, scratch / "ctx", settings, real_context)
    agent = TestWriter()
    proposals = agent.propose(context, GOAL)
    assert len(proposals) == 1
    design = agent.design(proposals[0], context, settings)
    area: WorkArea = work_area(repo, scratch / "impl", settings, context)
    summary = agent.implement(design, area)
    return Done(repo, context, proposals[0], summary, read(repo, proposals[0].files[0]))


MAIN = Spec(package="mathkit", module="core", offset=3, factor=2)


def _two_runs(base: Path) -> tuple[Done, Done]:
    first = make_repo(base / "one", generated_repo(MAIN))
    second = base / "two"
    run_git(base, "clone", "--quiet", str(first), str(second))
    return run_agent(first, base / "scratch1"), run_agent(second, base / "scratch2")


@pytest.fixture(scope="module")
def main_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Done, Done]:
    """The agent run twice on two clones of the same generated repository.

    Under pytest-xdist every worker would run this module fixture again; the first worker
    to get here does the work and the others read its results (the tests only read the
    repositories)."""
    run_uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run_uid:
        return _two_runs(tmp_path_factory.mktemp("tw_main"))
    shared = tmp_path_factory.getbasetemp().parent / f"tw_main_{run_uid}"
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = shared / "runs.json"
        if not results.exists():
            runs = _two_runs(shared)
            results.write_text(json.dumps([d.dump() for d in runs]))
        one, two = (Done.load(d) for d in json.loads(results.read_text()))
    return one, two


def _test_functions(text: str) -> dict[str, str]:
    tree = ast.parse(text)
    return {
        node.name: ast.unparse(node)
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


# One interpreter, several pytest sessions: the existing test alone under coverage, then
# with the new file under coverage, then the new file twice more. Prints one JSON line.
VERIFY = """
import json
import os
import sys

import coverage
import pytest

sys.path.insert(0, os.getcwd())  # as `python -m pytest` does
target, existing, new = sys.argv[1:4]


def measured(args):
    cov = coverage.Coverage(data_file=None, include=[target])
    cov.start()
    code = pytest.main(["-q", *args])
    cov.stop()
    data = cov.get_data()
    return int(code), {n for f in data.measured_files() for n in data.lines(f) or []}


base_code, before = measured([existing])
with_code, with_new = measured([existing, new])
reruns = [int(pytest.main(["-q", new])) for _ in range(2)]
result = {"base": base_code, "codes": [with_code, *reruns]}
print("RESULT " + json.dumps({**result, "before": len(before), "after": len(before | with_new)}))
"""


def verify_generated(repo: Path, module_path: str, existing: str, new: str, scratch: Path) -> dict:
    """Run the new file three times and measure the module's covered lines without/with it."""
    scratch.mkdir(parents=True, exist_ok=True)
    script = scratch / "verify.py"
    script.write_text(VERIFY)
    res = run_command(
        [sys.executable, str(script), str(repo / module_path), existing, new],
        repo,
        120,
        scratch=scratch,
    )
    line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, res.output
    return json.loads(line[len("RESULT ") :])


# ---------------------------------------------------------------- propose


@pytest.mark.slow
def test_proposal_names_the_module_and_its_untested_functions(main_runs: tuple[Done, Done]) -> None:
    done = main_runs[0]
    p = done.proposal
    assert p.id == "test-writer:add-tests"
    assert (p.agent, p.kind) == ("test-writer", "add-tests")
    assert p.files == [MAIN.test_path]
    assert MAIN.dotted in p.title
    # 12 public functions (clip, add, scale, label, stats, ratio, pair, flags, letters, save, fetch,
    # count_up); only `add` is named by a test
    first = p.evidence[0]
    assert first.startswith(
        f"{MAIN.module_path}: 11 of 12 public functions are never named in a test:"
    )
    assert "add" not in first.split(":", 2)[2].split(", ")
    pinned = next(
        e for e in p.evidence if e.startswith(f"{MAIN.test_path} will pin {MAIN.dotted}: ")
    )
    assert pinned.split(": ", 1)[1].split(", ") == ["clip", *EXPECTED]
    skipped = next(e for e in p.evidence if "not characterized" in e)
    assert "save (side effects" in skipped
    assert "fetch (async)" in skipped
    assert "count_up (generator)" in skipped
    assert 0.5 < p.benefit <= 0.95
    assert 0.05 <= p.risk <= 0.1
    assert p.estimated_lines > 20
    steps = TestWriter().plan_steps(p)
    assert any(MAIN.test_path in s for s in steps)
    assert any("3 times" in s for s in steps)


def test_no_untested_functions_means_no_proposal(tmp_path: Path) -> None:
    files = {
        "calc/__init__.py": "",
        "calc/ops.py": "def double(x: int) -> int:\n    return 2 * x\n",
        "tests/test_ops.py": "from calc.ops import double\n\n\ndef test_double():\n    assert double(2) == 4\n",
    }
    repo = make_repo(tmp_path / "covered", files)
    assert TestWriter().propose(build_context(repo), GOAL) == []
    empty = make_repo(tmp_path / "empty", {"README.md": "nothing here\n"})
    assert TestWriter().propose(build_context(empty), GOAL) == []


def test_only_side_effecting_functions_means_no_proposal(tmp_path: Path) -> None:
    files = {
        "io_stuff/__init__.py": "",
        "io_stuff/files.py": """
            import subprocess
            import time


            def run(cmd: str) -> str:
                return subprocess.check_output(cmd, shell=True, text=True)


            def stamp() -> float:
                return time.time()


            def dump(path: str, text: str) -> None:
                with open(path, "w") as fh:
                    fh.write(text)
        """,
    }
    repo = make_repo(tmp_path / "io", files)
    assert TestWriter().propose(build_context(repo), GOAL) == []


def test_max_files_limits_the_modules(tmp_path: Path) -> None:
    files = {"many/__init__.py": ""}
    for i in range(4):
        body = "\n\n".join(
            f"def f{i}_{j}(x: int) -> int:\n    return x + {j}" for j in range(i + 1)
        )
        files[f"many/m{i}.py"] = body + "\n"
    repo = make_repo(tmp_path / "many", files)
    (p,) = TestWriter().propose(build_context(repo, max_files=2), GOAL)
    # the modules with the most untested functions come first; no tests/ folder: files at root
    assert p.files == ["test_m3_characterization.py", "test_m2_characterization.py"]
    (wide,) = TestWriter().propose(build_context(repo, max_files=10), GOAL)
    assert len(wide.files) == 3  # at most three modules per proposal


# ---------------------------------------------------------------- implement


def test_implement_writes_characterization_tests(main_runs: tuple[Done, Done]) -> None:
    done = main_runs[0]
    text = done.text
    assert "generated by nomic's test-writer" in text
    assert "pin the current behaviour" in text
    tests = _test_functions(text)
    assert sorted(tests) == sorted(f"test_{f}_characterization" for f in EXPECTED)
    assert "save" not in text and "fetch" not in text and "count_up" not in text
    # `clip` is run completely by the existing test of `add`: its test added no line
    assert "test_clip_characterization" not in tests
    assert "1 adding no coverage" in done.summary
    # values and exceptions are pinned as recorded, the module's own exception included
    scale = tests["test_scale_characterization"]
    assert f"core.scale(7) == {7 * MAIN.factor + MAIN.offset}" in scale
    assert "pytest.raises(core.MathkitError)" in scale
    assert "core.ratio(0.0, 0.0)" in tests["test_ratio_characterization"]
    assert "ZeroDivisionError" in tests["test_ratio_characterization"]
    assert "pytest.raises(ValueError)" in tests["test_stats_characterization"]
    assert "strict=True" in tests["test_flags_characterization"]
    # a result in hash order differs between the probe's interpreters: it is not pinned
    assert "core.letters('') == []" in tests["test_letters_characterization"]
    assert "Hello" not in tests["test_letters_characterization"]
    # the file is ruff-clean and the worktree holds nothing but the new file
    lint = run_command(
        [sys.executable, "-m", "ruff", "check", "--no-cache", MAIN.test_path], done.repo, 60
    )
    assert lint.ok, lint.output
    assert status(done.repo) == [f"?? {MAIN.test_path}"]


@pytest.mark.slow
def test_generated_tests_pass_three_times_and_raise_coverage(
    main_runs: tuple[Done, Done], tmp_path: Path
) -> None:
    done = main_runs[0]
    result = verify_generated(
        done.repo, MAIN.module_path, "tests/test_smoke.py", MAIN.test_path, tmp_path
    )
    assert result["base"] == 0
    assert result["codes"] == [0, 0, 0]  # pytest's exit code of each of the three runs
    assert result["after"] - result["before"] >= len(EXPECTED)
    assert "% -> " in done.summary and f"{len(EXPECTED)} characterization tests" in done.summary
    assert status(done.repo) == [f"?? {MAIN.test_path}"]


def test_same_repository_gives_identical_output(main_runs: tuple[Done, Done]) -> None:
    one, two = main_runs
    assert one.proposal == two.proposal
    assert one.text == two.text
    assert one.summary == two.summary


@pytest.mark.slow
def test_unfamiliar_src_layout_repository(tmp_path: Path) -> None:
    """Other names and constants, a src/ layout, no tests/ folder: the file goes to the root
    and finds the package by itself."""
    spec = Spec(
        package="geodesy", module="shapes", offset=-11, factor=5, src_layout=True, with_flaky=True
    )
    repo = make_repo(tmp_path / "geo", generated_repo(spec))
    done = run_agent(repo, tmp_path / "scratch", real_context=True)
    assert done.context.module(spec.module_path).module == spec.dotted  # type: ignore[union-attr]
    assert done.proposal.files == [spec.test_path]
    tests = _test_functions(done.text)
    assert sorted(tests) == sorted(f"test_{f}_characterization" for f in EXPECTED)
    # `caller` returned the probe's frame name, a test sees its own: dropped as failing
    assert "caller" in done.proposal.evidence[1]
    assert "dropped 1 failing/flaky and 1 adding no coverage" in done.summary
    assert (
        f"shapes.scale(7) == {7 * spec.factor + spec.offset}"
        in tests["test_scale_characterization"]
    )
    assert "pytest.raises(shapes.GeodesyError)" in tests["test_scale_characterization"]
    res = run_command([sys.executable, "-m", "pytest", "-q"], repo, 120, scratch=tmp_path)
    assert res.ok, res.output
    assert f"{len(EXPECTED) + 1} passed" in res.stdout
    assert status(repo) == [f"?? {spec.test_path}"]


def test_nothing_pinnable_fails_cleanly(tmp_path: Path) -> None:
    files = {
        "objs/__init__.py": "",
        "objs/make.py": """
            class Box:
                def __init__(self, n):
                    self.n = n


            def box(n: int) -> Box:
                return Box(n)
        """,
        "tests/test_nothing.py": "def test_nothing():\n    assert True\n",
    }
    repo = make_repo(tmp_path / "objs", files)
    settings = settings_for(repo)
    context = build_context(repo)
    agent = TestWriter()
    (proposal,) = agent.propose(context, GOAL)
    design = agent.design(proposal, context, settings)
    with pytest.raises(ImplementationFailed, match="can be pinned"):
        agent.implement(design, work_area(repo, tmp_path / "scratch", settings, context))
    assert status(repo) == []
    assert list((tmp_path / "scratch").iterdir()) == []  # its probe files are gone too


def test_foreign_design_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", generated_repo(MAIN))
    settings = settings_for(repo)
    context = build_context(repo)
    agent = TestWriter()
    (proposal,) = agent.propose(context, GOAL)
    design = agent.design(proposal, context, settings).model_copy(update={"files": ["other.py"]})
    with pytest.raises(ImplementationFailed, match=r"other\.py"):
        agent.implement(design, work_area(repo, tmp_path / "scratch", settings, context))
    assert status(repo) == []


def test_registry_builds_it() -> None:
    agent = build_agent("test-writer")
    assert isinstance(agent, TestWriter) and isinstance(agent, Agent)
    assert (agent.name, agent.kind, agent.criterion) == ("test-writer", "add-tests", "benefit")


# ---------------------------------------------------------------- building blocks


def _fn(source: str) -> ast.FunctionDef:
    node = ast.parse(source).body[-1]
    assert isinstance(node, ast.FunctionDef)
    return node


def test_values_come_from_annotations() -> None:
    ann = lambda s: annotation_values(ast.parse(s, mode="eval").body)  # noqa: E731
    assert ann("int") == [0, 1, -3, 7]
    assert ann("Optional[str]") == [None, "", "abc", "Hello, World 42"]
    assert ann("int | None")[0] is None
    assert ann("list[int]") == [[], [0, 1, -3, 7]]
    assert ann("dict[str, int]") == [{}, {"": 0, "abc": 1, "Hello, World 42": -3}]
    assert ann("tuple[int, str]") == [(0, ""), (1, "abc"), (-3, "Hello, World 42")]
    assert ann("Literal['a', 'b']") == ["a", "b"]
    assert ann("'float'") == [0.0, 2.5, -1.5]
    assert ann("set[str]") is None  # printed in hash order: never generated
    assert ann("Widget") is None
    assert ann("Any") is GUESS


def test_calls_are_deterministic_and_skip_unbuildable_parameters() -> None:
    fn = _fn("def f(a: int, b: str, *, flag: bool = False, w: Widget = None): ...")
    calls = plan_calls("f", function_params(fn))
    assert isinstance(calls, list) and calls == plan_calls("f", function_params(fn))
    sources = [c.source("m") for c in calls]
    assert sources[0] == "m.f(0, '')"
    assert "m.f(0, '', flag=True)" in sources
    assert not any("w=" in s for s in sources)
    assert len(sources) <= 10
    assert "cannot build" in plan_calls("g", function_params(_fn("def g(w: Widget): ...")))


def test_side_effect_scan() -> None:
    tree = ast.parse(
        "import os\nimport os.path\nfrom time import sleep\nfrom pathlib import Path\n"
        "def a(p): return os.path.join(p, 'x')\n"
        "def b(p): return os.environ[p]\n"
        "def c(): sleep(1)\n"
        "def d(p): Path(p).unlink()\n"
        "def e(x): print(x); return x\n"
        "def f(p): return open(p).read()\n"
    )
    aliases = import_aliases(tree)
    found = {
        n.name: direct_side_effects(n, aliases) for n in tree.body if isinstance(n, ast.FunctionDef)
    }
    assert found["a"] == [] and found["e"] == []
    assert found["b"] and found["c"] and found["d"] and found["f"]
