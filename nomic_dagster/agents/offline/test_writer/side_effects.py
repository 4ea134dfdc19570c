"""Whether code may touch the outside world, judged from its syntax tree alone.

A characterization test calls a function and pins what came back, so the agent calls
only functions that do nothing but compute: no files, processes, network, clock,
randomness or global state. The scan works by name (builtins, modules and method names
that act on the world) and errs on the side of "impure".
"""

from __future__ import annotations

import ast
from collections.abc import Iterable


def word_set(words: str) -> frozenset[str]:
    """A set of names written as one whitespace-separated string."""
    return frozenset(words.split())


IMPURE_BUILTINS = word_set("open input exit quit exec eval compile breakpoint __import__ help")
# Any use of these modules makes a function environment-dependent or effectful.
IMPURE_MODULES = word_set(
    """os sys subprocess shutil socket requests urllib urllib3 http httpx aiohttp time random
    secrets uuid tempfile threading multiprocessing concurrent asyncio signal ctypes sqlite3
    smtplib ftplib telnetlib webbrowser getpass glob fileinput platform locale pty select
    selectors ssl mmap fcntl atexit importlib psutil boto3"""
)
# The pure corners of the modules above.
PURE_QUALIFIED = frozenset(
    [f"os.path.{n}" for n in word_set("join split splitext basename dirname normpath normcase")]
    + [f"os.path.{n}" for n in word_set("commonprefix commonpath isabs splitdrive")]
    + [f"os.{n}" for n in word_set("sep altsep extsep pathsep linesep curdir pardir")]
    + [f"os.{n}" for n in word_set("fspath fsdecode fsencode PathLike")]
    + [f"sys.{n}" for n in word_set("maxsize maxunicode version_info float_info int_info")]
    + [f"sys.{n}" for n in word_set("hash_info byteorder hexversion")]
)
# Method names that read or write the outside world whatever object they are called on.
IMPURE_METHODS = word_set(
    """write writelines write_text write_bytes read_text read_bytes unlink mkdir makedirs rmdir
    rmtree removedirs touch chmod chown rename renames symlink_to hardlink_to iterdir glob rglob
    exists is_file is_dir stat lstat resolve absolute expanduser cwd home open flush sendall
    sendto recv connect urlopen system popen kill sleep now today utcnow getenv putenv seed uuid1
    uuid4 token_hex token_bytes token_urlsafe randint randrange shuffle perf_counter monotonic
    getpid"""
)
# At import time only clearly effectful calls disqualify a module (reading the
# environment into a constant is common and harmless).
IMPORT_TIME_MODULES = word_set(
    """subprocess shutil socket requests urllib http httpx webbrowser smtplib ftplib tempfile
    multiprocessing threading asyncio signal sqlite3"""
)
IMPORT_TIME_CALLS = word_set(
    """write write_text write_bytes unlink mkdir makedirs rmtree touch rename system popen kill
    sleep urlopen connect sendall chdir remove fork putenv exit"""
)
# Statements of a module body that run no code of their own when the module is imported.
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)


def dotted_name(node: ast.AST) -> str | None:
    """`a.b.c` for a chain of attributes on a name; None for anything else."""
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
                else:  # `import a.b` binds `a`
                    top = a.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if a.name != "*":
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _with_root_resolved(dotted: str, root: str) -> str:
    """`dotted` with its first part replaced by `root` (`np.sum`, "numpy" -> `numpy.sum`)."""
    _, _, rest = dotted.partition(".")
    return root + (f".{rest}" if rest else "")


def _qualified_refs(tree: ast.AST, aliases: dict[str, str]) -> Iterable[str]:
    """Absolute dotted names of the outermost attribute chains rooted at an import."""
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if id(node) in inner or not isinstance(node, ast.Attribute | ast.Name):
            continue
        dotted = dotted_name(node)
        if not dotted:
            continue
        root = dotted.partition(".")[0]
        if root in aliases:
            yield _with_root_resolved(dotted, aliases[root])


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
            # a builtin's name bound by an import is not the builtin
            if isinstance(func, ast.Name) and func.id in IMPURE_BUILTINS and func.id not in aliases:
                reasons.append(f"calls {func.id}()")
            elif isinstance(func, ast.Attribute) and func.attr in IMPURE_METHODS:
                reasons.append(f"calls .{func.attr}()")
    reasons.extend(r for r in map(_impure_reference, _qualified_refs(node, aliases)) if r)
    return sorted(set(reasons))


def _is_main_guard(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.If) and "__name__" in ast.unparse(stmt.test)


def _effectful_at_import(call: ast.Call, full: str) -> bool:
    # compile() at import is how modules build regular expressions and code: harmless
    if isinstance(call.func, ast.Name) and call.func.id in IMPURE_BUILTINS - {"compile"}:
        return True
    return full.split(".")[0] in IMPORT_TIME_MODULES or full.split(".")[-1] in IMPORT_TIME_CALLS


def import_time_side_effects(tree: ast.Module, aliases: dict[str, str]) -> list[str]:
    """Effectful calls a module makes when imported (outside defs and the main guard)."""
    reasons: list[str] = []
    for stmt in tree.body:
        if isinstance(stmt, _DEFINITIONS) or _is_main_guard(stmt):
            continue
        for sub in ast.walk(stmt):
            if not isinstance(sub, ast.Call):
                continue
            dotted = dotted_name(sub.func) or ""
            root = dotted.partition(".")[0]
            full = _with_root_resolved(dotted, aliases.get(root, root))
            if _effectful_at_import(sub, full):
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
    # spread impurity to the callers until nothing changes (call chains of any length)
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
