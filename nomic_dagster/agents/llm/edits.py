"""Edits from API agents: search/replace blocks and unified diffs, applied all-or-nothing.

An agent that cannot run tools describes its change as text. `apply_edits` checks every
edit against the worktree first — the path stays inside it (no `..`, no absolute path, no
symlink on the way), does not touch `.git` or a protected path, and every search block
matches its file exactly once — and only then writes. Either every file is written or
none is: a failure while writing puts back what was already written.

The error text is exact and meant to be shown to the agent in its one repair round.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from nomic_dagster.core import pathrules
from nomic_dagster.core.errors import NomicError

MAX_FILE_BYTES = 2_000_000


class EditRejected(NomicError):
    """The edits were not applied (nothing was written). `problems` lists every reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"- {p}" for p in self.problems)
        super().__init__(f"the edits were rejected and nothing was written:\n{lines}")


class SearchReplace(BaseModel):
    """Replace the one occurrence of `search` in `path` with `replace`.

    An empty `search` creates `path` (which must not exist yet) with `replace` as content.
    """

    model_config = ConfigDict(extra="forbid")

    path: str
    search: str
    replace: str


@dataclass
class AppliedEdits:
    created: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return sorted({*self.created, *self.modified, *self.deleted})

    def summary(self) -> str:
        parts = []
        for label, paths in (
            ("created", self.created),
            ("modified", self.modified),
            ("deleted", self.deleted),
        ):
            if paths:
                parts.append(f"{label} {', '.join(sorted(paths))}")
        return "; ".join(parts) or "no files"


# ---------------------------------------------------------------- paths


def check_path(root: Path, raw: str, protected: Iterable[str]) -> str:
    """The normalised repository path for `raw`, or ValueError saying why it is refused."""
    if not raw or not raw.strip():
        raise ValueError("an edit has an empty path")
    if raw != raw.strip():
        raise ValueError(f"path {raw!r} has leading or trailing whitespace")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", raw) or raw.startswith("\\"):
        raise ValueError(f"path {raw!r} is absolute; give it relative to the repository root")
    if "\0" in raw:
        raise ValueError(f"path {raw!r} contains a NUL byte")
    rel = pathrules.normalize(raw)  # ValueError for ".."
    if not rel:
        raise ValueError(f"path {raw!r} names the repository root, not a file")
    if ".git" in rel.split("/") or rel.split("/")[0].lower() == ".git":
        raise ValueError(f"path {rel!r} is inside .git; edits may not touch git's own files")
    rule = pathrules.first_match(rel, protected)
    if rule is not None:
        raise ValueError(f"path {rel!r} is protected (rule {rule!r}); it may not be edited")
    # No symlink anywhere on the way: it could lead out of the worktree, and an edit through
    # it would change a file other than the one it names.
    current = root
    for part in rel.split("/"):
        current = current / part
        if current.is_symlink():
            shown = current.relative_to(root).as_posix()
            raise ValueError(f"path {rel!r} goes through the symlink {shown!r}; edit real files")
    resolved = (root / rel).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ValueError(f"path {rel!r} leaves the worktree")
    return rel


# ---------------------------------------------------------------- search/replace


def _loose(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _find_once(
    content: str, search: str, rel: str, label: str, hint_line: int | None = None
) -> int:
    count = content.count(search)
    if count == 1:
        return content.index(search)
    if count > 1:
        if hint_line is not None:
            # A diff hunk names its line: among several matches take the one that starts there.
            start = 0
            for _ in range(count):
                at = content.index(search, start)
                if content.count("\n", 0, at) + 1 == hint_line:
                    return at
                start = at + 1
        raise ValueError(
            f"{label}: the search text matches {count} times in {rel}; include more "
            "surrounding lines so it matches exactly once"
        )
    first = search.strip("\n").splitlines()[0] if search.strip() else ""
    hint = ""
    if _loose(search) and _loose(search) in _loose(content):
        hint = " (it would match if whitespace were ignored: copy the text exactly, indentation and line endings included)"
    elif first and first.strip() and first.strip() in content:
        hint = f" (its first line {first.strip()!r} is there, but the following lines differ)"
    raise ValueError(f"{label}: the search text does not occur in {rel}{hint}")


@dataclass
class _Plan:
    root: Path
    protected: tuple[str, ...]
    originals: dict[str, bytes | None] = field(default_factory=dict)  # None: did not exist
    contents: dict[str, str | None] = field(default_factory=dict)  # None: delete
    problems: list[str] = field(default_factory=list)

    def path(self, raw: str, label: str) -> str | None:
        try:
            return check_path(self.root, raw, self.protected)
        except ValueError as exc:
            self.problems.append(f"{label}: {exc}")
            return None

    def current(self, rel: str, label: str) -> str | None:
        """The file's text as the edits so far left it; None when it does not exist."""
        if rel in self.contents:
            return self.contents[rel]
        target = self.root / rel
        if target.exists() and not target.is_file():
            raise ValueError(f"{label}: {rel} is not a regular file")
        if not target.exists():
            self.originals[rel] = None
            return None
        data = target.read_bytes()
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"{label}: {rel} is larger than {MAX_FILE_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{label}: {rel} is not UTF-8 text") from exc
        self.originals[rel] = data
        return text


