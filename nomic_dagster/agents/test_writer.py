"""The test-writer agent: characterization tests for public functions no test names.

It is a tool, not a model. It reads the repository's modules with `ast`, finds public
top-level functions whose names appear in no test file, and skips the ones it cannot
call safely (side effects, async, generators, parameters it cannot build values for).
To implement, it calls each function with inputs built from the annotations and
defaults in a probe subprocess (cwd in the scratch folder), records what came back
(plain data only) or which exception was raised, and writes one pytest function per
function that pins that behaviour. It keeps only tests that pass three runs and add
covered lines (measured with coverage.py), runs ruff on the new files, and leaves no
caches or temporary files in the worktree.

Everything is deterministic for the same repository: the inputs, their order and the
generated source depend only on the code being characterized.
"""

from __future__ import annotations

import ast
import itertools
import json
import keyword
import math
import os
import re
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from nomic_dagster.agents.base import WorkArea
from nomic_dagster.agents.offline import OfflineAgent
from nomic_dagster.errors import ImplementationFailed
from nomic_dagster.pathrules import is_test_path
from nomic_dagster.records import Design, Goal, ModuleInfo, Proposal, RepoContext
from nomic_dagster.tools import CommandResult, python_argv, run_command

MAX_MODULES = 3  # most modules (one new test file each) one proposal covers
MAX_FUNCTIONS_PER_MODULE = 15
MAX_CALLS_PER_FUNCTION = 10
MAX_REPR = 240  # longer results are not pinned: the test would be unreadable
MAX_SOURCE_BYTES = 512_000
PROBE_SEEDS = ("1", "2", "3", "4")  # PYTHONHASHSEED values: set-order dependence shows up
PROBE_CALL_TIMEOUT_S = 1.0
PROBE_TIMEOUT_S = 10.0
RERUNS = 3
RERUN_TIMEOUT_S = 300
STABILIZE_ROUNDS = 3


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Files that are scripts or pytest configuration, never library code to import.
SCRIPT_FILES = _set("setup.py conftest.py noxfile.py fabfile.py manage.py __main__.py tasks.py")
# Decorators that keep a function's signature and behaviour.
SAFE_DECORATORS = _set("cache lru_cache functools.cache functools.lru_cache wraps")

# ---------------------------------------------------------------- side effects

IMPURE_BUILTINS = _set("open input exit quit exec eval compile breakpoint __import__ help")
# Any use of these modules makes a function environment-dependent or effectful.
IMPURE_MODULES = _set(
    """os sys subprocess shutil socket requests urllib urllib3 http httpx aiohttp time random
    secrets uuid tempfile threading multiprocessing concurrent asyncio signal ctypes sqlite3
    smtplib ftplib telnetlib webbrowser getpass glob fileinput platform locale pty select
    selectors ssl mmap fcntl atexit importlib psutil boto3"""
)
# The pure corners of the modules above.
PURE_QUALIFIED = frozenset(
    [f"os.path.{n}" for n in _set("join split splitext basename dirname normpath normcase")]
    + [f"os.path.{n}" for n in _set("commonprefix commonpath isabs splitdrive")]
    + [f"os.{n}" for n in _set("sep altsep extsep pathsep linesep curdir pardir")]
    + [f"os.{n}" for n in _set("fspath fsdecode fsencode PathLike")]
    + [f"sys.{n}" for n in _set("maxsize maxunicode version_info float_info int_info")]
    + [f"sys.{n}" for n in _set("hash_info byteorder hexversion")]
)
# Method names that read or write the outside world whatever object they are called on.
IMPURE_METHODS = _set(
    """write writelines write_text write_bytes read_text read_bytes unlink mkdir makedirs rmdir
    rmtree removedirs touch chmod chown rename renames symlink_to hardlink_to iterdir glob rglob
    exists is_file is_dir stat lstat resolve absolute expanduser cwd home open flush sendall
    sendto recv connect urlopen system popen kill sleep now today utcnow getenv putenv seed uuid1
    uuid4 token_hex token_bytes token_urlsafe randint randrange shuffle perf_counter monotonic
    getpid"""
)
# At import time only clearly effectful calls disqualify a module (reading the
# environment into a constant is common and harmless).
IMPORT_TIME_MODULES = _set(
    """subprocess shutil socket requests urllib http httpx webbrowser smtplib ftplib tempfile
    multiprocessing threading asyncio signal sqlite3"""
)
IMPORT_TIME_CALLS = _set(
    """write write_text write_bytes unlink mkdir makedirs rmtree touch rename system popen kill
    sleep urlopen connect sendall chdir remove fork putenv exit"""
)


def _dotted(node: ast.AST) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def import_aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> absolute dotted name for every absolute import in the tree."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if a.name != "*":
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _qualified_refs(tree: ast.AST, aliases: dict[str, str]) -> Iterable[str]:
    """Absolute dotted names of the outermost attribute chains rooted at an import."""
    inner: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            inner.add(id(node.value))
    for node in ast.walk(tree):
        if id(node) in inner or not isinstance(node, ast.Attribute | ast.Name):
            continue
        dotted = _dotted(node)
        if not dotted:
            continue
        root, _, rest = dotted.partition(".")
        if root in aliases:
            yield aliases[root] + (f".{rest}" if rest else "")


def _impure_reference(full: str) -> str | None:
    if full in PURE_QUALIFIED:
        return None
    parts = full.split(".")
    if parts[0] in IMPURE_MODULES:
        return f"uses {full}"
    if parts[-1] in IMPURE_METHODS or parts[-1] in IMPURE_BUILTINS:
        return f"uses {full}"
    return None


def direct_side_effects(node: ast.AST, aliases: dict[str, str]) -> list[str]:
    """Why the code under `node` may touch the world (empty when it looks pure)."""
    reasons: list[str] = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Global | ast.Nonlocal):
            reasons.append("rebinds global state")
        elif isinstance(sub, ast.Call):
            func = sub.func
            if isinstance(func, ast.Name) and func.id in IMPURE_BUILTINS and func.id not in aliases:
                reasons.append(f"calls {func.id}()")
            elif isinstance(func, ast.Attribute) and func.attr in IMPURE_METHODS:
                reasons.append(f"calls .{func.attr}()")
    reasons.extend(r for r in map(_impure_reference, _qualified_refs(node, aliases)) if r)
    return sorted(set(reasons))


