"""Which modules the agent can characterize, which of their functions, and with what calls.

A function qualifies when it is public, top-level, named in no test file, safe to call
(see side_effects.py), not async, not a generator, undecorated (or cached) and every
required parameter has values (see inputs.py). A module qualifies when it has such
functions, imports without side effects and can be imported by its dotted name.
"""

from __future__ import annotations

import ast
import keyword
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from nomic_dagster.agents.offline.test_writer.inputs import (
    Call,
    function_params,
    mine_constants,
    plan_calls,
)
from nomic_dagster.agents.offline.test_writer.side_effects import (
    dotted_name,
    import_aliases,
    import_time_side_effects,
    impure_functions,
    word_set,
)
from nomic_dagster.core.pathrules import is_test_path
from nomic_dagster.core.records import ModuleInfo, RepoContext

MAX_FUNCTIONS_PER_MODULE = 15
MAX_SOURCE_BYTES = 512_000

# Files that are scripts or pytest configuration, never library code to import.
SCRIPT_FILES = word_set("setup.py conftest.py noxfile.py fabfile.py manage.py __main__.py tasks.py")
# Decorators that keep a function's signature and behaviour.
SAFE_DECORATORS = word_set("cache lru_cache functools.cache functools.lru_cache wraps")

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class FunctionPlan:
    name: str
    line: int
    calls: tuple[Call, ...]


@dataclass(frozen=True)
class ModulePlan:
    path: str  # the module's file, repo-relative
    module: str  # dotted import name
    import_dir: str  # repo-relative folder that must be on sys.path ("" = the root)
    test_path: str  # the test file this agent will create
    public: tuple[str, ...]
    untested: tuple[str, ...]
    functions: tuple[FunctionPlan, ...]
    skipped: tuple[tuple[str, str], ...] = field(default=())  # (function, why not)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.functions]


class _Findings(NamedTuple):
    """What one module offers, before it is given a test file."""

    import_dir: str
    public: tuple[str, ...]
    untested: tuple[str, ...]
    functions: tuple[FunctionPlan, ...]
    skipped: tuple[tuple[str, str], ...]


def analyse(root: Path, context: RepoContext) -> list[ModulePlan]:
    """Every module with untested functions this agent can characterize, best first."""
    tests = test_files_of(context)
    mentioned = names_in_tests(root, tests)
    taken = set(context.files)
    basenames = {PurePosixPath(t).name for t in tests}
    plans: list[ModulePlan] = []
    for info in sorted(context.modules, key=lambda m: m.path):
        found = _findings(root, info, mentioned)
        if found is None:
            continue
        test_path = _choose_test_path(context, info, taken, basenames)
        if test_path is None:
            continue
        taken.add(test_path)
        basenames.add(PurePosixPath(test_path).name)
        plans.append(
            ModulePlan(
                path=info.path,
                module=info.module,
                import_dir=found.import_dir,
                test_path=test_path,
                public=found.public,
                untested=found.untested,
                functions=found.functions,
                skipped=found.skipped,
            )
        )
    # modules of the public API first (a `_private` module's functions are internals)
    plans.sort(
        key=lambda p: (_private_module(p.module), -len(p.functions), -len(p.untested), p.path)
    )
    return plans


def _findings(root: Path, info: ModuleInfo, mentioned: set[str]) -> _Findings | None:
    """The module's untested functions and how to call them; None when it has none to offer."""
    if info.is_test or is_test_path(info.path) or PurePosixPath(info.path).name in SCRIPT_FILES:
        return None
    import_dir = import_dir_for(info.path, info.module)
    if import_dir is None:
        return None
    tree = _parse(root, info.path)
    if tree is None:
        return None
    aliases = import_aliases(tree)
    if import_time_side_effects(tree, aliases):
        return None  # the probe and the tests would import it
    defs = _top_level_functions(tree)
    public = sorted((n for n in defs if not n.startswith("_")), key=lambda n: (defs[n].lineno, n))
    untested = [n for n in public if n not in mentioned]
    if not untested:
        return None
    impure = impure_functions(tree, aliases)
    functions: list[FunctionPlan] = []
    skipped: list[tuple[str, str]] = []
    for name in untested:
        planned = _plan_function(defs[name], impure)
        if isinstance(planned, str):
            skipped.append((name, planned))
        elif planned.calls:
            functions.append(planned)
    if not functions:
        return None
    return _Findings(
        import_dir,
        tuple(public),
        tuple(untested),
        tuple(functions[:MAX_FUNCTIONS_PER_MODULE]),
        tuple(skipped),
    )


