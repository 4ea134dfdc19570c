"""Argument values for a function's parameters, and the calls to probe it with.

Values come from the parameter's annotation (`int` -> 0, 1, -3, 7; `list[int]` -> [] and a
short list; `Optional[str]` -> None and strs...), from a literal default when there is no
annotation, and from constants the function itself mentions (quoted examples in its
docstring, its string constants, the ints it compares against), which reach branches
generic values miss. All of it is a pure function of the syntax tree: the same code gives
the same calls, in the same order, on every run.
"""

from __future__ import annotations

import ast
import itertools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nomic_dagster.agents.offline.test_writer.side_effects import dotted_name

MAX_CALLS_PER_FUNCTION = 10


class _Guess:
    """Marker: the parameter has no usable type; try ints, then strs."""


GUESS = _Guess()
GUESS_TYPES = ("int", "str")
# What an annotation stands for: values to try, GUESS for "anything", None for "unknown".
Values = list[Any] | _Guess | None

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
FROZEN_SET_NAMES = {"frozenset", "FrozenSet"}
DICT_NAMES = {"dict", "Dict", "Mapping", "MutableMapping"}
ANY_NAMES = {"Any", "object"}
UNION_NAMES = {"Union", "Optional"}


def _dedupe(values: Iterable[Any], limit: int = 5) -> list[Any]:
    """The first `limit` distinct values; 1, 1.0 and True count as different."""
    out: list[Any] = []
    seen: set[str] = set()
    for v in values:
        key = f"{type(v).__name__}:{v!r}"
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out[:limit]


def _type_name(node: ast.expr) -> str | None:
    dotted = dotted_name(node)
    return dotted.split(".")[-1] if dotted else None


# ---------------------------------------------------------------- annotations -> values


def annotation_values(node: ast.expr | None, depth: int = 0) -> Values:
    """Values to call with for an annotation; GUESS for "anything", None when unknown."""
    if node is None:
        return GUESS
    if depth > 3:
        return None
    if isinstance(node, ast.Constant):
        return _constant_annotation(node.value, depth)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([node.left, node.right], depth)
    if isinstance(node, ast.Subscript):
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        return _generic(_type_name(node.value), args, depth)
    name = _type_name(node)
    if name is None:
        return None
    return _plain_type(name)


def _constant_annotation(value: object, depth: int) -> Values:
    if value is None:
        return [None]
    if isinstance(value, str):  # a string annotation
        try:
            return annotation_values(ast.parse(value, mode="eval").body, depth + 1)
        except SyntaxError:
            return None
    return None


def _plain_type(name: str) -> Values:
    """Values of an unsubscripted type: `int`, `list`, `Any`..."""
    if name in ANY_NAMES:
        return GUESS
    if name in SCALARS:
        return list(SCALARS[name])
    if name in LIST_NAMES:
        return [[], [1, 2, 3]]
    if name in TUPLE_NAMES:
        return [(), (1, 2)]
    if name in SET_NAMES:
        kind: Any = frozenset if name in FROZEN_SET_NAMES else set
        return [kind(), kind({1, 2, 3})]
    if name in DICT_NAMES:
        return [{}, {"a": 1, "b": 2}]
    return None


def _union(members: list[ast.expr], depth: int) -> Values:
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


def _generic(base: str | None, args: list[ast.expr], depth: int) -> Values:
    """Values of a subscripted type: `Optional[str]`, `Literal[...]`, `dict[str, int]`..."""
    if base == "Optional":
        return _union([ast.Constant(None), *args], depth)
    if base in UNION_NAMES:
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
    members = [annotation_values(a, depth + 1) for a in args]
    if any(m is None for m in members):
        return None
    # an element that may be anything is tried as ints
    elements = [m if isinstance(m, list) else list(SCALARS["int"]) for m in members]
    return _container(base, args, elements) if elements else None


