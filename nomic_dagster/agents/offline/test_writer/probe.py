"""The test-writer's probe: import one module, call its functions, record the outcomes.

A script, run in a subprocess with the target's interpreter and environment:

    python probe.py spec.json out.jsonl

It uses the standard library only and nothing of nomic_dagster. The agent copies it into
a scratch folder and runs it from there, several times with different hash seeds (see
probe_runner.py).

spec.json holds the folder to import from ("import_dir"), the module's dotted name
("module"), the per-call time limit in seconds ("call_timeout"), the longest result repr
worth recording ("max_repr") and the calls: {"id", "func", "args": [source text],
"kwargs": [[name, source text]]}. out.jsonl gets one JSON object per line: either
{"import_error": "..."} alone, or one record per call with its "id" and "kind":

- "value": returned plain data; "repr" is its source text, "type" its type's name
- "raises": raised an exception of the builtins ("where": "builtins") or one the module
  defines ("where": "module"); "name" is the exception's name
- "unrecordable": the result or exception cannot be written in a test ("why")
- "unstable": two calls in a row gave different outcomes
- "timeout", "fatal" (a BaseException): no further calls of that function are made
- "missing": the module has no callable of that name
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import io
import json
import signal
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import IO, Any

Record = dict[str, Any]

# The argument source text is literals; sets and frozensets print as calls.
EVAL_NAMESPACE: dict[str, Any] = {"__builtins__": {}, "set": set, "frozenset": frozenset}


class ProbeTimeout(BaseException):
    """Raised by the alarm in a call that overran; not an Exception, so that the function's
    own `except Exception` cannot swallow it."""


def main(spec_path: str, out_path: str) -> None:
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    sys.dont_write_bytecode = True  # no __pycache__ in the target's worktree
    sys.path.insert(0, spec["import_dir"])
    with open(out_path, "w", encoding="utf-8") as out:
        sink = io.StringIO()  # swallows whatever the module prints
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                module = importlib.import_module(spec["module"])
        except BaseException as exc:
            _emit(out, {"import_error": f"{type(exc).__name__}: {exc!s}"[:400]})
            return
        caller = Caller(module, sink, spec["call_timeout"], spec["max_repr"])
        for record in probe_calls(caller, spec["calls"]):
            _emit(out, record)


def _emit(out: IO[str], record: Record) -> None:
    out.write(json.dumps(record, sort_keys=True) + "\n")
    out.flush()  # a probe killed for taking too long keeps what it recorded


def probe_calls(caller: Caller, calls: list[Record]) -> Iterator[Record]:
    """One record per call, in order; a function that is missing, hangs or ends the
    process is not called again."""
    broken: set[str] = set()
    for call in calls:
        name = call["func"]
        if name in broken:
            continue
        func = getattr(caller.module, name, None)
        if not callable(func):
            broken.add(name)
            yield {"id": call["id"], "kind": "missing"}
            continue
        first = caller.outcome(func, call)
        # the same call again: an outcome that depends on state or chance shows up
        second = caller.outcome(func, call) if first["kind"] in ("value", "raises") else first
        if first != second:
            first = {"kind": "unstable"}
        if first["kind"] in ("timeout", "fatal"):
            broken.add(name)
        yield dict(first, id=call["id"])


class Caller:
    """Calls the module's functions, silenced and under a time limit."""

    def __init__(self, module: ModuleType, sink: io.StringIO, timeout: float, max_repr: int):
        self.module = module
        self.sink = sink
        self.timeout = timeout
        self.max_repr = max_repr
        # without setitimer (Windows) calls have no limit; the agent's timeout still applies
        self.alarm = hasattr(signal, "setitimer")
        if self.alarm:
            signal.signal(signal.SIGALRM, _on_alarm)

    def outcome(self, func: Callable[..., Any], call: Record) -> Record:
        args = [eval(s, EVAL_NAMESPACE) for s in call["args"]]
        kwargs = {k: eval(s, EVAL_NAMESPACE) for k, s in call["kwargs"]}
        self.sink.seek(0)
        self.sink.truncate()
        try:
            result = self._timed(func, args, kwargs)
        except ProbeTimeout:
            return {"kind": "timeout"}
        except Exception as exc:
            return self._raised(type(exc))
        except BaseException as exc:
            return {"kind": "fatal", "why": type(exc).__name__}
        return _returned(result, self.max_repr)

    def _timed(self, func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
        try:
            if self.alarm:
                signal.setitimer(signal.ITIMER_REAL, self.timeout)
            with contextlib.redirect_stdout(self.sink), contextlib.redirect_stderr(self.sink):
                return func(*args, **kwargs)
        finally:
            if self.alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)

    def _raised(self, exc_type: type[BaseException]) -> Record:
        """A test can name a builtin exception, or one the module defines, in pytest.raises."""
        name = exc_type.__name__
        if exc_type in (RecursionError, MemoryError):
            return {"kind": "unrecordable", "why": name}
        if getattr(builtins, name, None) is exc_type:
            return {"kind": "raises", "name": name, "where": "builtins"}
        if getattr(self.module, name, None) is exc_type:
            return {"kind": "raises", "name": name, "where": "module"}
        return {"kind": "unrecordable", "why": "exception " + name}


def _on_alarm(signum: int, frame: object) -> None:
    raise ProbeTimeout()


def _returned(result: Any, max_repr: int) -> Record:
    """A result is recorded when its repr is a literal that evaluates back to an equal
    value of the same type: the test can then compare against that source text."""
    try:
        text = repr(result)
        back = ast.literal_eval(text)
        same = type(back) is type(result) and back == result
    except Exception:
        same = False
    if not same:
        return {"kind": "unrecordable", "why": type(result).__name__}
    if len(text) > max_repr:
        return {"kind": "unrecordable", "why": "long"}
    return {"kind": "value", "repr": text, "type": type(result).__name__}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
