"""The dead-code agent: deletes what nothing can reach, and lets the tests confirm it.

Two kinds of dead code, both found with the `ast` module and a word search:

* module-level private functions and classes (`_name`) whose name occurs nowhere else
  in the repository (any Python file, stub or packaging config; word-boundary match,
  the definition's own lines excluded) and that are not listed in `__all__`. A private
  definition used only by another dead one is dead too (found by iterating to a fixed
  point). Decorated definitions are only candidates when every decorator is one that
  cannot register the function somewhere (`functools.cache`, `dataclass`, ...).
* statements after `return`, `raise`, `continue` or `break` in the same block, unless
  they hold a `yield` (which makes the function a generator) or `global`/`nonlocal`.

Removal works on the source text by AST line ranges, so comments and formatting
elsewhere are untouched. After the edit the target's tests run; removals they reject
are put back file by file (then one by one inside the offending file) until the suite
is green again.
"""

from __future__ import annotations

import ast
import bisect
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nomic_dagster.agents.base import WorkArea
from nomic_dagster.agents.offline.common import OfflineAgent
from nomic_dagster.core.errors import ImplementationFailed
from nomic_dagster.core.pathrules import is_junk, is_test_path, normalize
from nomic_dagster.core.records import Design, Goal, Proposal, RepoContext, TestInventory
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.sandbox.commands import ruff_findings, run_command, run_tests

# Files whose text counts as a use of a name (packaging config can name entry points).
CORPUS_SUFFIXES = (".py", ".pyi", ".pyx", ".pxd", ".toml", ".cfg", ".ini")
MAX_CORPUS_FILE_BYTES = 5_000_000
SKIP_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "node_modules", "__pycache__", ".tox", ".nox"}
TEST_DIRS = {"tests", "test", "testing"}
TERMINALS = (ast.Return, ast.Raise, ast.Continue, ast.Break)
# Decorators that only wrap or describe a definition; anything else (app.route,
# pytest.fixture, atexit.register, ...) may register it, which is a use no text shows.
INERT_DECORATORS = {
    "cache",
    "cached_property",
    "contextmanager",
    "asynccontextmanager",
    "dataclass",
    "final",
    "lru_cache",
    "overload",
    "total_ordering",
    "wraps",
    "singledispatch",
    "functools.cache",
    "functools.cached_property",
    "functools.lru_cache",
    "functools.total_ordering",
    "functools.wraps",
    "functools.singledispatch",
    "contextlib.contextmanager",
    "contextlib.asynccontextmanager",
    "dataclasses.dataclass",
    "typing.final",
    "typing.overload",
}
_WORD = re.compile(r"\w+")
# Comments that are instructions to a tool or the interpreter, never a description.
_DIRECTIVE = re.compile(
    r"^#!|coding[:=]|#\s*(?:fmt|isort|ruff|type|pylint|mypy|pyright|noqa|pragma|nosec)\b"
)


@dataclass(frozen=True)
class Removal:
    """One deletion: lines `start..end` (1-based, inclusive) of `path`."""

    path: str
    kind: Literal["function", "class", "unreachable"]
    name: str  # the definition's name, or the statement that ends the block ("return")
    scope: str  # where the block is: "f()", "Cart.total()", "module"
    line: int  # the line to cite
    start: int
    end: int
    statements: int = 1

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.path, self.start, self.end)

    def describe(self) -> str:
        if self.kind == "unreachable":
            span = (
                f"line {self.start}" if self.start == self.end else f"lines {self.start}-{self.end}"
            )
            return (
                f"{self.path}:{self.line} {self.statements} unreachable statement(s) after "
                f"`{self.name}` in {self.scope} ({span})"
            )
        size = self.end - self.start + 1
        return f"{self.path}:{self.line} {self.name}: private {self.kind} ({size} lines) referenced nowhere else"

    def label(self) -> str:
        return self.name if self.kind != "unreachable" else f"unreachable@{self.path}:{self.line}"


# ---------------------------------------------------------------- repository files