def import_time_side_effects(tree: ast.Module, aliases: dict[str, str]) -> list[str]:
    """Effectful calls a module makes when imported (outside defs and the main guard)."""
    reasons: list[str] = []
    for stmt in tree.body:
        if isinstance(
            stmt,
            ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Import | ast.ImportFrom,
        ):
            continue
        if isinstance(stmt, ast.If) and "__name__" in ast.unparse(stmt.test):
            continue
        for sub in ast.walk(stmt):
            if not isinstance(sub, ast.Call):
                continue
            dotted = _dotted(sub.func) or ""
            root, _, rest = dotted.partition(".")
            full = aliases.get(root, root) + (f".{rest}" if rest else "")
            last = full.split(".")[-1]
            if (
                (isinstance(sub.func, ast.Name) and sub.func.id in IMPURE_BUILTINS - {"compile"})
                or full.split(".")[0] in IMPORT_TIME_MODULES
                or last in IMPORT_TIME_CALLS
            ):
                reasons.append(f"calls {full or '?'}() at import")
    return sorted(set(reasons))


def _calls_by_name(node: ast.AST) -> set[str]:
    return {
        sub.func.id
        for sub in ast.walk(node)
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name)
    }


def impure_functions(tree: ast.Module, aliases: dict[str, str]) -> dict[str, list[str]]:
    """Top-level functions with side effects, directly or through another top-level one."""
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    impure = {name: r for name, node in defs.items() if (r := direct_side_effects(node, aliases))}
    calls = {name: _calls_by_name(node) for name, node in defs.items()}
    changed = True
    while changed:
        changed = False
        for name in sorted(defs):
            if name in impure:
                continue
            bad = sorted(c for c in calls[name] if c in impure and c != name)
            if bad:
                impure[name] = [f"calls {bad[0]}(), which has side effects"]
                changed = True
    return impure


# ---------------------------------------------------------------- input values


class _Guess:
    """Marker: the parameter has no usable type; try ints, then strs."""


GUESS = _Guess()
GUESS_TYPES = ("int", "str")

SCALARS: dict[str, list[Any]] = {
    "int": [0, 1, -3, 7],
    "float": [0.0, 2.5, -1.5],
    "str": ["", "abc", "Hello, World 42"],
    "bool": [False, True],
    "bytes": [b"", b"abc"],
    "None": [None],
    "NoneType": [None],
}
LIST_NAMES = {"list", "List", "Sequence", "MutableSequence", "Iterable", "Collection", "Reversible"}
TUPLE_NAMES = {"tuple", "Tuple"}
SET_NAMES = {"set", "Set", "frozenset", "FrozenSet", "AbstractSet", "MutableSet"}
DICT_NAMES = {"dict", "Dict", "Mapping", "MutableMapping"}
ANY_NAMES = {"Any", "object"}
UNION_NAMES = {"Union", "Optional"}


def _dedupe(values: Iterable[Any], limit: int = 5) -> list[Any]:
    out: list[Any] = []
    seen: set[str] = set()
    for v in values:
        key = f"{type(v).__name__}:{v!r}"
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out[:limit]


def _type_name(node: ast.expr) -> str | None:
    dotted = _dotted(node)
    return dotted.split(".")[-1] if dotted else None


def annotation_values(node: ast.expr | None, depth: int = 0) -> list[Any] | _Guess | None:
    """Values to call with for an annotation; GUESS for "anything", None when unknown."""
    if node is None:
        return GUESS
    if depth > 3:
        return None
    if isinstance(node, ast.Constant):
        if node.value is None:
            return [None]
        if isinstance(node.value, str):  # a string annotation
            try:
                return annotation_values(ast.parse(node.value, mode="eval").body, depth + 1)
            except SyntaxError:
                return None
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([node.left, node.right], depth)
    if isinstance(node, ast.Subscript):
        base = _type_name(node.value)
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        return _generic(base, args, depth)
    name = _type_name(node)
    if name is None:
        return None
    if name in ANY_NAMES:
        return GUESS
    if name in SCALARS:
        return list(SCALARS[name])
    if name in LIST_NAMES:
        return [[], [1, 2, 3]]
    if name in TUPLE_NAMES:
        return [(), (1, 2)]
    if name in SET_NAMES:
        empty: Any = frozenset() if name in ("frozenset", "FrozenSet") else set()
        return [empty, type(empty)({1, 2, 3})]
    if name in DICT_NAMES:
        return [{}, {"a": 1, "b": 2}]
    return None


def _union(members: list[ast.expr], depth: int) -> list[Any] | _Guess | None:
    values: list[Any] = []
    for m in members:
        vals = annotation_values(m, depth + 1)
        if vals is GUESS:
            return GUESS
        if isinstance(vals, list):
            values.extend(vals[:3])
    # None first keeps the "optional" case visible; then the members in order
    values.sort(key=lambda v: v is not None)
    return _dedupe(values) or None


