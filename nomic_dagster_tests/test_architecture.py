"""The house's rules, checked on every `make test` (CI runs only that): the layers contract in
pyproject.toml is KEPT and would be BROKEN by a back-edge, the package has no import cycle
at all (function-level imports included), and only orchestration/ and definitions.py import
Dagster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")
LAYERS = "layers: each folder imports only from the folders below it"
DAGSTER_ONLY_ON_TOP = "Dagster only in orchestration/ and definitions.py"
DAGSTER_PACKAGES = ("dagster", "dagster_postgres", "dagster_webserver")
# Where Dagster may be imported: the top layer and the definitions built from it.
DAGSTER_ALLOWED = ("nomic_dagster.orchestration", "nomic_dagster.definitions")


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the package found first from `project` (its pyproject.toml's
    contracts), as `make lint` runs it."""
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--no-logo"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def package_copy(tmp_path: Path) -> Path:
    """The package and its contracts copied to a scratch project, to plant edges in."""
    project = tmp_path / "project"
    shutil.copytree(
        ROOT / "nomic_dagster", project / "nomic_dagster", ignore=shutil.ignore_patterns("*.pyc")
    )
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    return project


def plant(module: Path, line: str) -> None:
    module.write_text(module.read_text(encoding="utf-8") + f"\n\n{line}\n", encoding="utf-8")


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module, or of one that imports
    itself (Tarjan's algorithm, iterative: the graph is deep enough for the stack)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or graph.direct_import_exists(importer=node, imported=node):
                    cycles.append(sorted(component))
    return cycles


def dagster_importers(graph: grimp.ImportGraph) -> set[str]:
    """Modules of the package, outside orchestration/ and definitions.py, importing Dagster."""
    importers: set[str] = set()
    for package in DAGSTER_PACKAGES:
        if package in graph.modules:
            importers |= graph.find_modules_that_directly_import(package)
    return {
        m
        for m in importers
        if not any(m == top or m.startswith(f"{top}.") for top in DAGSTER_ALLOWED)
    }


@pytest.fixture
def graph() -> grimp.ImportGraph:
    # Every import statement, at module level or inside a function or TYPE_CHECKING block.
    return grimp.build_graph("nomic_dagster", include_external_packages=True, cache_dir=None)


def test_the_layers_contracts_are_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{LAYERS} KEPT" in result.stdout
    assert f"{DAGSTER_ONLY_ON_TOP} KEPT" in result.stdout
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "layers", "edge"),
    [
        (
            "core/records.py",
            "import nomic_dagster.orchestration.jobs",
            "nomic_dagster.core is not allowed to import nomic_dagster.orchestration",
            "nomic_dagster.core.records -> nomic_dagster.orchestration.jobs",
        ),
        (
            "phases/design.py",
            "def _dodge():\n    from nomic_dagster.cycle.steps import run_phase",
            "nomic_dagster.phases is not allowed to import nomic_dagster.cycle",
            "nomic_dagster.phases.design -> nomic_dagster.cycle.steps",
        ),
    ],
    ids=["module-level", "function-level"],
)
def test_a_back_edge_breaks_the_layers_contract(
    tmp_path: Path, module: str, line: str, layers: str, edge: str
) -> None:
    project = package_copy(tmp_path)
    plant(project / "nomic_dagster" / module, line)
    result = lint_imports(project)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{LAYERS} BROKEN" in result.stdout
    assert layers in result.stdout and edge in result.stdout, result.stdout
    # the copy was checked, not the installed package
    assert "2 kept" not in result.stdout


def test_the_package_has_no_import_cycle(graph: grimp.ImportGraph) -> None:
    assert len(graph.modules) > 50  # the package itself was found, not an empty one
    assert import_cycles(graph) == []


def test_a_planted_cycle_is_found(graph: grimp.ImportGraph) -> None:
    graph.add_import(importer="nomic_dagster.core.records", imported="nomic_dagster.cycle.steps")
    (cycle,) = import_cycles(graph)
    assert {"nomic_dagster.core.records", "nomic_dagster.cycle.steps"} <= set(cycle)


def test_only_orchestration_and_definitions_import_dagster(graph: grimp.ImportGraph) -> None:
    assert graph.find_modules_that_directly_import("dagster")  # the check sees Dagster at all
    assert dagster_importers(graph) == set()
    graph.add_import(importer="nomic_dagster.cycle.steps", imported="dagster")
    assert dagster_importers(graph) == {"nomic_dagster.cycle.steps"}
