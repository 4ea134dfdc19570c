"""The dead-code agent on real repositories: AST analysis, real edits, real test runs."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from nomic_dagster.agents.offline.dead_code import DeadCodeRemover, Removal, apply_removals
from nomic_dagster.agents.offline.lint_fixer import format_drift
from nomic_dagster.core.errors import ImplementationFailed
from nomic_dagster.core.records import Goal
from nomic_dagster.sandbox.commands import run_tests
from nomic_dagster_tests.support.repo_builders import (
    build_context,
    changed_files,
    gathered_context,
    make_repo,
    read,
    settings_for,
    status,
    work_area,
)

GOAL = Goal(text="Remove dead code")

CORE = """
import functools

__all__ = ["_exported", "total"]

_REGISTRY = []


def register(func):
    _REGISTRY.append(func)
    return func


# A helper nobody calls (it only calls itself).
def _dead_helper(x):
    return _dead_helper(x - 1) if x else 0


def _used(x):
    return x * 2


@functools.lru_cache(maxsize=None)
def _cached_dead():
    return _only_from_dead()


def _only_from_dead():
    return 1


def _exported():
    return 3


@register
def _plugin():
    return "registered"


class _DeadClass:
    pass


def public_unused():
    return "public stays"


def total(items):
    for i in items:
        if i < 0:
            continue
            print("never")
    return sum(_used(i) for i in items)
    print("unreachable")
    items.clear()


def empty_generator():
    return
    yield 1


class Cart:
    def price(self):
        raise ValueError("no price")
        return 1