def _generic(base: str | None, args: list[ast.expr], depth: int) -> list[Any] | _Guess | None:
    if base in UNION_NAMES:
        if base == "Optional":
            return _union([ast.Constant(None), *args], depth)
        return _union(args, depth)
    if base == "Literal":
        try:
            return _dedupe(ast.literal_eval(a) for a in args)
        except (ValueError, TypeError, SyntaxError):
            return None
    if base == "Annotated" and args:
        return annotation_values(args[0], depth + 1)
    if base in ANY_NAMES:
        return GUESS
    element = [annotation_values(a, depth + 1) for a in args]
    if any(e is None for e in element):
        return None
    elems: list[list[Any]] = [e if isinstance(e, list) else list(SCALARS["int"]) for e in element]
    if base in LIST_NAMES and elems:
        return [[], list(elems[0][:4])]
    if base in TUPLE_NAMES and elems:
        if len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is Ellipsis:
            return [(), tuple(elems[0][:3])]
        width = max(len(e) for e in elems)
        return _dedupe(tuple(e[i % len(e)] for e in elems) for i in range(min(width, 3)))
    if base in SET_NAMES and elems:
        # only ints: a set of strs prints in hash order, which changes between runs
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in elems[0]):
            return None
        frozen = base in ("frozenset", "FrozenSet")
        kind: Any = frozenset if frozen else set
        return [kind(), kind(elems[0][:4])]
    if base in DICT_NAMES and len(elems) == 2:
        keys = [k for k in elems[0] if isinstance(k, str | int) and not isinstance(k, bool)]
        if not keys:
            return None
        vals = elems[1]
        return [{}, {k: vals[i % len(vals)] for i, k in enumerate(keys[:3])}]
    return None


@dataclass(frozen=True)
class _Param:
    name: str
    kind: str  # "posonly", "regular", "kwonly"
    required: bool
    values: list[Any] | _Guess | None
    default: Any = None
    default_known: bool = False


def _literal(node: ast.expr) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def function_params(node: ast.FunctionDef) -> list[_Param]:
    a = node.args
    positional = [(p, "posonly") for p in a.posonlyargs] + [(p, "regular") for p in a.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults)) + list(
        a.defaults
    )
    params: list[_Param] = []
    pairs = list(zip(positional, defaults, strict=True)) + [
        ((p, "kwonly"), d) for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)
    ]
    for (arg, kind), default in pairs:
        values = annotation_values(arg.annotation)
        known, value = _literal(default) if default is not None else (False, None)
        if arg.annotation is None and known and value is not None:
            typed = SCALARS.get(type(value).__name__)
            values = list(typed) if typed else values
        params.append(_Param(arg.arg, kind, default is None, values, value, known))
    return params


@dataclass(frozen=True)
class Call:
    """One call of a function: argument source text, as it will appear in the test."""

    func: str
    args: tuple[str, ...]
    kwargs: tuple[tuple[str, str], ...]
    guessed: bool  # some argument is a guess for an unannotated parameter

    def source(self, alias: str) -> str:
        parts = [*self.args, *(f"{k}={v}" for k, v in self.kwargs)]
        return f"{alias}.{self.func}({', '.join(parts)})"

    @property
    def key(self) -> str:
        return self.source("m")


def _sample_product(lists: list[list[Any]], limit: int) -> list[tuple[Any, ...]]:
    """The whole product when small, else `limit` evenly spread members (deterministic)."""
    total = math.prod(len(v) for v in lists)
    if total <= limit:
        return list(itertools.product(*lists))
    picks = sorted({round(k * (total - 1) / (limit - 1)) for k in range(limit)})
    out = []
    for index in picks:
        combo = []
        for values in reversed(lists):
            index, digit = divmod(index, len(values))
            combo.append(values[digit])
        out.append(tuple(reversed(combo)))
    return out


_DOC_QUOTED = re.compile(r"'([^'\n]{1,30})'|\"([^\"\n]{1,30})\"")


def mine_constants(node: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, list[Any]]:
    """Strs and ints the function itself suggests: quoted examples in its docstring, string
    constants in its body, and both sides of the boundaries it compares ints against."""
    strs: list[str] = []
    ints: list[int] = []
    doc = ast.get_docstring(node) or ""
    strs += [a or b for a, b in _DOC_QUOTED.findall(doc)]
    body = node.body[1:] if doc else node.body
    skip: set[int] = set()
    for stmt in body:
        for sub in ast.walk(stmt):
            if isinstance(sub, ast.Raise | ast.JoinedStr):  # error messages, f-string parts
                skip.update(id(n) for n in ast.walk(sub))
    for stmt in body:
        for sub in ast.walk(stmt):
            if id(sub) in skip:
                continue
            if (
                isinstance(sub, ast.Constant)
                and type(sub.value) is str
                and 0 < len(sub.value) <= 30
            ):
                strs.append(sub.value)
            elif isinstance(sub, ast.Compare):
                for side in [sub.left, *sub.comparators]:
                    known, value = _literal(side)
                    if known and type(value) is int and abs(value) < 10**6:
                        ints += [value, value + 1]
    return {"str": _dedupe(strs, 3), "int": _dedupe(ints, 3)}


def _with_mined(values: list[Any], mined: dict[str, list[Any]], first: bool = False) -> list[Any]:
    """Add the function's own constants to a list of strs or ints."""
    for kind, typ in (("str", str), ("int", int)):
        if values and all(type(v) is typ for v in values) and mined.get(kind):
            extra = mined[kind]
            return _dedupe([*extra, *values] if first else [*values, *extra], 7)
    return values


def plan_calls(
    name: str, params: list[_Param], mined: dict[str, list[Any]] | None = None
) -> list[Call] | str:
    """The calls to probe, or why the function cannot be called."""
    mined = mined or {}
    required = [p for p in params if p.required]
    for p in required:
        if p.values is None:
            return f"cannot build a value for parameter {p.name!r}"
    guesses: tuple[str | None, ...] = (
        GUESS_TYPES if any(p.values is GUESS for p in required) else (None,)
    )
    calls: list[Call] = []
    first_combo: dict[str | None, tuple[Any, ...]] = {}
    for guess in guesses:
        lists = [
            _with_mined(
                list(SCALARS[guess]) if p.values is GUESS and guess else list(p.values),  # type: ignore[arg-type]
                mined,
            )
            for p in required
        ]
        combos = _sample_product(lists, 5 if len(guesses) > 1 else MAX_CALLS_PER_FUNCTION - 3)
        if combos:
            first_combo[guess] = combos[0]
        for combo in combos:
            calls.append(_make_call(name, required, combo, (), guess is not None))
    # vary each optional parameter once or twice, the required ones at their first values
    base_guess = guesses[0]
    base = first_combo.get(base_guess, ())
    for p in [p for p in params if not p.required][:3]:
        if p.kind == "posonly" or not isinstance(p.values, list):
            continue  # unknown or untyped optional parameters keep their defaults
        vals = _with_mined(p.values, mined, first=True)
        others = [
            v
            for v in vals
            if not (p.default_known and v == p.default and type(v) is type(p.default))
        ]
        for v in others[:2]:
            calls.append(_make_call(name, required, base, ((p.name, v),), base_guess is not None))
    unique: dict[str, Call] = {}
    for c in calls:
        unique.setdefault(c.key, c)
    return list(unique.values())[:MAX_CALLS_PER_FUNCTION]