def _git_files(root: Path, *args: str) -> list[str] | None:
    try:
        res = run_command(["git", "ls-files", "-z", *args], root, 120)
    except FileNotFoundError:
        return None
    if not res.ok:
        return None
    return sorted(
        {p for p in res.stdout.split("\0") if p and (root / p).is_file() and not is_junk(p)}
    )


def repository_files(root: Path) -> tuple[list[str], list[str]]:
    """(tracked files, every file that may use a name: tracked plus untracked-not-ignored).

    Outside git both are a walk of the folder.
    """
    tracked = _git_files(root, "--cached")
    everything = _git_files(root, "--cached", "--others", "--exclude-standard")
    if tracked is not None and everything is not None:
        return tracked, everything
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")
        )
        for name in filenames:
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if not is_junk(rel):
                out.append(rel)
    return sorted(out), sorted(out)


def is_test_like(path: str) -> bool:
    parts = normalize(path).split("/")
    return is_test_path(path) or any(p in TEST_DIRS for p in parts[:-1])


def candidate_modules(files: list[str], context: RepoContext | None = None) -> list[str]:
    """Non-test Python modules to analyse (the context's test flags count too)."""
    test_flags = {m.path: m.is_test for m in context.modules} if context else {}
    return sorted(
        p
        for p in files
        if p.endswith(".py") and not is_test_like(p) and not test_flags.get(p, False)
    )


def _read(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_CORPUS_FILE_BYTES:
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _parse(text: str) -> ast.Module | None:
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError):
        return None


# ---------------------------------------------------------------- analysis


def is_private(name: str) -> bool:
    if not name.startswith("_") or not name.strip("_"):
        return False
    return not (name.startswith("__") and name.endswith("__"))


def _decorator_name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    else:
        return "?"
    return ".".join(reversed(parts))