"""

PLANTED = {
    "pkg/__init__.py": "",
    "pkg/core.py": CORE,
    "tests/test_core.py": """
        from pkg.core import _REGISTRY, empty_generator, total


        def test_total():
            assert total([1, 2, -1]) == 4


        def test_generator_stays_a_generator():
            assert list(empty_generator()) == []


        def test_registry():
            assert [f() for f in _REGISTRY] == ["registered"]
    """,
}

DEAD = {"_dead_helper", "_cached_dead", "_only_from_dead", "_DeadClass"}
ALIVE = {
    "_used",
    "_exported",
    "_plugin",
    "public_unused",
    "total",
    "empty_generator",
    "Cart",
    "register",
}


def top_level_names(source: str) -> set[str]:
    tree = ast.parse(source)
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", PLANTED)


def test_proposes_dead_definitions_and_unreachable_code_with_names_and_lines(
    planted: Path, tmp_path: Path
):
    settings = settings_for(planted)
    ctx = gathered_context(planted, tmp_path / "scratch", settings)
    [proposal] = DeadCodeRemover().propose(ctx, GOAL)

    assert proposal.id == "dead-code:remove-dead-code"
    assert proposal.files == ["pkg/core.py"]  # the test module is never a candidate
    lines = CORE.lstrip("\n").splitlines()

    def line_of(text: str) -> int:
        return next(i for i, line in enumerate(lines, 1) if line.startswith(text))

    evidence = "\n".join(proposal.evidence)
    for name in DEAD:
        kind = "class" if name.startswith("_Dead") else "function"
        prefix = "class" if kind == "class" else "def"
        assert f"pkg/core.py:{line_of(f'{prefix} {name}')} {name}: private {kind}" in evidence
    for name in ALIVE:
        assert f" {name}:" not in evidence
    unreachable_line = line_of('    print("unreachable")')
    assert (
        f"pkg/core.py:{unreachable_line} 2 unreachable statement(s) after `return` in total()"
        in evidence
    )
    assert "after `continue` in total()" in evidence
    assert "after `raise` in Cart.price()" in evidence
    assert "empty_generator" not in evidence  # its `yield` makes it a generator
    assert proposal.evidence[0].startswith(
        "4 unreferenced private definition(s) and 3 block(s) of unreachable statements in 1 file(s)"
    )
    assert proposal.risk == pytest.approx(0.3)
    assert proposal.estimated_lines == 22
    assert 0.1 < proposal.benefit < 1.0


@pytest.mark.slow
def test_implement_removes_dead_code_keeps_the_rest_and_the_tests_pass(
    planted: Path, tmp_path: Path
):
    settings = settings_for(planted)
    scratch = tmp_path / "scratch"
    ctx = gathered_context(planted, scratch, settings)
    agent = DeadCodeRemover()
    [proposal] = agent.propose(ctx, GOAL)
    design = agent.design(proposal, ctx, settings)
    assert design.risk == "medium"

    summary = agent.implement(design, work_area(planted, scratch, settings, ctx))

    source = read(planted, "pkg/core.py")
    names = top_level_names(source)  # and it still parses
    assert not DEAD & names
    assert names >= ALIVE
    assert "# A helper nobody calls" not in source  # its comment went with it
    assert 'print("unreachable")' not in source and "items.clear()" not in source
    assert 'print("never")' not in source and "return 1\n" not in source
    assert "    yield 1\n" in source  # the generator is still a generator
    assert "-22 lines" in summary
    assert (
        "4 dead definition(s) (_dead_helper, _cached_dead, _only_from_dead, _DeadClass)" in summary
    )
    assert "4 unreachable statement(s)" in summary
    # blank lines were tidied: the file is as ruff would format it (the input was)
    assert format_drift(planted, ["pkg/core.py"]) == {}
    assert "\n\n\n\n" not in source and not source.endswith("\n\n")
    # the tests still pass, and nothing but the design's file changed (no junk)
    inv = run_tests(settings.test_command, planted, 120, scratch)
    assert inv.passed and inv.collected == 3
    assert status(planted) == [" M pkg/core.py"]


@pytest.mark.slow
def test_a_removal_the_tests_reject_is_put_back(tmp_path: Path):
    repo = make_repo(
        tmp_path / "repo",
        {
            "pkg/__init__.py": "",
            # _dynamic is only reached through a computed name: no text shows the use.
            "pkg/plugins.py": """
                def _dynamic():
                    return 42


                def _really_dead():
                    return 0


                def lookup(name):
                    return globals()["_" + name]()
            """,
            "pkg/util.py": """
                def _unused():
                    return 1


                def ok():
                    return 2
            """,
            "tests/test_plugins.py": """
                from pkg.plugins import lookup
                from pkg.util import ok


                def test_lookup():
                    assert lookup("dynamic") == 42
                    assert ok() == 2
            """,
        },
    )
    original = read(repo, "pkg/plugins.py")
    settings = settings_for(repo)
    ctx = build_context(repo)
    agent = DeadCodeRemover()
    [proposal] = agent.propose(ctx, GOAL)
    assert proposal.files == ["pkg/plugins.py", "pkg/util.py"]
    assert {"_dynamic", "_really_dead", "_unused"} <= {
        e.split()[1].rstrip(":") for e in proposal.evidence[1:]
    }

    summary = agent.implement(
        agent.design(proposal, ctx, settings), work_area(repo, tmp_path / "s", settings, ctx)
    )

    plugins = read(repo, "pkg/plugins.py")
    assert "def _dynamic" in plugins  # put back: the tests proved it is used
    assert "def _really_dead" not in plugins  # the other removal in the same file stays
    assert plugins == original.replace("def _really_dead():\n    return 0\n\n\n", "")
    assert "def _unused" not in read(repo, "pkg/util.py")
    assert "put back in pkg/plugins.py: _dynamic" in summary
    assert "2 dead definition(s) (_really_dead, _unused)" in summary
    assert run_tests(settings.test_command, repo, 120, tmp_path / "s").passed
    assert changed_files(repo) == ["pkg/plugins.py", "pkg/util.py"]


@pytest.mark.slow
def test_when_every_removal_breaks_the_tests_nothing_changes(tmp_path: Path):
    repo = make_repo(
        tmp_path / "repo",
        {
            "pkg/__init__.py": "",
            "pkg/m.py": 'def _hidden():\n    return 1\n\n\ndef get(n):\n    return globals()["_" + n]()\n',
            "tests/test_m.py": 'from pkg.m import get\n\n\ndef test_get():\n    assert get("hidden") == 1\n',
        },
    )
    ctx = build_context(repo)
    settings = settings_for(repo)
    agent = DeadCodeRemover()
    [proposal] = agent.propose(ctx, GOAL)
    with pytest.raises(ImplementationFailed, match="none is safe"):
        agent.implement(
            agent.design(proposal, ctx, settings), work_area(repo, tmp_path / "s", settings, ctx)
        )
    assert status(repo) == []  # the file is back byte for byte, and no junk was left


def generated_repo(
    root: Path, package: str, modules: int, dead: int, used: int
) -> tuple[Path, set[str], set[str]]:
    """A package the agent was not written for: each module has `dead` unreferenced private
    helpers, `used` private helpers called by its public function (some from another module),
    and one unreachable statement."""
    files: dict[str, str] = {f"{package}/__init__.py": ""}
    dead_names: set[str] = set()
    used_names: set[str] = set()
    tests = []
    for m in range(modules):
        mod = f"part{m}"
        parts = []
        for d in range(dead):
            name = f"_{package}_stale_{m}_{d}"
            dead_names.add(name)
            parts.append(f"def {name}(value):\n    return value - {d}\n")
        calls = []
        for u in range(used):
            name = f"_{package}_{mod}_helper{u}"
            used_names.add(name)
            parts.append(f"def {name}(value):\n    return value + {u}\n")
            calls.append(f"{name}(value)")
        parts.append(
            f"def compute_{m}(value):\n    return {' + '.join(calls) or '0'}\n    value += 1\n"
        )
        files[f"{package}/{mod}.py"] = "\n\n".join(parts)
        tests.append(f"from {package}.{mod} import compute_{m}\n")
        tests.append(
            f"def test_compute_{m}():\n    assert compute_{m}(1) == {sum(1 + u for u in range(used))}\n"
        )
    files["tests/test_generated.py"] = "\n".join(tests)
    return make_repo(root, files), dead_names, used_names


@pytest.mark.parametrize(
    ("package", "modules", "dead", "used", "max_files"),
    [("orbit", 2, 2, 1, 5), ("ledger_kit", 4, 1, 2, 3)],
)
@pytest.mark.slow
def test_works_on_a_generated_repository(
    tmp_path: Path, package: str, modules: int, dead: int, used: int, max_files: int
):
    repo, dead_names, used_names = generated_repo(tmp_path / "repo", package, modules, dead, used)
    ctx = build_context(repo, max_files=max_files)
    agent = DeadCodeRemover()
    [proposal] = agent.propose(ctx, GOAL)
    chosen = proposal.files
    assert len(chosen) == min(modules, max_files)
    evidence = "\n".join(proposal.evidence)
    chosen_modules = {int(Path(p).stem.removeprefix("part")) for p in chosen}
    expected_dead = {
        n for n in dead_names if int(n.split("_stale_")[1].split("_")[0]) in chosen_modules
    }
    for name in dead_names:
        assert (f" {name}: private function" in evidence) == (name in expected_dead)
    assert not any(f" {name}:" in evidence for name in used_names)
    assert evidence.count("1 unreachable statement(s) after `return`") == len(chosen)

    settings = settings_for(repo)
    agent.implement(
        agent.design(proposal, ctx, settings), work_area(repo, tmp_path / "s", settings, ctx)
    )
    remaining = set()
    for m in range(modules):
        source = read(repo, f"{package}/part{m}.py")
        remaining |= top_level_names(source)
        assert ("value += 1" in source) == (f"{package}/part{m}.py" not in chosen)
    assert remaining & dead_names == dead_names - expected_dead
    assert used_names <= remaining
    assert run_tests(settings.test_command, repo, 120, tmp_path / "s").passed
    assert changed_files(repo) == sorted(chosen)


@pytest.mark.slow
def test_same_repository_gives_identical_proposals_and_output(tmp_path: Path):
    a = make_repo(tmp_path / "a", PLANTED)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    agent = DeadCodeRemover()
    ctx_a, ctx_b = build_context(a), build_context(b)
    props_a, props_b = agent.propose(ctx_a, GOAL), agent.propose(ctx_b, GOAL)
    assert [p.model_dump() for p in props_a] == [p.model_dump() for p in props_b]
    assert agent.propose(ctx_a, GOAL) == props_a

    settings = settings_for(a)
    out_a = agent.implement(
        agent.design(props_a[0], ctx_a, settings), work_area(a, tmp_path / "sa", settings, ctx_a)
    )
    out_b = agent.implement(
        agent.design(props_b[0], ctx_b, settings), work_area(b, tmp_path / "sb", settings, ctx_b)
    )
    assert out_a == out_b
    assert read(a, "pkg/core.py") == read(b, "pkg/core.py")


def test_nothing_dead_gives_no_proposal(tmp_path: Path):
    repo = make_repo(
        tmp_path / "repo",
        {
            "pkg/__init__.py": "",
            "pkg/live.py": """
                def _helper():
                    return 1


                def api():
                    return _helper()


                def gen():
                    return
                    yield
            """,
            # a private name used only from a test module is used
            "pkg/other.py": "def _for_tests():\n    return 2\n",
            "tests/test_live.py": "from pkg.other import _for_tests\n\n\ndef test_it():\n    assert _for_tests() == 2\n",
        },
    )
    assert DeadCodeRemover().propose(build_context(repo), GOAL) == []


def test_removal_tidies_blank_lines_and_keeps_the_rest_byte_for_byte():
    source = "import os\n\n\n# about a\ndef _a():\n    return 1\n\n\ndef b():\n    return 2\n    x = 3\n\n\ndef _c():\n    pass\n"
    removals = [
        Removal(path="m.py", kind="function", name="_a", scope="module", line=5, start=4, end=6),
        Removal(
            path="m.py", kind="unreachable", name="return", scope="b()", line=11, start=11, end=11
        ),
        Removal(path="m.py", kind="function", name="_c", scope="module", line=14, start=14, end=15),
    ]
    assert apply_removals(source, removals) == "import os\n\n\ndef b():\n    return 2\n"
    assert apply_removals(source, removals[1:2]).count("\n\n\n") == 3