def _make_call(
    name: str,
    required: list[_Param],
    combo: tuple[Any, ...],
    extra: tuple[tuple[str, Any], ...],
    guessed: bool,
) -> Call:
    args = tuple(repr(v) for p, v in zip(required, combo, strict=True) if p.kind != "kwonly")
    kwargs = tuple(
        (p.name, repr(v)) for p, v in zip(required, combo, strict=True) if p.kind == "kwonly"
    )
    kwargs += tuple((k, repr(v)) for k, v in extra)
    return Call(name, args, kwargs, guessed)


# ---------------------------------------------------------------- analysis


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
    skipped: tuple[tuple[str, str], ...] = field(default=())

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.functions]


def _read(root: Path, rel: str) -> str | None:
    path = root / rel
    try:
        if not path.is_file() or path.stat().st_size > MAX_SOURCE_BYTES:
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
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
    names: set[str] = set()
    for rel in test_files:
        text = _read(root, rel)
        if text is None:
            continue
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.alias):
                names.add(node.name.split(".")[-1])
                if node.asname:
                    names.add(node.asname)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.update(w for w in _words(node.value))
    return names


def _words(text: str) -> Iterable[str]:
    word: list[str] = []
    for ch in text + " ":
        if ch.isalnum() or ch == "_":
            word.append(ch)
        elif word:
            yield "".join(word)
            word = []


def _decorator_ok(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    dotted = _dotted(target) or ""
    return dotted in SAFE_DECORATORS


def _is_generator(node: ast.FunctionDef) -> bool:
    return any(isinstance(n, ast.Yield | ast.YieldFrom) for n in ast.walk(node))


def _test_folder(context: RepoContext) -> str | None:
    for folder in ("tests", "test"):
        if any(f.startswith(f"{folder}/") for f in context.files):
            return folder
    return None


def _choose_test_path(
    context: RepoContext, module: ModuleInfo, taken: set[str], basenames: set[str]
) -> str | None:
    folder = _test_folder(context)
    if folder is None:
        here = str(PurePosixPath(module.path).parent)
        here = "" if here == "." else here
        tests_here = any(
            str(PurePosixPath(t).parent) in (here or ".",) for t in test_files_of(context)
        )
        folder = here if tests_here else ""
    parts = [p.strip("_") or p for p in module.module.split(".")]
    for stem in (parts[-1], "_".join(parts)):
        name = f"test_{stem}_characterization.py"
        path = f"{folder}/{name}" if folder else name
        if path not in taken and name not in basenames:
            return path
    return None


def analyse(root: Path, context: RepoContext) -> list[ModulePlan]:
    """Every module with untested functions this agent can characterize, best first."""
    tests = test_files_of(context)
    mentioned = names_in_tests(root, tests)
    existing = set(context.files)
    taken = set(existing)
    basenames = {PurePosixPath(t).name for t in tests}
    plans: list[ModulePlan] = []
    for info in sorted(context.modules, key=lambda m: m.path):
        if info.is_test or is_test_path(info.path) or PurePosixPath(info.path).name in SCRIPT_FILES:
            continue
        import_dir = import_dir_for(info.path, info.module)
        if import_dir is None:
            continue
        source = _read(root, info.path)
        if source is None:
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        aliases = import_aliases(tree)
        if import_time_side_effects(tree, aliases):
            continue
        defs: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        for node in tree.body:  # the last definition of a name is the one that is bound
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                defs[node.name] = node
        public = sorted(
            (n for n in defs if not n.startswith("_")), key=lambda n: (defs[n].lineno, n)
        )
        untested = [n for n in public if n not in mentioned]
        if not untested:
            continue
        impure = impure_functions(tree, aliases)
        functions: list[FunctionPlan] = []
        skipped: list[tuple[str, str]] = []
        for name in untested:
            node = defs[name]
            reason = _unsuitable(node, impure)
            calls: list[Call] | str = reason or plan_calls(
                name, function_params(node), mine_constants(node)
            )  # type: ignore[arg-type]
            if isinstance(calls, str):
                skipped.append((name, calls))
            elif calls:
                functions.append(FunctionPlan(name, node.lineno, tuple(calls)))
        if not functions:
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
                import_dir=import_dir,
                test_path=test_path,
                public=tuple(public),
                untested=tuple(untested),
                functions=tuple(functions[:MAX_FUNCTIONS_PER_MODULE]),
                skipped=tuple(skipped),
            )
        )
    # modules of the public API first (a `_private` module's functions are internals)
    plans.sort(
        key=lambda p: (_private_module(p.module), -len(p.functions), -len(p.untested), p.path)
    )
    return plans


def _private_module(module: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in module.split("."))


def _unsuitable(
    node: ast.FunctionDef | ast.AsyncFunctionDef, impure: dict[str, list[str]]
) -> str | None:
    if isinstance(node, ast.AsyncFunctionDef):
        return "async"
    if _is_generator(node):
        return "generator"
    if not all(_decorator_ok(d) for d in node.decorator_list):
        return "decorated"
    if node.name in impure:
        return "side effects: " + impure[node.name][0]
    return None


def _names(names: Iterable[str], limit: int = 10) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


# ---------------------------------------------------------------- probing

