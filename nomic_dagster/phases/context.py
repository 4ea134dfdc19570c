"""Phase 0 — context: facts about the target repository, within a size budget.

Everything is read from the cycle's worktree at the base commit (never from the user's
checkout, which may hold uncommitted work): the file tree, a symbol map, ruff findings,
the test inventory and a baseline test run, recent churn, TODO/FIXME markers, and the
summaries of earlier cycles on the same target.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

from nomic_dagster.core import pathrules
from nomic_dagster.core.records import (
    Churn,
    CycleSummary,
    Marker,
    ModuleInfo,
    RepoContext,
    Symbol,
    TestInventory,
    Workspace,
)
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.infra.git import git
from nomic_dagster.sandbox.commands import ruff_findings, run_tests

MARKER = re.compile(r"\b(TODO|FIXME|XXX|HACK)\b[:\s]*(.*)")
MAX_FILE_BYTES = 512_000  # larger files are listed but not parsed or scanned
TEXT_SUFFIXES = {
    ".py",
    ".md",
    ".rst",
    ".txt",
    ".toml",
    ".cfg",
    ".ini",
    ".yaml",
    ".yml",
    ".js",
    ".ts",
}


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    ret = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"{prefix} {node.name}({ast.unparse(node.args)}){ret}"


def _decorators(node: ast.AST) -> list[str]:
    return [ast.unparse(d) for d in getattr(node, "decorator_list", [])]


def module_symbols(tree: ast.Module) -> list[Symbol]:
    """Top-level classes and functions, and the methods of top-level classes."""
    symbols: list[Symbol] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            symbols.append(
                Symbol(
                    kind="function",
                    name=node.name,
                    signature=_signature(node),
                    line=node.lineno,
                    public=not node.name.startswith("_"),
                    decorators=_decorators(node),
                )
            )
        elif isinstance(node, ast.ClassDef):
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            symbols.append(
                Symbol(
                    kind="class",
                    name=node.name,
                    signature=f"class {node.name}({bases})" if bases else f"class {node.name}",
                    line=node.lineno,
                    public=not node.name.startswith("_"),
                    decorators=_decorators(node),
                )
            )
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    symbols.append(
                        Symbol(
                            kind="method",
                            name=f"{node.name}.{item.name}",
                            signature=_signature(item),
                            line=item.lineno,
                            public=not node.name.startswith("_") and not item.name.startswith("_"),
                            decorators=_decorators(item),
                        )
                    )
    return symbols


def module_name(path: str) -> str:
    """The dotted name a test run from the repository root imports `path` by ("" if none)."""
    parts = path.removesuffix(".py").split("/")
    if parts[0] == "src" and len(parts) > 1:
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if not parts or not all(p.isidentifier() for p in parts):
        return ""
    return ".".join(parts)


def _is_test_module(path: str) -> bool:
    return pathrules.is_test_path(path) or path.split("/")[0] in ("tests", "test")


def count_test_functions(tree: ast.Module) -> int:
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            count += 1
    return count


def scan_modules(root: Path, files: list[str]) -> tuple[list[ModuleInfo], int]:
    """Parse every tracked .py file: (modules, number of test functions)."""
    modules: list[ModuleInfo] = []
    test_functions = 0
    for rel in files:
        if not rel.endswith(".py"):
            continue
        path = root / rel
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_FILE_BYTES:
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        is_test = _is_test_module(rel)
        try:
            tree = ast.parse(source)
        except SyntaxError:
            modules.append(
                ModuleInfo(path=rel, module="", lines=source.count("\n"), is_test=is_test)
            )
            continue
        if is_test:
            test_functions += count_test_functions(tree)
        modules.append(
            ModuleInfo(
                path=rel,
                module=module_name(rel),
                lines=source.count("\n") + (0 if source.endswith("\n") else 1),
                is_test=is_test,
                symbols=module_symbols(tree),
            )
        )
    return modules, test_functions


def scan_markers(root: Path, files: list[str], limit: int = 200) -> list[Marker]:
    markers: list[Marker] = []
    for rel in files:
        path = root / rel
        if Path(rel).suffix not in TEXT_SUFFIXES or not path.is_file() or path.is_symlink():
            continue
        if path.stat().st_size > MAX_FILE_BYTES:
            continue
        for n, line in enumerate(
            path.read_text(encoding="utf-8", errors="replace").splitlines(), 1
        ):
            m = MARKER.search(line)
            if m:
                markers.append(
                    Marker(path=rel, line=n, kind=m.group(1), text=m.group(2).strip()[:160])
                )
                if len(markers) >= limit:
                    return markers
    return markers


def recent_churn(root: Path, base_sha: str, commits: int = 200, top: int = 20) -> list[Churn]:
    log = git(root, "log", f"-n{commits}", "--name-only", "--format=", base_sha, check=False)
    counts = Counter(line for line in log.splitlines() if line.strip())
    return [
        Churn(path=p, commits=n)
        for p, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    ]


def baseline_tests(
    worktree: Path,
    scratch: Path,
    settings: CycleSettings,
    test_files: list[str],
    test_functions: int,
) -> TestInventory:
    inventory = run_tests(settings.test_command, worktree, settings.test_timeout_s, scratch)
    return inventory.model_copy(update={"test_files": test_files, "test_functions": test_functions})


def fit_budget(ctx: RepoContext) -> RepoContext:
    """Cut the least useful detail first until the serialized context fits the budget."""
    size = len(ctx.model_dump_json())
    cuts: list[str] = []
    while size > ctx.budget_chars:
        if len(ctx.markers) > 20:
            ctx = ctx.model_copy(update={"markers": ctx.markers[:20]})
            cuts.append("markers")
        elif len(ctx.findings) > 100:
            ctx = ctx.model_copy(update={"findings": ctx.findings[:100]})
            cuts.append("findings")
        elif any(m.symbols and m.is_test for m in ctx.modules):
            # test modules' symbol lists matter least: agents see the inventory instead
            ctx = ctx.model_copy(
                update={
                    "modules": [
                        m.model_copy(update={"symbols": []}) if m.is_test else m
                        for m in ctx.modules
                    ]
                }
            )
            cuts.append("test symbols")
        elif len(ctx.files) > 300:
            ctx = ctx.model_copy(update={"files": ctx.files[:300]})
            cuts.append("file tree")
        elif len(ctx.modules) > 40:
            # keep the biggest modules, where improvements are likeliest
            keep = sorted(ctx.modules, key=lambda m: -m.lines)[:40]
            ctx = ctx.model_copy(update={"modules": sorted(keep, key=lambda m: m.path)})
            cuts.append("modules")
        elif len(ctx.findings) > 20:
            ctx = ctx.model_copy(update={"findings": ctx.findings[:20]})
            cuts.append("findings")
        else:
            break
        size = len(ctx.model_dump_json())
    return ctx.model_copy(update={"size_chars": size, "truncated": sorted(set(cuts))})


def gather_context(
    workspace: Workspace, settings: CycleSettings, history: list[CycleSummary]
) -> RepoContext:
    root = Path(workspace.worktree)
    files = sorted(f for f in git(root, "ls-files", "-z").split("\0") if f)
    modules, test_functions = scan_modules(root, files)
    test_files = [m.path for m in modules if m.is_test and pathrules.is_test_path(m.path)]
    tests = baseline_tests(root, Path(workspace.scratch_dir), settings, test_files, test_functions)
    findings = ruff_findings(root)
    ctx = RepoContext(
        root=str(root),
        base_sha=workspace.base_sha,
        files=files,
        modules=modules,
        findings=sorted(findings, key=lambda f: (f.path, f.line, f.code)),
        tests=tests,
        churn=recent_churn(root, workspace.base_sha),
        markers=scan_markers(root, files),
        recent_cycles=history[-5:],
        max_files=settings.max_files,
        budget_chars=settings.context_budget_chars,
    )
    return fit_budget(ctx)


def baseline_problem(tests: TestInventory, settings: CycleSettings) -> str | None:
    """Why the cycle cannot verify anything on this target, or None when the baseline is green."""
    if tests.exit_code == -9:
        return f"the test command timed out after {settings.test_timeout_s}s before any change"
    if tests.collected == 0 and not settings.allow_no_tests:
        return "the test command collected no tests, so no change could be verified (set allow_no_tests to accept)"
    if tests.collected == 0 and tests.exit_code == 5:
        return None
    if not tests.passed:
        return f"the target's tests already fail before any change (exit code {tests.exit_code})"
    return None
