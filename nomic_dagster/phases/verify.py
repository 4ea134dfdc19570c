"""VERIFY: check the final diff with gates that trust no agent.

Every gate reads the staged tree (`changeset.tree_sha`, what COMMIT records) and the base
commit (`changeset.base_sha`) from git itself; the file list is recomputed from those two
trees, not taken from the change set. The cheap static gates run first; the target's
test suite runs last and only when every other gate passed.

Gates, in report order:

- worktree_stable: the worktree's index is still `tree_sha`, its files match the index
  (before and after the test run), and no stray file could change what the tests see.
- non_empty, inside_worktree, protected_paths, compiles,
- tests_kept, no_new_skips, assertions_kept (test files only),
- ruff_no_new_violations (base vs final content, both under the target's ruff config),
- tests_pass.
"""

from __future__ import annotations

import ast
import io
import json
import operator
import posixpath
import re
import subprocess
import sys
import time
import tokenize
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nomic_dagster.core import pathrules
from nomic_dagster.core.records import (
    ChangeSet,
    GateResult,
    TestInventory,
    VerificationReport,
    Workspace,
)
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.infra.git import GIT_STATUS, git
from nomic_dagster.sandbox import commands as tools

NOT_RUN = "not run: earlier gates failed"
_SYMLINK, _GITLINK = "120000", "160000"
_REGULAR = ("100644", "100755")
_MAX_LISTED = 10


@dataclass(frozen=True)
class _Change:
    path: str
    status: str
    old_path: str | None = None

    @property
    def base_path(self) -> str | None:
        """Where the file's previous version lives at the base (None: it is new)."""
        if self.status == "added":
            return None
        return self.old_path or self.path

    @property
    def exists_after(self) -> bool:
        return self.status != "deleted"


@dataclass(frozen=True)
class _Entry:
    mode: str
    kind: str  # blob, commit (gitlink), tree
    sha: str


_Reader = Callable[[_Change], bytes | None]  # a changed file's content at the base / after


# ---------------------------------------------------------------- git plumbing