PROBE_SCRIPT = r'''
"""nomic test-writer probe: import one module, call functions, record the outcomes."""
import ast
import builtins
import contextlib
import importlib
import io
import json
import signal
import sys


class ProbeTimeout(BaseException):
    pass


def main():
    with open(sys.argv[1], encoding="utf-8") as fh:
        spec = json.load(fh)
    sys.dont_write_bytecode = True
    sys.path.insert(0, spec["import_dir"])
    out = open(sys.argv[2], "w", encoding="utf-8")

    def emit(record):
        out.write(json.dumps(record, sort_keys=True) + "\n")
        out.flush()

    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            mod = importlib.import_module(spec["module"])
    except BaseException as exc:
        emit({"import_error": (type(exc).__name__ + ": " + str(exc))[:400]})
        return

    alarm = hasattr(signal, "setitimer")

    def on_alarm(signum, frame):
        raise ProbeTimeout()

    if alarm:
        signal.signal(signal.SIGALRM, on_alarm)
    env = {"__builtins__": {}, "set": set, "frozenset": frozenset}

    def run(func, call):
        args = [eval(s, env) for s in call["args"]]
        kwargs = {k: eval(s, env) for k, s in call["kwargs"]}
        sink.seek(0)
        sink.truncate()
        try:
            try:
                if alarm:
                    signal.setitimer(signal.ITIMER_REAL, spec["call_timeout"])
                with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                    result = func(*args, **kwargs)
            finally:
                if alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except ProbeTimeout:
            return {"kind": "timeout"}
        except Exception as exc:
            t = type(exc)
            if t in (RecursionError, MemoryError):
                return {"kind": "unrecordable", "why": t.__name__}
            if getattr(builtins, t.__name__, None) is t:
                return {"kind": "raises", "name": t.__name__, "where": "builtins"}
            if getattr(mod, t.__name__, None) is t:
                return {"kind": "raises", "name": t.__name__, "where": "module"}
            return {"kind": "unrecordable", "why": "exception " + t.__name__}
        except BaseException as exc:
            return {"kind": "fatal", "why": type(exc).__name__}
        try:
            text = repr(result)
            back = ast.literal_eval(text)
            same = type(back) is type(result) and back == result
        except Exception:
            same = False
        if not same:
            return {"kind": "unrecordable", "why": type(result).__name__}
        if len(text) > spec["max_repr"]:
            return {"kind": "unrecordable", "why": "long"}
        return {"kind": "value", "repr": text, "type": type(result).__name__}

    broken = set()
    for call in spec["calls"]:
        name = call["func"]
        if name in broken:
            continue
        func = getattr(mod, name, None)
        if not callable(func):
            broken.add(name)
            emit({"id": call["id"], "kind": "missing"})
            continue
        first = run(func, call)
        second = run(func, call) if first["kind"] in ("value", "raises") else first
        if first != second:
            first = {"kind": "unstable"}
        if first["kind"] in ("timeout", "fatal"):
            broken.add(name)
        emit(dict(first, id=call["id"]))


main()
'''


def _probe_module(
    plan: ModulePlan, worktree: Path, work: Path
) -> tuple[dict[str, dict[str, Any]], str]:
    """(call key -> outcome for calls whose outcome is the same in every probe run, problem)."""
    calls = [c for f in plan.functions for c in f.calls]
    spec = {
        "import_dir": str(worktree / plan.import_dir) if plan.import_dir else str(worktree),
        "module": plan.module,
        "call_timeout": PROBE_CALL_TIMEOUT_S,
        "max_repr": MAX_REPR,
        "calls": [
            {"id": i, "func": c.func, "args": list(c.args), "kwargs": [list(kv) for kv in c.kwargs]}
            for i, c in enumerate(calls)
        ],
    }
    base = work / f"probe-{plan.module}"
    base.mkdir(parents=True, exist_ok=True)
    script = base / "probe.py"
    script.write_text(PROBE_SCRIPT, encoding="utf-8")
    spec_file = base / "spec.json"
    spec_file.write_text(json.dumps(spec), encoding="utf-8")

    def one(seed: str) -> list[dict[str, Any]]:
        cwd = base / f"cwd-{seed}"
        cwd.mkdir(exist_ok=True)
        out = base / f"out-{seed}.jsonl"
        run_command(
            [sys.executable, str(script), str(spec_file), str(out)],
            cwd=cwd,
            timeout_s=PROBE_TIMEOUT_S,
            scratch=base,
            env_extra={"PYTHONHASHSEED": seed},
        )
        try:
            lines = out.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    with ThreadPoolExecutor(max_workers=len(PROBE_SEEDS)) as pool:
        runs = list(pool.map(one, PROBE_SEEDS))
    problem = next((r["import_error"] for run in runs for r in run if "import_error" in r), "")
    by_run = [{r["id"]: r for r in run if "id" in r} for run in runs]
    outcomes: dict[str, dict[str, Any]] = {}
    for i, call in enumerate(calls):
        seen = [r.get(i) for r in by_run]
        if any(s is None for s in seen) or any(s != seen[0] for s in seen):
            continue
        outcomes[call.key] = seen[0]  # type: ignore[assignment]
    return outcomes, problem


# ---------------------------------------------------------------- generation


@dataclass
class GeneratedTest:
    func: str
    name: str  # test function name
    statements: list[list[str]]  # each statement as its lines (a raises block has two)

    @property
    def assertions(self) -> int:
        return len(self.statements)


def module_alias(module: str) -> str:
    last = module.split(".")[-1]
    if (
        last in ("pytest", "sys", "importlib", "Path")
        or last.startswith("test")
        or keyword.iskeyword(last)
    ):
        return "target"
    return last


def _assertion(call: Call, outcome: dict[str, Any], alias: str) -> list[str] | None:
    src = call.source(alias)
    if outcome["kind"] == "value":
        value = outcome["repr"]
        if value in ("None", "True", "False"):
            return [f"assert {src} is {value}"]
        if outcome.get("type") == "float":
            return [f"assert {src} == pytest.approx({value})"]
        return [f"assert {src} == {value}"]
    if outcome["kind"] == "raises":
        name = outcome["name"]
        if name in ("Exception", "BaseException"):
            return None  # too broad to pin anything
        if call.guessed and name in ("TypeError", "AttributeError"):
            return None  # a wrong guess of the parameter's type, not behaviour
        exc = name if outcome["where"] == "builtins" else f"{alias}.{name}"
        return [f"with pytest.raises({exc}):", f"    {src}"]
    return None