def _container(base: str | None, args: list[ast.expr], elements: list[list[Any]]) -> Values:
    """Values of a container type, given the values of its type arguments."""
    first = elements[0]
    if base in LIST_NAMES:
        return [[], list(first[:4])]
    if base in TUPLE_NAMES:
        # (a `...` argument makes the member values None above, so `tuple[int, ...]` is
        # refused before it gets here)
        if len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is Ellipsis:
            return [(), tuple(first[:3])]
        width = max(len(e) for e in elements)
        return _dedupe(tuple(e[i % len(e)] for e in elements) for i in range(min(width, 3)))
    if base in SET_NAMES:
        # only ints: a set of strs prints in hash order, which changes between runs
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in first):
            return None
        kind: Any = frozenset if base in FROZEN_SET_NAMES else set
        return [kind(), kind(first[:4])]
    if base in DICT_NAMES and len(elements) == 2:
        keys = [k for k in first if isinstance(k, str | int) and not isinstance(k, bool)]
        if not keys:
            return None
        values = elements[1]
        return [{}, {k: values[i % len(values)] for i, k in enumerate(keys[:3])}]
    return None


# ---------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "posonly", "regular", "kwonly"
    required: bool
    values: Values
    default: Any = None
    default_known: bool = False  # the default is a literal, and `default` holds its value


def _literal(node: ast.expr) -> tuple[bool, Any]:
    """(True, value) for a literal expression, (False, None) for anything else."""
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def function_params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[Param]:
    """The parameters that take one value each (`*args` and `**kwargs` are left out)."""
    a = node.args
    positional = [(p, "posonly") for p in a.posonlyargs] + [(p, "regular") for p in a.args]
    # the defaults belong to the last positional parameters
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults))
    defaults += a.defaults
    pairs = list(zip(positional, defaults, strict=True)) + [
        ((p, "kwonly"), d) for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)
    ]
    return [_param(arg, kind, default) for (arg, kind), default in pairs]


def _param(arg: ast.arg, kind: str, default: ast.expr | None) -> Param:
    values = annotation_values(arg.annotation)
    known, value = _literal(default) if default is not None else (False, None)
    if arg.annotation is None and known and value is not None:
        # unannotated: the default's type is the best hint there is
        typed = SCALARS.get(type(value).__name__)
        values = list(typed) if typed else values
    return Param(arg.arg, kind, default is None, values, value, known)


# ---------------------------------------------------------------- the function's own constants

_DOC_QUOTED = re.compile(r"'([^'\n]{1,30})'|\"([^\"\n]{1,30})\"")


def mine_constants(node: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, list[Any]]:
    """Strs and ints the function itself suggests: quoted examples in its docstring, string
    constants in its body, and both sides of the boundaries it compares ints against."""
    doc = ast.get_docstring(node) or ""
    strs: list[str] = [a or b for a, b in _DOC_QUOTED.findall(doc)]
    ints: list[int] = []
    for sub in _nodes_outside_messages(node.body[1:] if doc else node.body):
        if isinstance(sub, ast.Constant) and type(sub.value) is str and 0 < len(sub.value) <= 30:
            strs.append(sub.value)
        elif isinstance(sub, ast.Compare):
            ints += _compared_ints(sub)
    return {"str": _dedupe(strs, 3), "int": _dedupe(ints, 3)}


def _nodes_outside_messages(body: list[ast.stmt]) -> list[ast.AST]:
    """Every node under the statements, except those in raise statements and f-strings:
    their strings are error messages and output, not inputs the function expects."""
    nodes = [sub for stmt in body for sub in ast.walk(stmt)]
    messages = {
        id(n) for sub in nodes if isinstance(sub, ast.Raise | ast.JoinedStr) for n in ast.walk(sub)
    }
    return [n for n in nodes if id(n) not in messages]


def _compared_ints(compare: ast.Compare) -> list[int]:
    ints: list[int] = []
    for side in [compare.left, *compare.comparators]:
        known, value = _literal(side)
        if known and type(value) is int and abs(value) < 10**6:
            ints += [value, value + 1]  # both sides of the boundary
    return ints