def _top_level_functions(tree: ast.Module) -> dict[str, FunctionNode]:
    defs: dict[str, FunctionNode] = {}
    for node in tree.body:  # the last definition of a name is the one that is bound
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            defs[node.name] = node
    return defs


def _plan_function(node: FunctionNode, impure: dict[str, list[str]]) -> FunctionPlan | str:
    """The calls to make, or why the function is not characterized."""
    reason = _unsuitable(node, impure)
    if reason:
        return reason
    calls = plan_calls(node.name, function_params(node), mine_constants(node))
    if isinstance(calls, str):
        return calls
    return FunctionPlan(node.name, node.lineno, tuple(calls))


def _unsuitable(node: FunctionNode, impure: dict[str, list[str]]) -> str | None:
    if isinstance(node, ast.AsyncFunctionDef):
        return "async"
    if _is_generator(node):
        return "generator"
    if not all(_decorator_ok(d) for d in node.decorator_list):
        return "decorated"
    if node.name in impure:
        return "side effects: " + impure[node.name][0]
    return None


def _is_generator(node: FunctionNode) -> bool:
    return any(isinstance(n, ast.Yield | ast.YieldFrom) for n in ast.walk(node))


def _decorator_ok(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return (dotted_name(target) or "") in SAFE_DECORATORS


def _private_module(module: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in module.split("."))


# ---------------------------------------------------------------- reading the repository


def _read(root: Path, rel: str) -> str | None:
    path = root / rel
    try:
        if not path.is_file() or path.stat().st_size > MAX_SOURCE_BYTES:
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _parse(root: Path, rel: str) -> ast.Module | None:
    source = _read(root, rel)
    if source is None:
        return None
    try:
        return ast.parse(source)
    except SyntaxError:
        return None


def import_dir_for(path: str, module: str) -> str | None:
    """The folder a module's dotted name is relative to, or None when they disagree."""
    if not module or not all(
        p.isidentifier() and not keyword.iskeyword(p) for p in module.split(".")
    ):
        return None
    parts = path.removesuffix(".py").split("/")
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    mod = module.split(".")
    if len(parts) < len(mod) or parts[len(parts) - len(mod) :] != mod:
        return None
    return "/".join(parts[: len(parts) - len(mod)])


def test_files_of(context: RepoContext) -> list[str]:
    files = set(context.tests.test_files)
    files.update(f for f in context.files if f.endswith(".py") and is_test_path(f))
    files.update(m.path for m in context.modules if m.is_test)
    return sorted(files)


def names_in_tests(root: Path, test_files: list[str]) -> set[str]:
    """Every name a test file mentions: identifiers, attributes, imports and words in
    strings (a function named only in a parametrize id or a message counts as tested)."""
    names: set[str] = set()
    for rel in test_files:
        tree = _parse(root, rel)
        if tree is not None:
            for node in ast.walk(tree):
                names.update(_names_in(node))
    return names


def _names_in(node: ast.AST) -> Iterable[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.alias):
        return [node.name.split(".")[-1], *([node.asname] if node.asname else [])]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _words(node.value)
    return []


def _words(text: str) -> Iterable[str]:
    word: list[str] = []
    for ch in text + " ":
        if ch.isalnum() or ch == "_":
            word.append(ch)
        elif word:
            yield "".join(word)
            word = []


# ---------------------------------------------------------------- where the new file goes


def _test_folder(context: RepoContext) -> str | None:
    for folder in ("tests", "test"):
        if any(f.startswith(f"{folder}/") for f in context.files):
            return folder
    return None


def _choose_test_path(
    context: RepoContext, module: ModuleInfo, taken: set[str], basenames: set[str]
) -> str | None:
    """tests/ (or test/) when the repository has one, else the module's own folder when
    tests sit there, else the root; named after the module, or after its whole dotted name
    when that is taken (pytest refuses two test files of the same name without packages)."""
    folder = _test_folder(context)
    if folder is None:
        here = str(PurePosixPath(module.path).parent)
        here = "" if here == "." else here
        tests_here = any(
            str(PurePosixPath(t).parent) == (here or ".") for t in test_files_of(context)
        )
        folder = here if tests_here else ""
    parts = [p.strip("_") or p for p in module.module.split(".")]
    for stem in (parts[-1], "_".join(parts)):
        name = f"test_{stem}_characterization.py"
        path = f"{folder}/{name}" if folder else name
        if path not in taken and name not in basenames:
            return path
    return None