def build_tests(plan: ModulePlan, outcomes: dict[str, dict[str, Any]]) -> list[GeneratedTest]:
    alias = module_alias(plan.module)
    tests = []
    for fn in plan.functions:
        statements = []
        for call in fn.calls:
            outcome = outcomes.get(call.key)
            if outcome is None:
                continue
            stmt = _assertion(call, outcome, alias)
            if stmt:
                statements.append(stmt)
        if statements:
            tests.append(GeneratedTest(fn.name, f"test_{fn.name}_characterization", statements))
    return tests


def render(plan: ModulePlan, tests: list[GeneratedTest]) -> str:
    alias = module_alias(plan.module)
    body = "\n".join(line for t in tests for stmt in t.statements for line in stmt)
    needs_pytest = "pytest." in body
    doc = (
        f'"""Characterization tests for `{plan.module}`, generated by nomic\'s test-writer.\n'
        "\n"
        "They pin the current behaviour of public functions that no test named before:\n"
        "each expected value is what the function returned, or the exception it raised,\n"
        "when the test-writer called it. If one fails after a change that was meant to\n"
        "alter that behaviour, update the expected value; otherwise the change broke it.\n"
        '"""\n'
    )
    lines = [doc]
    parent, _, last = plan.module.rpartition(".")
    if plan.import_dir:
        depth = len(PurePosixPath(plan.test_path).parts) - 1
        lines.append("import importlib\nimport sys\nfrom pathlib import Path\n")
        if needs_pytest:
            lines.append("import pytest\n")
        lines.append(
            f'_IMPORT_DIR = str(Path(__file__).resolve().parents[{depth}] / "{plan.import_dir}")\n'
            "if _IMPORT_DIR not in sys.path:\n"
            "    sys.path.insert(0, _IMPORT_DIR)\n"
            f'{alias} = importlib.import_module("{plan.module}")\n'
        )
    else:
        if needs_pytest:
            lines.append("import pytest\n")
        as_part = "" if alias == last else f" as {alias}"
        lines.append(
            f"from {parent} import {last}{as_part}\n"
            if parent
            else f"import {plan.module}{as_part}\n"
        )
    for t in tests:
        stmts = "\n".join("    " + line for stmt in t.statements for line in stmt)
        lines.append(f"\ndef {t.name}():\n{stmts}\n")
    return "\n".join(lines)


# ---------------------------------------------------------------- running


def _snapshot(root: Path) -> set[str]:
    """Every file and folder under root (folders end with /), .git excluded."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel == "." else f"{rel}/"
        dirnames[:] = [d for d in dirnames if d != ".git"]
        out.update(f"{prefix}{d}/" for d in dirnames)
        out.update(f"{prefix}{f}" for f in filenames if f != ".git")
    return out


def _clean_new(root: Path, before: set[str], keep: set[str]) -> None:
    """Remove whatever appeared under root since `before`, except `keep`."""
    new = sorted(_snapshot(root) - before - keep)
    kept_dirs = {str(PurePosixPath(k).parent) + "/" for k in keep}
    for rel in new:
        path = root / rel.rstrip("/")
        if rel.endswith("/"):
            if any(k.startswith(rel) for k in keep) or rel in kept_dirs:
                continue
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)


def _ruff(worktree: Path, files: list[str]) -> str:
    """Fix and format the new files; '' when ruff is clean, else what it still reports."""
    base = [sys.executable, "-m", "ruff"]
    run_command(
        [*base, "check", "--no-cache", "--fix", "--force-exclude", "--quiet", *files], worktree, 120
    )
    fmt = run_command(
        [*base, "format", "--no-cache", "--force-exclude", "--quiet", *files], worktree, 120
    )
    if not fmt.ok:  # the target's ruff config cannot be used: default rules then
        run_command(
            [*base, "check", "--no-cache", "--isolated", "--fix", "--quiet", *files], worktree, 120
        )
        run_command([*base, "format", "--no-cache", "--isolated", "--quiet", *files], worktree, 120)
    check = run_command(
        [*base, "check", "--no-cache", "--force-exclude", "--quiet", *files], worktree, 120
    )
    if check.ok:
        return ""
    default = run_command(
        [*base, "check", "--no-cache", "--isolated", "--quiet", *files], worktree, 120
    )
    if not default.ok:
        return "ruff (default rules): " + default.output.strip()[:400]
    return "ruff (repository rules): " + check.output.strip()[:300]


def _junit(path: Path) -> tuple[set[tuple[str, str]], set[tuple[str, str]], list[str]]:
    """(passed, reported, problems) from a junit report; tests as (file stem, name)."""
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        return set(), set(), ["pytest wrote no report"]
    seen: set[tuple[str, str]] = set()
    bad: set[tuple[str, str]] = set()
    problems: list[str] = []
    for case in tree.iter("testcase"):
        key = (case.get("classname", "").rsplit(".", 1)[-1], case.get("name", ""))
        seen.add(key)
        failed = [c for c in case if c.tag in ("failure", "error", "skipped")]
        if failed:
            bad.add(key)
            message = (failed[0].get("message") or failed[0].text or "").strip().splitlines()
            problems.append(f"{key[0]}::{key[1]}: {message[0][:200] if message else failed[0].tag}")
    return seen - bad, seen, problems


# A pytest plugin loaded (with -p) into the coverage run: every test gets its own coverage
# context ("test:<nodeid>") and so does the import of every collected file
# ("collect:<nodeid>"), so one run tells which lines each new test adds to what the
# existing suite already ran.
CONTEXT_PLUGIN_NAME = "_nomic_test_writer_contexts"
CONTEXT_PLUGIN = """
import coverage
import pytest


def _switch(label):
    cov = coverage.Coverage.current()
    if cov is not None:
        cov.switch_context(label)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _switch("test:" + item.nodeid)
    yield
    _switch("")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    _switch("collect:" + collector.nodeid)
    yield
    _switch("")