def _with_mined(values: list[Any], mined: dict[str, list[Any]], first: bool = False) -> list[Any]:
    """Add the function's own constants to a list of strs or ints."""
    for kind, typ in (("str", str), ("int", int)):
        if values and all(type(v) is typ for v in values) and mined.get(kind):
            extra = mined[kind]
            return _dedupe([*extra, *values] if first else [*values, *extra], 7)
    return values


# ---------------------------------------------------------------- calls


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
    return [_product_member(lists, index) for index in picks]


def _product_member(lists: list[list[Any]], index: int) -> tuple[Any, ...]:
    """Member `index` of itertools.product(*lists), without building the product."""
    combo = []
    for values in reversed(lists):
        index, digit = divmod(index, len(values))
        combo.append(values[digit])
    return tuple(reversed(combo))


def plan_calls(
    name: str, params: list[Param], mined: dict[str, list[Any]] | None = None
) -> list[Call] | str:
    """The calls to probe, or why the function cannot be called."""
    mined = mined or {}
    required = [p for p in params if p.required]
    for p in required:
        if p.values is None:
            return f"cannot build a value for parameter {p.name!r}"
    # an untyped required parameter: try all of them as ints, then all as strs
    guesses: tuple[str | None, ...] = (
        GUESS_TYPES if any(p.values is GUESS for p in required) else (None,)
    )
    calls: list[Call] = []
    first_combo: dict[str | None, tuple[Any, ...]] = {}
    for guess in guesses:
        lists = [_with_mined(_candidates(p, guess), mined) for p in required]
        combos = _sample_product(lists, 5 if len(guesses) > 1 else MAX_CALLS_PER_FUNCTION - 3)
        if combos:
            first_combo[guess] = combos[0]
        calls += [_make_call(name, required, combo, (), guess is not None) for combo in combos]
    base_guess = guesses[0]
    base = first_combo.get(base_guess, ())
    calls += _optional_variations(name, params, required, base, base_guess is not None, mined)
    unique: dict[str, Call] = {}
    for c in calls:
        unique.setdefault(c.key, c)
    return list(unique.values())[:MAX_CALLS_PER_FUNCTION]


def _candidates(p: Param, guess: str | None) -> list[Any]:
    """The values to try for a required parameter under one guess of the untyped ones."""
    if isinstance(p.values, list):
        return list(p.values)
    return list(SCALARS[guess]) if guess else []  # GUESS (None was refused before)


def _optional_variations(
    name: str,
    params: list[Param],
    required: list[Param],
    base: tuple[Any, ...],
    guessed: bool,
    mined: dict[str, list[Any]],
) -> list[Call]:
    """Calls that vary one optional parameter (of the first three) once or twice, the
    required ones at their first values."""
    calls: list[Call] = []
    for p in [p for p in params if not p.required][:3]:
        # a positional-only one cannot be passed by name; unknown or untyped ones keep
        # their defaults
        if p.kind == "posonly" or not isinstance(p.values, list):
            continue
        values = _with_mined(p.values, mined, first=True)
        others = [v for v in values if not _is_default(p, v)]
        calls += [_make_call(name, required, base, ((p.name, v),), guessed) for v in others[:2]]
    return calls


def _is_default(p: Param, value: Any) -> bool:
    return p.default_known and value == p.default and type(value) is type(p.default)


def _make_call(
    name: str,
    required: list[Param],
    combo: tuple[Any, ...],
    extra: tuple[tuple[str, Any], ...],
    guessed: bool,
) -> Call:
    """The call passing `combo` to the required parameters and `extra` by name."""
    given = list(zip(required, combo, strict=True))
    args = tuple(repr(v) for p, v in given if p.kind != "kwonly")
    kwargs = tuple((p.name, repr(v)) for p, v in given if p.kind == "kwonly")
    kwargs += tuple((k, repr(v)) for k, v in extra)
    return Call(name, args, kwargs, guessed)
