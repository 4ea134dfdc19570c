"""Reading what the test runs leave behind: pytest's junit XML and coverage.py's JSON."""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from nomic_dagster.sandbox.commands import run_command

TestKey = tuple[str, str]  # (test file stem, test function name)


class JunitResult(NamedTuple):
    passed: set[TestKey]
    reported: set[TestKey]
    problems: list[str]  # "stem::name: first line of the failure message"


def read_junit(path: Path) -> JunitResult:
    """The tests a junit report lists, the ones that passed, and why the others did not."""
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        return JunitResult(set(), set(), ["pytest wrote no report"])
    seen: set[TestKey] = set()
    bad: set[TestKey] = set()
    problems: list[str] = []
    for case in tree.iter("testcase"):
        key = (case.get("classname", "").rsplit(".", 1)[-1], case.get("name", ""))
        seen.add(key)
        failed = [c for c in case if c.tag in ("failure", "error", "skipped")]
        if failed:
            bad.add(key)
            message = (failed[0].get("message") or failed[0].text or "").strip().splitlines()
            problems.append(f"{key[0]}::{key[1]}: {message[0][:200] if message else failed[0].tag}")
    return JunitResult(seen - bad, seen, problems)


def write_coverage_rc(path: Path, modules: list[Path]) -> Path:
    """A coverage.py config measuring only the given files (as given and resolved)."""
    patterns: list[str] = []
    for m in modules:
        for p in (str(m), str(m.resolve())):
            if p not in patterns:
                patterns.append(p)
    path.write_text(
        "[run]\ninclude =\n" + "".join(f"    {p}\n" for p in patterns), encoding="utf-8"
    )
    return path


def coverage_report(data: Path, rc: Path, out: Path, cwd: Path) -> dict[str, Any]:
    """coverage.py's JSON report, with contexts, by file ({} when there is none)."""
    if not data.exists():
        return {}
    argv = [sys.executable, "-m", "coverage", "json", "--rcfile", str(rc), "--data-file", str(data)]
    res = run_command([*argv, "--show-contexts", "-o", str(out)], cwd, 120, scratch=cwd)
    if not res.ok or not out.exists():
        return {}
    files: dict[str, Any] = json.loads(out.read_text(encoding="utf-8")).get("files", {})
    return files


def file_entry(report: dict[str, Any], module_file: Path, cwd: Path) -> dict[str, Any] | None:
    """The report's entry for a file; its keys are absolute or relative to `cwd`."""
    target = module_file.resolve()
    for key, entry in report.items():
        path = Path(key) if os.path.isabs(key) else cwd / key
        if path.resolve() == target:
            return entry
    return None


def context_owner(label: str) -> tuple[str, str]:
    """("test" | "collect" | "", stem of the test file) of a coverage context label
    (see coverage_contexts.py)."""
    kind, _, nodeid = label.partition(":")
    if kind not in ("test", "collect") or not nodeid:
        return "", ""
    return kind, PurePosixPath(nodeid.split("::", 1)[0]).stem


class LineOwners(NamedTuple):
    """Who ran which lines of one module, by coverage context."""

    before: set[int]  # any context but the new test files: the existing suite, its conftest
    by_test: dict[str, set[int]]  # the tests of the module's new file, by test name
    on_import: set[int]  # collecting (importing) the module's new file


def line_owners(entry: dict[str, Any], stem: str, new_stems: set[str]) -> LineOwners:
    """Split a file entry's covered lines by what ran them; `stem` is the module's new
    test file, `new_stems` all the new test files."""
    owners = LineOwners(set(), {}, set())
    for line, labels in (entry.get("contexts") or {}).items():
        for label in labels:
            kind, owner = context_owner(label)
            if owner not in new_stems:
                owners.before.add(int(line))
            elif owner == stem and kind == "test":
                owners.by_test.setdefault(label.rsplit("::", 1)[-1], set()).add(int(line))
            elif owner == stem:
                owners.on_import.add(int(line))
    return owners