def _git_bytes(wt: Path, *args: str, input: bytes | None = None) -> bytes:
    res = subprocess.run(
        ["git", *args],
        cwd=wt,
        input=input,
        capture_output=True,
        env=tools.tool_env(extra={"GIT_TERMINAL_PROMPT": "0"}),
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if res.returncode != 0:
        raise subprocess.CalledProcessError(res.returncode, ["git", *args], res.stdout, res.stderr)
    return res.stdout


def _diff_files(wt: Path, base: str, tree: str) -> list[_Change]:
    raw = _git_bytes(wt, "diff", "--no-ext-diff", "--name-status", "-M", "-z", base, tree)
    entries = raw.decode("utf-8", "surrogateescape").split("\0")
    out: list[_Change] = []
    i = 0
    while i < len(entries) and entries[i]:
        letter = entries[i][0]
        if letter in ("R", "C"):
            old, new = entries[i + 1], entries[i + 2]
            i += 3
            out.append(_Change(new, GIT_STATUS[letter], old if letter == "R" else None))
        else:
            out.append(_Change(entries[i + 1], GIT_STATUS.get(letter, "modified")))
            i += 2
    return out


def _ls_tree(wt: Path, tree: str) -> dict[str, _Entry]:
    raw = _git_bytes(wt, "ls-tree", "-r", "-z", "--full-tree", tree)
    out: dict[str, _Entry] = {}
    for item in raw.decode("utf-8", "surrogateescape").split("\0"):
        if not item:
            continue
        meta, path = item.split("\t", 1)
        mode, kind, sha = meta.split()
        out[path] = _Entry(mode, kind, sha)
    return out


def _read_blobs(wt: Path, specs: list[str]) -> dict[str, bytes | None]:
    """Contents of `<rev>:<path>` objects in one `git cat-file --batch`; None when missing."""
    out: dict[str, bytes | None] = {s: None for s in specs}
    asked = [s for s in dict.fromkeys(specs) if "\n" not in s]
    if not asked:
        return out
    data = _git_bytes(wt, "cat-file", "--batch", input="".join(s + "\n" for s in asked).encode())
    pos = 0
    for spec in asked:
        end = data.index(b"\n", pos)
        header = data[pos:end]
        pos = end + 1
        if header.endswith((b" missing", b" ambiguous")):
            continue
        _oid, kind, size = header.split()  # "<oid> <type> <size>"
        if kind == b"blob":
            out[spec] = data[pos : pos + int(size)]
        pos += int(size) + 1
    return out


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _tracked_drift(wt: Path, tree_sha: str) -> tuple[str | None, list[str]]:
    """How the worktree left the verified tree: (index problem, modified tracked files)."""
    try:
        index_tree = git(wt, "write-tree").strip()
        index_problem = (
            None
            if index_tree == tree_sha
            else f"the index is now tree {index_tree[:12]}, not the verified {tree_sha[:12]}"
        )
    except subprocess.CalledProcessError as exc:
        index_problem = f"the index cannot be written as a tree: {exc.stderr.strip()[:200]}"
    changed = [p for p in git(wt, "diff", "--no-ext-diff", "--name-only", "-z").split("\0") if p]
    return index_problem, changed


def _stray_files(wt: Path) -> list[str]:
    """Files the tests would see that the commit would not contain."""
    problems: list[str] = []
    untracked = git(wt, "ls-files", "--others", "--exclude-standard", "-z").split("\0")
    untracked = [p for p in untracked if p and not pathrules.is_junk(p)]
    if untracked:
        problems.append("untracked files that are not in the change set: " + _listing(untracked))
    ignored = git(wt, "ls-files", "--others", "--ignored", "--exclude-standard", "-z").split("\0")
    ignored = [p for p in ignored if p.endswith(".py") and not pathrules.is_junk(p)]
    if ignored:
        problems.append("git-ignored Python files the tests could import: " + _listing(ignored))
    return problems


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


# ---------------------------------------------------------------- the phase


def verify_change(
    changeset: ChangeSet, workspace: Workspace, settings: CycleSettings
) -> VerificationReport:
    """Run every gate on the staged tree of `changeset` in `workspace.worktree`."""
    start = time.monotonic()
    wt = Path(workspace.worktree)
    scratch = Path(workspace.scratch_dir)
    base, tree = changeset.base_sha, changeset.tree_sha

    changes = _diff_files(wt, base, tree)
    after_tree = _ls_tree(wt, tree)

    gates: list[GateResult] = [_gate_worktree_stable(wt, changeset, changes)]
    gates.append(_gate_non_empty(changes))
    gates.append(_gate_inside_worktree(wt, changes, after_tree))
    safe = [c for c in changes if _is_safe(c)]
    gates.append(_gate_protected(safe, settings.protected_paths))

    # Contents of the changed Python files, at the base and in the final tree.
    py_after = [
        c
        for c in safe
        if c.exists_after
        and c.path.endswith(".py")
        and (e := after_tree.get(c.path)) is not None
        and e.mode in _REGULAR
    ]
    test_changes = [
        c
        for c in safe
        if pathrules.is_test_path(c.path) or (c.base_path and pathrules.is_test_path(c.base_path))
    ]
    specs = [f"{tree}:{c.path}" for c in py_after]
    specs += [f"{base}:{c.base_path}" for c in safe if c.base_path and c.base_path.endswith(".py")]
    blobs = _read_blobs(wt, specs)

    def after(c: _Change) -> bytes | None:
        return blobs.get(f"{tree}:{c.path}") if c.exists_after else None

    def before(c: _Change) -> bytes | None:
        return blobs.get(f"{base}:{c.base_path}") if c.base_path else None

    gates.append(_gate_compiles(py_after, after))
    gates.append(_gate_tests_kept(test_changes, before, after))
    gates.append(_gate_no_new_skips(test_changes, before, after))
    gates.append(_gate_assertions_kept(test_changes, before, after))
    gates.append(_gate_ruff(wt, scratch, py_after, before, after))

    inventory = _test_inventory(wt, tree, after_tree, settings.test_command)
    if all(g.passed for g in gates):
        inventory = _run_tests(wt, scratch, settings, inventory)
        gates.append(_gate_tests_pass(inventory, settings))
        index_problem, changed = _tracked_drift(wt, tree)
        if index_problem or changed:
            problems = [f"tests modified tracked files: {_listing(changed)}"] if changed else []
            problems += [f"after the tests, {index_problem}"] if index_problem else []
            gates[0] = GateResult(name="worktree_stable", passed=False, detail="; ".join(problems))
    else:
        gates.append(GateResult(name="tests_pass", passed=False, detail=NOT_RUN))

    return VerificationReport(
        passed=all(g.passed for g in gates),
        gates=gates,
        tests=inventory,
        duration_s=round(time.monotonic() - start, 3),
    )


def _is_safe(c: _Change) -> bool:
    try:
        pathrules.normalize(c.path)
        if c.old_path is not None:
            pathrules.normalize(c.old_path)
    except ValueError:
        return False
    return True


def _is_test_file(path: str) -> bool:
    try:
        return pathrules.is_test_path(path)
    except ValueError:
        return False


def _test_inventory(
    wt: Path, tree: str, after_tree: dict[str, _Entry], command: str
) -> TestInventory:
    """The final tree's test files and how many test functions they define."""
    files = sorted(p for p, e in after_tree.items() if e.kind == "blob" and _is_test_file(p))
    sources = _read_blobs(wt, [f"{tree}:{p}" for p in files if p.endswith(".py")])
    count = sum(len(_test_functions(m)) for src in sources.values() if (m := _parse(src)))
    return TestInventory(command=command, test_files=files, test_functions=count)


# ---------------------------------------------------------------- cheap gates


def _gate_worktree_stable(wt: Path, changeset: ChangeSet, changes: list[_Change]) -> GateResult:
    index_problem, changed = _tracked_drift(wt, changeset.tree_sha)
    problems = [index_problem] if index_problem else []
    if changed:
        problems.append("modified tracked files: " + _listing(changed))
    problems += _stray_files(wt)
    listed, actual = sorted(changeset.paths), sorted(c.path for c in changes)
    if listed != actual:
        problems.append(
            f"the change set lists {_listing(listed) or 'no files'} but its tree changes "
            f"{_listing(actual) or 'no files'}"
        )
    if problems:
        return GateResult(name="worktree_stable", passed=False, detail="; ".join(problems))
    return GateResult(
        name="worktree_stable", passed=True, detail="worktree matches the staged tree"
    )


def _gate_non_empty(changes: list[_Change]) -> GateResult:
    if not changes:
        return GateResult(name="non_empty", passed=False, detail="the change set has no files")
    return GateResult(name="non_empty", passed=True, detail=f"{len(changes)} file(s) changed")


def _gate_inside_worktree(
    wt: Path, changes: list[_Change], after_tree: dict[str, _Entry]
) -> GateResult:
    problems: list[str] = []
    links: list[tuple[str, _Entry]] = []
    for c in changes:
        for p in filter(None, (c.path, c.old_path)):
            try:
                pathrules.normalize(p)
            except ValueError as exc:
                problems.append(str(exc))
        entry = after_tree.get(c.path) if c.exists_after else None
        if entry is None:
            continue
        if entry.mode == _GITLINK:
            problems.append(f"submodule {c.path} added (gitlink to commit {entry.sha[:12]})")
        elif entry.mode == _SYMLINK:
            links.append((c.path, entry))
    targets = _read_blobs(wt, [e.sha for _, e in links])
    for path, entry in links:
        raw = targets.get(entry.sha)
        target = _decode(raw) if raw is not None else "?"
        problems.append(_describe_symlink(path, target))
    if problems:
        return GateResult(name="inside_worktree", passed=False, detail="; ".join(problems))
    return GateResult(
        name="inside_worktree",
        passed=True,
        detail="all paths are relative, no symlinks or submodules added",
    )


def _describe_symlink(path: str, target: str) -> str:
    if target.startswith("/"):
        return f"symlink {path} -> {target} points outside the worktree (absolute target)"
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        return f"symlink {path} -> {target} points outside the worktree"
    return f"symlink {path} -> {target} (symlinks are not allowed)"


def _gate_protected(changes: list[_Change], rules: list[str]) -> GateResult:
    hits: list[str] = []
    for c in changes:
        for p in dict.fromkeys(filter(None, (c.path, c.old_path))):
            rule = pathrules.first_match(p, rules)
            if rule is not None:
                hits.append(f"{p} (protected by {rule!r})")
    if hits:
        return GateResult(name="protected_paths", passed=False, detail="; ".join(hits))
    return GateResult(name="protected_paths", passed=True, detail="no protected path touched")


def _gate_compiles(py_after: list[_Change], after: _Reader) -> GateResult:
    errors: list[str] = []
    for c in py_after:
        source = after(c)
        if source is None:
            errors.append(f"{c.path}: cannot read the staged version")
            continue
        try:
            with warnings.catch_warnings():  # SyntaxWarnings are not failures
                warnings.simplefilter("ignore")
                compile(source, c.path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            errors.append(f"{c.path}:{exc.lineno or 0}: {exc.msg}")
        except (ValueError, RecursionError, MemoryError) as exc:
            errors.append(f"{c.path}: {type(exc).__name__}: {exc}")
    if errors:
        return GateResult(name="compiles", passed=False, detail="; ".join(errors))
    return GateResult(
        name="compiles", passed=True, detail=f"{len(py_after)} Python file(s) compile"
    )


# ---------------------------------------------------------------- test-file gates

_Fn = ast.FunctionDef | ast.AsyncFunctionDef


def _parse(source: bytes | None) -> ast.Module | None:
    if source is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _is_test_class(node: ast.ClassDef) -> bool:
    if node.name.startswith("Test"):
        return True
    for b in node.bases:
        name = b.attr if isinstance(b, ast.Attribute) else b.id if isinstance(b, ast.Name) else ""
        if name.endswith("TestCase"):
            return True
    return False


def _test_functions(module: ast.Module) -> dict[str, _Fn]:
    """Test functions pytest would collect, by qualified name ("TestCart.test_total")."""
    out: dict[str, _Fn] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if node.name.startswith("test"):
                    out[prefix + node.name] = node
            elif isinstance(node, ast.ClassDef):
                if _is_test_class(node):
                    visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.If | ast.With | ast.AsyncWith):
                visit(node.body, prefix)
                visit(getattr(node, "orelse", []), prefix)
            elif isinstance(node, ast.Try | ast.TryStar):
                visit(node.body, prefix)
                visit(node.orelse, prefix)
                visit(node.finalbody, prefix)
                for h in node.handlers:
                    visit(h.body, prefix)

    visit(module.body, "")
    return out


def _gate_tests_kept(test_changes: list[_Change], before: _Reader, after: _Reader) -> GateResult:
    problems: list[str] = []
    checked = 0
    for c in test_changes:
        base_is_test = c.base_path is not None and pathrules.is_test_path(c.base_path)
        if not base_is_test:
            continue  # a new test file: nothing to keep
        if c.status == "deleted":
            problems.append(f"test file {c.path} deleted")
            continue
        if not pathrules.is_test_path(c.path):
            problems.append(f"test file {c.old_path} renamed to {c.path}, which is not a test file")
            continue
        if not c.base_path or not c.base_path.endswith(".py"):
            continue
        base_mod = _parse(before(c))
        if base_mod is None:
            continue  # the base version did not parse: no test functions to compare
        base_fns = _test_functions(base_mod)
        checked += len(base_fns)
        after_mod = _parse(after(c))
        if after_mod is None:
            if base_fns:
                problems.append(
                    f"{c.path} no longer parses, so its {len(base_fns)} test function(s) are lost"
                )
            continue
        missing = sorted(set(base_fns) - set(_test_functions(after_mod)))
        if missing:
            problems.append(f"{c.path}: test function(s) removed: {_listing(missing)}")
    if problems:
        return GateResult(name="tests_kept", passed=False, detail="; ".join(problems))
    return GateResult(
        name="tests_kept",
        passed=True,
        detail=f"all {checked} test function(s) of the changed test files kept",
    )


_SKIP_KINDS: dict[str, re.Pattern[str]] = {
    "pytest.skip(": re.compile(r"\bpytest \. skip \("),
    "@pytest.mark.skip": re.compile(r"\bmark \. skip\b"),
    "skipif": re.compile(r"\bskipif\b"),
    "xfail": re.compile(r"\bxfail\b"),
    "importorskip": re.compile(r"\bimportorskip\b"),
    "unittest.skip": re.compile(r"\bunittest \. skip\w*|\bskip(?:If|Unless|Test)\b|\bSkipTest\b"),
}
_DROP_TOKENS = {
    tokenize.COMMENT,
    tokenize.STRING,
    *(t for t in (getattr(tokenize, "FSTRING_MIDDLE", None),) if t is not None),
}


def _code_tokens(text: str) -> str:
    """The code of `text` as space-separated tokens, without comments and string contents."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, ValueError):
        return re.sub(r"\s*([.(])\s*", r" \1 ", text)
    return " ".join(
        "\n" if t.type in (tokenize.NEWLINE, tokenize.NL) else t.string
        for t in toks
        if t.type not in _DROP_TOKENS
    )


def _skip_counts(source: bytes | None) -> Counter[str]:
    if source is None:
        return Counter()
    code = _code_tokens(_decode(source))
    return Counter({k: len(rx.findall(code)) for k, rx in _SKIP_KINDS.items()})


def _gate_no_new_skips(test_changes: list[_Change], before: _Reader, after: _Reader) -> GateResult:
    problems: list[str] = []
    for c in test_changes:
        if not c.exists_after or not pathrules.is_test_path(c.path) or not c.path.endswith(".py"):
            continue
        base_counts = _skip_counts(before(c))
        after_counts = _skip_counts(after(c))
        grown = [
            f"{kind} {base_counts[kind]} -> {n}"
            for kind, n in after_counts.items()
            if n > base_counts[kind]
        ]
        if grown:
            problems.append(f"{c.path}: " + ", ".join(grown))
    if problems:
        return GateResult(
            name="no_new_skips", passed=False, detail="new skips/xfails: " + "; ".join(problems)
        )
    return GateResult(name="no_new_skips", passed=True, detail="no skip or xfail added")


_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_NO_VALUE = object()


def _literal(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NO_VALUE


def _trivially_true(node: ast.expr) -> bool:
    """A condition that holds whatever the code under test does: `True`, `1`, `(a, b)`, `1 == 1`."""
    value = _literal(node)
    if value is not _NO_VALUE:
        return bool(value)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return bool(node.elts) and not any(isinstance(e, ast.Starred) for e in node.elts)
    if isinstance(node, ast.Dict):
        return bool(node.keys) and None not in node.keys  # no `**mapping`
    if isinstance(node, ast.Lambda):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        value = _literal(node.operand)
        return value is not _NO_VALUE and not value
    if isinstance(node, ast.BoolOp):
        parts = [_trivially_true(v) for v in node.values]
        return any(parts) if isinstance(node.op, ast.Or) else all(parts)
    if isinstance(node, ast.Compare):
        values = [_literal(node.left), *(_literal(v) for v in node.comparators)]
        if any(v is _NO_VALUE for v in values) or not all(type(o) in _COMPARE for o in node.ops):
            return False
        try:
            return all(
                _COMPARE[type(op)](a, b)
                for op, a, b in zip(node.ops, values, values[1:], strict=False)
            )
        except Exception:
            return False
    return False


_TRUE_ASSERTS = {"assertTrue", "assert_", "failUnless"}
_FALSE_ASSERTS = {"assertFalse", "failIf"}
_EQUAL_ASSERTS = {"assertEqual", "assertEquals", "assertIs", "assertIn"}


def _assertion_counts(fn: _Fn) -> tuple[int, int]:
    """(real assertions, trivially true ones) in a test function, nested code included."""
    real = trivial = 0
    for node in ast.walk(fn):
        if isinstance(node, ast.Assert):
            if _trivially_true(node.test):
                trivial += 1
            else:
                real += 1
        elif isinstance(node, ast.Call):
            f = node.func
            kind = None
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                if f.value.id == "self" and f.attr.startswith(("assert", "fail")):
                    kind = f.attr
                elif f.value.id == "pytest" and f.attr in ("raises", "warns"):
                    kind = "raises"
            elif isinstance(f, ast.Name) and f.id in ("raises", "warns"):
                kind = "raises"
            if kind is None:
                continue
            if _trivial_call(kind, node.args):
                trivial += 1
            else:
                real += 1
    return real, trivial


def _trivial_call(kind: str, args: list[ast.expr]) -> bool:
    if kind in _TRUE_ASSERTS and args:
        return _trivially_true(args[0])
    if kind in _FALSE_ASSERTS and args:
        value = _literal(args[0])
        return value is not _NO_VALUE and not value
    if kind in _EQUAL_ASSERTS and len(args) >= 2:
        a, b = _literal(args[0]), _literal(args[1])
        if a is _NO_VALUE or b is _NO_VALUE:
            return False
        try:
            return bool(b.__contains__(a)) if kind == "assertIn" else a == b  # type: ignore[attr-defined]
        except Exception:
            return False
    return False


def _gate_assertions_kept(
    test_changes: list[_Change], before: _Reader, after: _Reader
) -> GateResult:
    problems: list[str] = []
    compared = 0
    for c in test_changes:
        if not c.exists_after or not c.base_path or not pathrules.is_test_path(c.path):
            continue
        base_mod, after_mod = _parse(before(c)), _parse(after(c))
        if base_mod is None or after_mod is None:
            continue  # a new or unparsable file: tests_kept / compiles judge it
        base_fns, after_fns = _test_functions(base_mod), _test_functions(after_mod)
        for name in sorted(set(base_fns) & set(after_fns)):
            compared += 1
            was, _ = _assertion_counts(base_fns[name])
            now, trivial = _assertion_counts(after_fns[name])
            if now < was:
                extra = f" ({trivial} trivially true)" if trivial else ""
                problems.append(f"{c.path}::{name}: {was} -> {now} assertions{extra}")
    if problems:
        return GateResult(
            name="assertions_kept", passed=False, detail="weakened tests: " + "; ".join(problems)
        )
    return GateResult(
        name="assertions_kept",
        passed=True,
        detail=f"no assertion lost in {compared} changed-file test function(s)",
    )


# ---------------------------------------------------------------- ruff

_SYNTAX_CODES = {"invalid-syntax", "syntax-error", "E999"}  # the compiles gate's job


def _ruff_counts(
    wt: Path, scratch: Path, path: str, source: bytes
) -> tuple[Counter[str], dict[str, str]] | str:
    """ruff's findings for `source` as if it were `path`, under the worktree's ruff config.

    Returns (count per code, first message per code), or the error text when ruff fails.
    Syntax errors are left to the `compiles` gate.
    """
    argv = [
        sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "json",
        "--exit-zero", "--force-exclude", "--stdin-filename", path, "-",
    ]  # fmt: skip
    try:
        res = subprocess.run(
            argv,
            cwd=wt,
            input=source,
            capture_output=True,
            timeout=120,
            env=tools.tool_env(scratch),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ruff did not run: {exc}"
    if res.returncode != 0:
        return (
            _decode(res.stderr or res.stdout).strip()[-300:] or f"ruff exit code {res.returncode}"
        )
    try:
        items = json.loads(res.stdout or b"[]")
    except json.JSONDecodeError as exc:
        return f"ruff output is not JSON: {exc}"
    counts: Counter[str] = Counter()
    messages: dict[str, str] = {}
    for item in items:
        code = item.get("code")
        if not code or code in _SYNTAX_CODES:
            continue
        counts[code] += 1
        row = (item.get("location") or {}).get("row", 0)
        messages.setdefault(code, f"line {row}: {item.get('message', '')}")
    return counts, messages


def _gate_ruff(
    wt: Path, scratch: Path, py_after: list[_Change], before: _Reader, after: _Reader
) -> GateResult:
    problems: list[str] = []
    unavailable: list[str] = []
    for c in py_after:
        source = after(c)
        if source is None:
            continue
        now = _ruff_counts(wt, scratch, c.path, source)
        base_source = before(c) if c.base_path and c.base_path.endswith(".py") else None
        was = (
            _ruff_counts(wt, scratch, c.base_path or c.path, base_source)
            if base_source is not None
            else (Counter(), {})
        )
        if isinstance(now, str):
            if isinstance(was, str):
                unavailable.append(f"{c.path}: {now}")
            else:
                problems.append(f"{c.path}: ruff fails on the new version: {now}")
            continue
        counts, messages = now
        base_counts = was[0] if not isinstance(was, str) else Counter()
        for code in sorted(counts):
            if counts[code] > base_counts[code]:
                problems.append(
                    f"{c.path}: {code} {base_counts[code]} -> {counts[code]} ({messages[code]})"
                )
    if problems:
        return GateResult(
            name="ruff_no_new_violations",
            passed=False,
            detail="new ruff violations: " + "; ".join(problems),
        )
    detail = f"no new ruff violation in {len(py_after)} Python file(s)"
    if unavailable:
        detail += "; not checked (ruff fails at the base too): " + "; ".join(unavailable)
    return GateResult(name="ruff_no_new_violations", passed=True, detail=detail)


# ---------------------------------------------------------------- tests


def _run_tests(
    wt: Path, scratch: Path, settings: CycleSettings, inventory: TestInventory
) -> TestInventory:
    ran = tools.run_tests(settings.test_command, wt, settings.test_timeout_s, scratch)
    return ran.model_copy(
        update={"test_files": inventory.test_files, "test_functions": inventory.test_functions}
    )


_SUMMARY = re.compile(
    r"^=*\s*(\d+ (?:passed|failed|error|errors|skipped|xfailed|xpassed|deselected)\b.*?)\s*=*$"
)


def summarize_tests(inventory: TestInventory) -> str:
    """pytest's final summary line ("12 passed in 0.40s"), or what is known without it."""
    for line in reversed(inventory.output_tail.splitlines()):
        m = _SUMMARY.match(line.strip())
        if m:
            return m.group(1)
    if inventory.collected is not None:
        return f"{inventory.collected} test(s) collected"
    return f"exit code {inventory.exit_code}"


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _gate_tests_pass(inv: TestInventory, settings: CycleSettings) -> GateResult:
    name = "tests_pass"
    if "[nomic] killed after" in inv.output_tail and inv.exit_code == -9:
        return GateResult(
            name=name,
            passed=False,
            detail=f"timed out: `{inv.command}` was killed after {settings.test_timeout_s}s\n"
            + _tail(inv.output_tail),
        )
    if inv.collected == 0:
        if settings.allow_no_tests and inv.exit_code in (0, 5):
            return GateResult(name=name, passed=True, detail="no tests collected (allowed)")
        return GateResult(
            name=name,
            passed=False,
            detail="no tests collected (set allow_no_tests to accept a target without tests)",
        )
    if inv.exit_code != 0:
        return GateResult(
            name=name,
            passed=False,
            detail=f"`{inv.command}` failed with exit code {inv.exit_code}: {summarize_tests(inv)}\n"
            + _tail(inv.output_tail),
        )
    return GateResult(name=name, passed=True, detail=summarize_tests(inv))