def _plan_search_replace(plan: _Plan, edits: Sequence[SearchReplace]) -> None:
    for i, edit in enumerate(edits, start=1):
        label = f"edit {i} ({edit.path})"
        rel = plan.path(edit.path, label)
        if rel is None:
            continue
        try:
            content = plan.current(rel, label)
            if content is None:
                if edit.search:
                    raise ValueError(
                        f"{label}: {rel} does not exist; to create it, leave `search` empty"
                    )
                plan.contents[rel] = edit.replace
                continue
            if not edit.search:
                raise ValueError(
                    f"{label}: `search` is empty but {rel} exists; quote the exact text to replace"
                )
            at = _find_once(content, edit.search, rel, label)
            plan.contents[rel] = content[:at] + edit.replace + content[at + len(edit.search) :]
        except ValueError as exc:
            plan.problems.append(str(exc))


# ---------------------------------------------------------------- unified diffs


@dataclass
class Hunk:
    old_start: int
    lines: list[str]  # each with its " ", "-" or "+" prefix

    def old_new(self) -> tuple[str, str]:
        old: list[str] = []
        new: list[str] = []
        for i, line in enumerate(self.lines):
            tag, body = line[:1], line[1:]
            no_newline = i + 1 < len(self.lines) and self.lines[i + 1].startswith("\\")
            text = body if no_newline else body + "\n"
            if tag in (" ", ""):
                old.append(text)
                new.append(text)
            elif tag == "-":
                old.append(text)
            elif tag == "+":
                new.append(text)
        return "".join(old), "".join(new)


@dataclass
class FilePatch:
    old_path: str | None  # None: /dev/null (a new file)
    new_path: str | None  # None: /dev/null (a deleted file)
    hunks: list[Hunk] = field(default_factory=list)


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _diff_path(raw: str) -> str | None:
    name = raw.split("\t", 1)[0].strip()
    if name == "/dev/null":
        return None
    if name.startswith('"') and name.endswith('"'):
        name = name[1:-1]
    if name.startswith(("a/", "b/")):
        name = name[2:]
    return name


def strip_fences(text: str) -> str:
    """The body of a ```diff (or ```patch) fence when the text holds one, else the text."""
    fenced = re.search(r"```(?:diff|patch|udiff)?[^\n]*\n(.*?)```", text, re.DOTALL)
    return fenced.group(1) if fenced else text


def parse_unified_diff(text: str) -> list[FilePatch]:
    """File patches from a unified diff (git's or plain `diff -u`); ValueError when malformed."""
    lines = strip_fences(text).splitlines()
    patches: list[FilePatch] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            patch = FilePatch(_diff_path(line[4:]), _diff_path(lines[i + 1][4:]))
            patches.append(patch)
            i += 2
            continue
        m = _HUNK.match(line)
        if m:
            if not patches:
                raise ValueError(f"diff line {i + 1}: a hunk before any '--- a/… +++ b/…' header")
            old_len = int(m.group(2)) if m.group(2) is not None else 1
            new_len = int(m.group(4)) if m.group(4) is not None else 1
            hunk = Hunk(old_start=int(m.group(1)), lines=[])
            i += 1
            seen_old = seen_new = 0
            while i < len(lines) and (seen_old < old_len or seen_new < new_len):
                body = lines[i]
                tag = body[:1]
                if tag == "\\":
                    hunk.lines.append(body)
                elif tag in (" ", "") or body == "":
                    hunk.lines.append(" " + body[1:] if body else " ")
                    seen_old += 1
                    seen_new += 1
                elif tag == "-":
                    hunk.lines.append(body)
                    seen_old += 1
                elif tag == "+":
                    hunk.lines.append(body)
                    seen_new += 1
                else:
                    break
                i += 1
            if i < len(lines) and lines[i].startswith("\\"):
                hunk.lines.append(lines[i])
                i += 1
            if seen_old != old_len or seen_new != new_len:
                raise ValueError(
                    f"diff hunk '{line}' promises {old_len} old and {new_len} new lines but "
                    f"has {seen_old} and {seen_new}"
                )
            patches[-1].hunks.append(hunk)
            continue
        i += 1
    if not patches:
        raise ValueError("the diff has no '--- a/<path>' / '+++ b/<path>' file header")
    return patches