def dunder_all(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AugAssign | ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            for elt in ast.walk(value):
                if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                    names.add(elt.value)
    return names


def _first_line(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", None) or []
    return min([node.lineno, *(d.lineno for d in decorators)])


def _private_definitions(path: str, tree: ast.Module, lines: list[str]) -> list[Removal]:
    found = []
    previous_end = 0
    for node in tree.body:
        start = _first_line(node)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and is_private(
            node.name
        ):
            decorators = [_decorator_name(d) for d in node.decorator_list]
            if all(d in INERT_DECORATORS for d in decorators):
                # Comment lines glued to the definition describe it and go with it.
                first = start
                while (
                    first - 1 > previous_end
                    and lines[first - 2].startswith("#")
                    and not _DIRECTIVE.search(lines[first - 2])
                ):
                    first -= 1
                found.append(
                    Removal(
                        path=path,
                        kind="class" if isinstance(node, ast.ClassDef) else "function",
                        name=node.name,
                        scope="module",
                        line=node.lineno,
                        start=first,
                        end=node.end_lineno or node.lineno,
                    )
                )
        previous_end = node.end_lineno or node.lineno
    return found


_NEW_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _walk_same_scope(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    stack = list(nodes)
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, _NEW_SCOPES):
                stack.append(child)


def _changes_meaning(statements: list[ast.stmt]) -> bool:
    """Unreachable code that still matters: `yield` makes a generator, global/nonlocal
    decide where names live. (Nested definitions keep their own yields.)"""
    return any(
        isinstance(n, ast.Yield | ast.YieldFrom | ast.Global | ast.Nonlocal)
        for n in _walk_same_scope(statements)
    )


def _unreachable(path: str, tree: ast.Module) -> list[Removal]:
    found: list[Removal] = []

    def visit(node: ast.AST, scope: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            scope = (
                f"{node.name}()"
                if scope == "module"
                else f"{scope.removesuffix('()')}.{node.name}()"
            )
        elif isinstance(node, ast.ClassDef):
            scope = node.name if scope == "module" else f"{scope.removesuffix('()')}.{node.name}"
        for _name, value in ast.iter_fields(node):
            if isinstance(value, list) and value and all(isinstance(v, ast.stmt) for v in value):
                check_block(value, scope)
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    def check_block(block: list[ast.stmt], scope: str) -> None:
        for i, stmt in enumerate(block[:-1]):
            if not isinstance(stmt, TERMINALS):
                continue
            rest = block[i + 1 :]
            start = _first_line(rest[0])
            if start <= (stmt.end_lineno or stmt.lineno) or _changes_meaning(rest):
                return  # shares a line with live code (`return x; y()`), or still matters
            keyword = {
                ast.Return: "return",
                ast.Raise: "raise",
                ast.Continue: "continue",
                ast.Break: "break",
            }
            found.append(
                Removal(
                    path=path,
                    kind="unreachable",
                    name=keyword[type(stmt)],
                    scope=scope if scope != "module" else "the module body",
                    line=start,
                    start=start,
                    end=max(s.end_lineno or s.lineno for s in rest),
                    statements=len(rest),
                )
            )
            return

    visit(tree, "module")
    return found


def _contained(inner: Removal, outer: Removal) -> bool:
    return inner.key != outer.key and outer.start <= inner.start and inner.end <= outer.end


@dataclass
class _Module:
    path: str
    text: str
    tree: ast.Module
    private: list[Removal]
    unreachable: list[Removal]
    exported: set[str]


@dataclass
class Analysis:
    removals: dict[str, list[Removal]] = field(default_factory=dict)  # path -> sorted removals
    scanned_modules: int = 0
    corpus_files: int = 0

    def lines_removed(self, root: Path, path: str) -> int:
        text = (root / path).read_text(encoding="utf-8")
        return len(text.splitlines()) - len(apply_removals(text, self.removals[path]).splitlines())


def analyse(root: Path, candidates: list[str], corpus: list[str]) -> Analysis:
    """Dead private definitions and unreachable statements in `candidates`.

    `corpus` is every file whose text may use a name.
    """
    modules: dict[str, _Module] = {}
    for path in candidates:
        text = _read(root / path)
        tree = _parse(text) if text is not None else None
        if text is None or tree is None:
            continue
        lines = text.splitlines()
        modules[path] = _Module(
            path=path,
            text=text,
            tree=tree,
            private=_private_definitions(path, tree, lines),
            unreachable=_unreachable(path, tree),
            exported=dunder_all(tree),
        )
    names = {r.name for m in modules.values() for r in m.private}
    # Every occurrence of a candidate name: name -> [(path, line)].
    occurrences: dict[str, list[tuple[str, int]]] = {n: [] for n in names}
    scanned = 0
    for path in corpus:
        if not path.endswith(CORPUS_SUFFIXES):
            continue
        text = modules[path].text if path in modules else _read(root / path)
        if text is None:
            continue
        scanned += 1
        if not names:
            continue
        starts = [0] + [m.end() for m in re.finditer("\n", text)]
        for match in _WORD.finditer(text):
            if match.group() in names:
                occurrences[match.group()].append(
                    (path, bisect.bisect_right(starts, match.start()))
                )

    dead: dict[tuple[str, int, int], Removal] = {}
    changed = True
    while changed:  # a private definition used only by dead ones is dead too
        changed = False
        for module in modules.values():
            for r in module.private:
                if r.key in dead or r.name in module.exported:
                    continue
                spans = [(d.start, d.end) for d in dead.values() if d.path == r.path]
                spans.append((r.start, r.end))
                used = any(
                    p != r.path or not any(a <= line <= b for a, b in spans)
                    for p, line in occurrences.get(r.name, [])
                )
                if not used:
                    dead[r.key] = r
                    changed = True

    analysis = Analysis(scanned_modules=len(modules), corpus_files=scanned)
    for path, module in sorted(modules.items()):
        chosen = [r for r in module.private if r.key in dead] + module.unreachable
        chosen = [r for r in chosen if not any(_contained(r, o) for o in chosen)]
        if chosen:
            analysis.removals[path] = sorted(chosen, key=lambda r: (r.start, r.end))
    return analysis


# ---------------------------------------------------------------- editing


def apply_removals(text: str, removals: Iterable[Removal]) -> str:
    """Delete each removal's lines and tidy the blank lines around the gap.

    The gap keeps as many blank lines as the larger run on either side of it (so two
    top-level definitions stay two blank lines apart), and none at the start or end of
    the file.
    """
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.splitlines(keepends=True)
    for r in sorted(removals, key=lambda r: r.start, reverse=True):
        start, end = r.start - 1, min(r.end, len(lines))
        if start < 0 or start >= end:
            continue
        before = start
        while before > 0 and not lines[before - 1].strip():
            before -= 1
        after = end
        while after < len(lines) and not lines[after].strip():
            after += 1
        keep = max(start - before, after - end) if before > 0 and after < len(lines) else 0
        lines[before:after] = [newline] * keep
    out = "".join(lines)
    if out and lines and not out.endswith(("\n", "\r")) and text.endswith(("\n", "\r")):
        out += newline
    return out


def edit_file(text: str, removals: list[Removal]) -> tuple[str, list[Removal]]:
    """Apply the removals that keep the file parseable; returns (new text, applied)."""
    new = apply_removals(text, removals)
    if _parse(new) is not None:
        return new, list(removals)
    applied: list[Removal] = []
    for r in removals:  # find the ones that break parsing, one at a time
        trial = apply_removals(text, [*applied, r])
        if _parse(trial) is not None:
            applied.append(r)
    return apply_removals(text, applied), applied


def _tests_green(inv: TestInventory, settings: CycleSettings) -> bool:
    if inv.passed:
        return True
    return settings.allow_no_tests and inv.collected == 0 and inv.exit_code == 5


# ---------------------------------------------------------------- the agent


class DeadCodeRemover(OfflineAgent):
    """Removes unreferenced private definitions and unreachable statements."""

    name = "dead-code"
    kind = "remove-dead-code"
    criterion = "size"

    def survey(self, root: Path, context: RepoContext | None = None) -> Analysis:
        tracked, everything = repository_files(root)
        return analyse(root, candidate_modules(tracked, context), everything)

    def propose(self, context: RepoContext, goal: Goal) -> list[Proposal]:
        root = Path(context.root)
        analysis = self.survey(root, context)
        if not analysis.removals:
            return []
        sizes = {p: analysis.lines_removed(root, p) for p in analysis.removals}
        ranked = sorted(analysis.removals, key=lambda p: (-sizes[p], p))[
            : max(1, context.max_files)
        ]
        ranked.sort()
        removals = [r for p in ranked for r in analysis.removals[p]]
        lines = sum(sizes[p] for p in ranked)
        defs = [r for r in removals if r.kind != "unreachable"]
        blocks = [r for r in removals if r.kind == "unreachable"]
        parts = []
        if defs:
            parts.append(f"{len(defs)} unreferenced private definition(s)")
        if blocks:
            parts.append(f"{len(blocks)} block(s) of unreachable statements")
        summary = (
            f"{' and '.join(parts)} in {len(ranked)} file(s), about {lines} lines "
            f"(checked against {analysis.corpus_files} files)"
        )
        benefit = round(min(0.85, 0.1 + 0.7 * (1 - math.exp(-lines / 40))), 4)
        return [
            self.make_proposal(
                title=f"Remove dead code from {len(ranked)} file(s)",
                description=(
                    f"Delete {summary}. Names were searched as whole words in every Python "
                    "file, stub and packaging config of the repository; the tests decide: "
                    "any removal they reject is put back."
                ),
                files=ranked,
                evidence=[summary, *(r.describe() for r in removals)],
                benefit=benefit,
                risk=0.3,
                estimated_lines=lines,
            )
        ]

    def plan_steps(self, proposal: Proposal) -> list[str]:
        steps = [f"delete {e}" for e in proposal.evidence[1:]]
        return [
            *steps,
            "check every edited file still parses and has no new undefined names (ruff F821)",
            "run the tests; put back removals file by file (then one by one) until they pass",
        ]

    def implement(self, design: Design, area: WorkArea) -> str:
        root = area.worktree
        analysis = self.survey(root, area.context)
        files = []
        for raw in design.files:
            try:
                path = normalize(raw)
            except ValueError:
                continue
            if path in analysis.removals and path not in files:
                files.append(path)
        if not files:
            raise ImplementationFailed(f"no dead code left to remove in {', '.join(design.files)}")

        originals = {p: (root / p).read_text(encoding="utf-8") for p in files}
        planned = {p: analysis.removals[p] for p in files}
        applied: dict[str, list[Removal]] = {}  # what is in the worktree now
        notes: list[str] = []

        def write(path: str, removals: list[Removal]) -> list[Removal]:
            text, done = edit_file(originals[path], removals) if removals else (originals[path], [])
            (root / path).write_text(text, encoding="utf-8")
            if done:
                applied[path] = done
            else:
                applied.pop(path, None)
            return done

        runs = 0

        def green() -> bool:
            nonlocal runs
            runs += 1
            inv = run_tests(
                area.settings.test_command, root, area.settings.test_timeout_s, area.scratch
            )
            return _tests_green(inv, area.settings)

        try:
            undefined_before = _undefined_counts(root, files)
            for path in files:
                write(path, planned[path])
            undefined_after = _undefined_counts(root, list(applied))
            for path in list(applied):
                if undefined_after.get(path, 0) > undefined_before.get(path, 0):
                    write(path, [])
                    notes.append(f"put back {path}: the removal left undefined names")
            if not applied:
                raise ImplementationFailed("every removal broke parsing or left undefined names")

            if not green():
                # Put back whole files, last first, until the suite is green.
                reverted: list[str] = []
                for path in reversed(list(applied)):
                    write(path, [])
                    reverted.append(path)
                    if green():
                        break
                else:
                    raise ImplementationFailed(
                        "the tests fail even with every removal put back (is the suite red?)"
                    )
                culprit = reverted[-1]
                # Files put back before the culprit may have been fine: try each again.
                for path in reversed(reverted[:-1]):
                    write(path, planned[path])
                    if not green():
                        write(path, [])
                        notes.append(f"put back {path}: tests failed without it")
                # Inside the culprit, keep whichever single removals the tests accept.
                kept: list[Removal] = []
                if len(planned[culprit]) > 1:
                    for r in planned[culprit]:
                        if r in write(culprit, [*kept, r]) and green():
                            kept.append(r)
                        write(culprit, kept)
                rejected = [r.label() for r in planned[culprit] if r not in kept]
                if rejected:
                    notes.append(
                        f"put back in {culprit}: {', '.join(rejected)} (tests failed without it)"
                    )
            if not applied:
                raise ImplementationFailed(
                    "the tests fail after every removal, so none is safe: " + "; ".join(notes)
                )
        except BaseException:
            for path, text in originals.items():
                (root / path).write_text(text, encoding="utf-8")
            raise

        done = [r for p in files for r in applied.get(p, [])]
        defs = [r.name for r in done if r.kind != "unreachable"]
        blocks = [r for r in done if r.kind == "unreachable"]
        removed = sum(
            len(originals[p].splitlines())
            - len((root / p).read_text(encoding="utf-8").splitlines())
            for p in applied
        )
        parts = []
        if defs:
            parts.append(f"{len(defs)} dead definition(s) ({', '.join(defs)})")
        if blocks:
            parts.append(f"{sum(r.statements for r in blocks)} unreachable statement(s)")
        summary = (
            f"removed {' and '.join(parts)} from {len(applied)} file(s), -{removed} lines; "
            f"tests pass ({runs} test run(s))"
        )
        return summary + ("; " + "; ".join(notes) if notes else "")


def _undefined_counts(root: Path, files: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    if not files:
        return counts
    for f in ruff_findings(root, files, select="F821"):
        counts[f.path] = counts.get(f.path, 0) + 1
    return counts