"""


def _coverage_rc(path: Path, modules: list[Path]) -> Path:
    patterns: list[str] = []
    for m in modules:
        for p in (str(m), str(m.resolve())):
            if p not in patterns:
                patterns.append(p)
    path.write_text(
        "[run]\ninclude =\n" + "".join(f"    {p}\n" for p in patterns), encoding="utf-8"
    )
    return path


def _coverage_report(data: Path, rc: Path, out: Path, cwd: Path) -> dict[str, Any]:
    if not data.exists():
        return {}
    argv = [sys.executable, "-m", "coverage", "json", "--rcfile", str(rc), "--data-file", str(data)]
    res = run_command([*argv, "--show-contexts", "-o", str(out)], cwd, 120, scratch=cwd)
    if not res.ok or not out.exists():
        return {}
    files: dict[str, Any] = json.loads(out.read_text(encoding="utf-8")).get("files", {})
    return files


def _file_entry(report: dict[str, Any], module_file: Path, cwd: Path) -> dict[str, Any] | None:
    target = module_file.resolve()
    for key, entry in report.items():
        path = Path(key) if os.path.isabs(key) else cwd / key
        if path.resolve() == target:
            return entry
    return None


def _context_owner(label: str) -> tuple[str, str]:
    """("test" | "collect" | "", stem of the test file) of a coverage context label."""
    kind, _, nodeid = label.partition(":")
    if kind not in ("test", "collect") or not nodeid:
        return "", ""
    return kind, PurePosixPath(nodeid.split("::", 1)[0]).stem


@dataclass
class _Module:
    plan: ModulePlan
    tests: list[GeneratedTest]
    dropped_failing: list[str] = field(default_factory=list)
    dropped_no_coverage: list[str] = field(default_factory=list)
    before: float = 0.0
    after: float = 0.0
    statements: int = 0

    @property
    def stem(self) -> str:
        return PurePosixPath(self.plan.test_path).stem


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
        benefit = round(min(0.95, 0.15 + 0.5 * share + 0.3 * volume), 3)
        risk = round(min(0.1, 0.05 + 0.02 * (len(chosen) - 1)), 3)
        lines = sum(12 + sum(2 + len(f.calls) for f in p.functions) for p in chosen)
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
                evidence=evidence,
                benefit=benefit,
                risk=risk,
                estimated_lines=lines,
            )
        ]

    def plan_steps(self, proposal: Proposal) -> list[str]:
        steps = []
        for f in proposal.files:
            marker = f"{f} will pin "
            pinned = next(
                (e[len(marker) :] for e in proposal.evidence if e.startswith(marker)), None
            )
            what = pinned or "the untested public functions of its module"
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
        before = _snapshot(worktree)
        written: set[str] = set()
        try:
            return self._implement(plans, area, work, written)
        except BaseException:
            for rel in written:
                (worktree / rel).unlink(missing_ok=True)
            written.clear()
            raise
        finally:
            _clean_new(worktree, before, written)
            shutil.rmtree(work, ignore_errors=True)

    def _implement(
        self, plans: list[ModulePlan], area: WorkArea, work: Path, written: set[str]
    ) -> str:
        worktree = area.worktree
        modules: list[_Module] = []
        problems: list[str] = []
        for plan in plans:
            outcomes, problem = _probe_module(plan, worktree, work)
            tests = build_tests(plan, outcomes)
            if tests:
                modules.append(_Module(plan, tests))
            elif problem:
                problems.append(f"{plan.module} cannot be imported: {problem}")
            else:
                problems.append(f"{plan.module}: no call gave a result that can be pinned")
        if not modules:
            raise ImplementationFailed(f"{self.name}: {'; '.join(problems)}")
        report: dict[str, Any] | None = None
        for round_no in range(STABILIZE_ROUNDS):
            lint = self._write(modules, worktree, written)
            if lint.startswith("ruff (default rules)"):
                raise ImplementationFailed(
                    f"{self.name}: the generated tests are not ruff-clean: {lint}"
                )
            passed, round_report, notes = self._run_round(modules, area, work, round_no)
            if report is None:
                report = round_report
            changed = False
            for m in modules:
                keep = [t for t in m.tests if (m.stem, t.name) in passed]
                if len(keep) != len(m.tests):
                    changed = True
                    m.dropped_failing += [t.func for t in m.tests if t not in keep]
                    m.tests = keep
            for m in [m for m in modules if not m.tests]:
                self._remove(m, worktree, written)
            modules = [m for m in modules if m.tests]
            if changed:
                problems.extend(n for n in notes[:3] if n not in problems)
            if not changed or not modules:
                break
        if not modules:
            raise ImplementationFailed(
                f"{self.name}: no generated test passed {RERUNS} runs"
                + (f" ({'; '.join(problems[:3])})" if problems else "")
            )
        dirty = changed  # the last round dropped tests: the files on disk still hold them
        self._select_by_coverage(modules, report or {}, worktree, work)
        for m in [m for m in modules if not m.tests]:
            self._remove(m, worktree, written)
        survivors = [m for m in modules if m.tests]
        if not survivors:
            raise ImplementationFailed(
                f"{self.name}: the generated tests pass but add no covered line to "
                + ", ".join(m.plan.path for m in modules)
                + " (the existing tests already run that code)"
            )
        if dirty or any(m.dropped_no_coverage for m in survivors):
            # every survivor passed all runs; the file only loses the tests that were dropped
            lint = self._write(survivors, worktree, written)
        summary = self._summary(survivors)
        # only the target's own, stricter ruff rules can still complain here
        return f"{summary}; {lint.splitlines()[0]}" if lint else summary

    # ------------------------------------------------------------ helpers

    def _write(self, modules: list[_Module], worktree: Path, written: set[str]) -> str:
        paths = []
        for m in modules:
            target = worktree / m.plan.test_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(render(m.plan, m.tests), encoding="utf-8")
            written.add(m.plan.test_path)
            paths.append(m.plan.test_path)
        return _ruff(worktree, paths)

    def _remove(self, m: _Module, worktree: Path, written: set[str]) -> None:
        (worktree / m.plan.test_path).unlink(missing_ok=True)
        written.discard(m.plan.test_path)

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

    def _run_round(
        self, modules: list[_Module], area: WorkArea, work: Path, round_no: int
    ) -> tuple[set[tuple[str, str]], dict[str, Any] | None, list[str]]:
        """Run the new files in parallel: (tests that passed every run, coverage report, notes).

        The first round runs them RERUNS times, the first run being the target's own test
        command under coverage.py with one coverage context per test, which measures before
        and after in one go (the new files are added with --append when the command does not
        collect them). Later rounds confirm a regenerated file whose tests all passed RERUNS
        times already, so one run is enough.
        """
        worktree = area.worktree
        files = [m.plan.test_path for m in modules]
        tag = f"r{round_no}"
        junits = [work / f"junit-{tag}-{i}.xml" for i in range(RERUNS if round_no == 0 else 1)]
        timeout = self._timeout(area)

        def plain(junit: Path) -> tuple[list[str], dict[str, str] | None, float]:
            return (
                [sys.executable, "-m", "pytest", "-q", f"--junitxml={junit}", *files],
                None,
                timeout,
            )

        def go(job: tuple[list[str], dict[str, str] | None, float]) -> CommandResult:
            return run_command(job[0], worktree, job[2], scratch=work, env_extra=job[1])

        jobs = [plain(j) for j in junits]
        data = work / f"{tag}.coverage"
        rc = _coverage_rc(work / f"{tag}.rc", [worktree / m.plan.path for m in modules])
        plugin_dir = work / "plugin"
        plugin_env = {"PYTHONPATH": str(plugin_dir)}
        cov = [
            sys.executable,
            "-m",
            "coverage",
            "run",
            "--rcfile",
            str(rc),
            "--data-file",
            str(data),
        ]
        contexts = ["-p", CONTEXT_PLUGIN_NAME, f"--junitxml={junits[0]}"]
        if round_no == 0:
            plugin_dir.mkdir(exist_ok=True)
            (plugin_dir / f"{CONTEXT_PLUGIN_NAME}.py").write_text(CONTEXT_PLUGIN, encoding="utf-8")
            suite = [*cov, "-m", "pytest", *self._suite_args(area), *contexts]
            suite.append("--continue-on-collection-errors")
            jobs[0] = (suite, plugin_env, float(area.settings.test_timeout_s))
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            list(pool.map(go, jobs))
        stems = {m.stem for m in modules}
        if round_no == 0 and not any(s in stems for s, _ in _junit(junits[0])[1]):
            # the test command does not collect the new files (its own paths, testpaths, -x
            # and a failure...): run them on their own, adding to the same coverage data
            go(([*cov, "--append", "-m", "pytest", "-q", *contexts, *files], plugin_env, timeout))
        report = _coverage_report(data, rc, work / f"{tag}.json", work) if round_no == 0 else None
        passed: set[tuple[str, str]] | None = None
        notes: list[str] = []
        for j in junits:
            ok, _, problems = _junit(j)
            passed = ok if passed is None else passed & ok
            notes.extend(p for p in problems if p not in notes)
        return passed or set(), report, notes

    def _select_by_coverage(
        self, modules: list[_Module], report: dict[str, Any], worktree: Path, work: Path
    ) -> None:
        """Keep a test only if it runs a line of its module that nothing before it ran."""
        new_stems = {m.stem for m in modules}
        for m in modules:
            entry = _file_entry(report, worktree / m.plan.path, work) or {}
            statements = set(entry.get("executed_lines", [])) | set(entry.get("missing_lines", []))
            if not statements:
                continue  # coverage saw nothing (e.g. the suite runs in workers): keep the tests
            before: set[int] = set()
            by_test: dict[str, set[int]] = {}
            import_lines: set[int] = set()
            for line, labels in (entry.get("contexts") or {}).items():
                for label in labels:
                    kind, stem = _context_owner(label)
                    if stem not in new_stems:
                        before.add(int(line))  # the existing suite (or its conftest) ran it
                    elif stem == m.stem and kind == "test":
                        by_test.setdefault(label.rsplit("::", 1)[-1], set()).add(int(line))
                    elif stem == m.stem:
                        import_lines.add(int(line))
            if before:
                # the existing suite runs this module, so it imports it too: the import-time
                # lines only look new because pytest happened to collect a new file first
                before |= import_lines
            covered = set(before)
            keep: list[GeneratedTest] = []
            for t in m.tests:
                lines = by_test.get(t.name, set())
                if lines - covered:
                    keep.append(t)
                    covered |= lines
                else:
                    m.dropped_no_coverage.append(t.func)
            if keep:
                covered |= import_lines
            m.tests = keep
            m.statements = len(statements)
            m.before = 100.0 * len(before & statements) / len(statements)
            m.after = 100.0 * len(covered & statements) / len(statements)

    def _summary(self, modules: list[_Module]) -> str:
        tests = sum(len(m.tests) for m in modules)
        asserts = sum(t.assertions for m in modules for t in m.tests)
        parts = []
        for m in modules:
            cov = (
                f"line coverage of {m.plan.path} {m.before:.0f}% -> {m.after:.0f}%"
                if m.statements
                else f"coverage of {m.plan.path} not measured"
            )
            dropped = []
            if m.dropped_failing:
                dropped.append(f"{len(m.dropped_failing)} failing/flaky")
            if m.dropped_no_coverage:
                dropped.append(f"{len(m.dropped_no_coverage)} adding no coverage")
            extra = f", dropped {' and '.join(dropped)}" if dropped else ""
            parts.append(
                f"{m.plan.test_path}: {len(m.tests)} tests for {m.plan.module}, {cov}{extra}"
            )
        return (
            f"wrote {tests} characterization tests ({asserts} assertions, each passing "
            f"{RERUNS} runs) in {len(modules)} file(s): " + "; ".join(parts)
        )