def _plan_diff(plan: _Plan, diff: str) -> None:
    try:
        patches = parse_unified_diff(diff)
    except ValueError as exc:
        plan.problems.append(f"diff: {exc}")
        return
    for n, patch in enumerate(patches, start=1):
        name = patch.new_path or patch.old_path or ""
        label = f"diff file {n} ({name})"
        if patch.old_path and patch.new_path and patch.old_path != patch.new_path:
            plan.problems.append(f"{label}: renames are not supported; edit the file in place")
            continue
        rel = plan.path(name, label)
        if rel is None:
            continue
        try:
            content = plan.current(rel, label)
            if patch.old_path is None:  # a new file
                if content is not None:
                    raise ValueError(f"{label}: the diff creates {rel}, which already exists")
                plan.contents[rel] = "".join(h.old_new()[1] for h in patch.hunks)
                continue
            if content is None:
                raise ValueError(f"{label}: {rel} does not exist")
            if patch.new_path is None:  # a deletion
                plan.contents[rel] = None
                continue
            if not patch.hunks:
                raise ValueError(f"{label}: no hunks for {rel}")
            for h, hunk in enumerate(patch.hunks, start=1):
                old, new = hunk.old_new()
                if not old:
                    raise ValueError(
                        f"{label} hunk {h}: no context or removed lines to place it; "
                        "include the lines around the change"
                    )
                at = _find_once(content, old, rel, f"{label} hunk {h}", hint_line=hunk.old_start)
                content = content[:at] + new + content[at + len(old) :]
            plan.contents[rel] = content
        except ValueError as exc:
            plan.problems.append(str(exc))


# ---------------------------------------------------------------- writing


def _write_atomic(target: Path, data: bytes, mode: int | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".nomic-tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _commit(plan: _Plan) -> AppliedEdits:
    applied = AppliedEdits()
    done: list[str] = []
    created_dirs: list[Path] = []
    try:
        for rel, text in plan.contents.items():
            target = plan.root / rel
            original = plan.originals.get(rel)
            if text is None:
                target.unlink()
                applied.deleted.append(rel)
            else:
                mode = stat.S_IMODE(target.stat().st_mode) if original is not None else None
                missing = [p for p in target.parents if not p.exists()]
                _write_atomic(target, text.encode("utf-8"), mode)
                created_dirs.extend(missing)
                (applied.created if original is None else applied.modified).append(rel)
            done.append(rel)
    except BaseException:
        for rel in reversed(done):  # all or nothing: put back what was written
            target = plan.root / rel
            original = plan.originals.get(rel)
            if original is None:
                target.unlink(missing_ok=True)
            else:
                _write_atomic(target, original, None)
        for d in sorted(set(created_dirs), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return applied


def apply_edits(
    root: Path,
    edits: Sequence[SearchReplace] = (),
    diff: str | None = None,
    protected: Iterable[str] = (),
) -> AppliedEdits:
    """Apply search/replace `edits`, then the unified `diff`, to the worktree `root`.

    Raises `EditRejected` listing every problem, with nothing written, unless all apply.
    """
    plan = _Plan(root=Path(root), protected=tuple(protected))
    if not edits and not (diff and diff.strip()):
        raise EditRejected(["no edits were given"])
    _plan_search_replace(plan, edits)
    if diff and diff.strip():
        _plan_diff(plan, diff)
    if plan.problems:
        raise EditRejected(plan.problems)
    unchanged = [
        rel
        for rel, text in plan.contents.items()
        if text is not None
        and plan.originals.get(rel) is not None
        and plan.originals[rel] == text.encode("utf-8")
    ]
    if unchanged and len(unchanged) == len(plan.contents):
        raise EditRejected([f"the edits leave {', '.join(unchanged)} unchanged"])
    try:
        return _commit(plan)
    except OSError as exc:
        raise EditRejected([f"writing failed ({exc}); every file was put back"]) from exc


__all__ = [
    "AppliedEdits",
    "EditRejected",
    "FilePatch",
    "SearchReplace",
    "apply_edits",
    "check_path",
    "parse_unified_diff",
]
