"""The lint-fixer agent: ruff's safe fixes and ruff's formatter, nothing else.

It proposes the files where ruff can do the most without judgement: findings that ruff
marks as safely fixable, and files whose formatting drifts from `ruff format`. It never
uses `--unsafe-fixes`, and it honours the target's own ruff configuration (ruff finds
`pyproject.toml` / `ruff.toml` itself; `--force-exclude` keeps excluded files alone
even when they are named on the command line).
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from nomic_dagster.agents.base import WorkArea
from nomic_dagster.agents.offline.common import OfflineAgent
from nomic_dagster.core.errors import ImplementationFailed
from nomic_dagster.core.pathrules import is_junk, normalize
from nomic_dagster.core.records import Design, Finding, Goal, Proposal, RepoContext
from nomic_dagster.sandbox.commands import ruff_findings, run_command

RUFF_TIMEOUT_S = 300
_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")


def _ruff(*args: str) -> list[str]:
    return [sys.executable, "-m", "ruff", *args]


def parse_unified_diff(text: str, root: Path | None = None) -> dict[str, int]:
    """Changed lines (added + removed) per file in a unified diff as ruff prints it.

    Hunk headers are followed by their line counts, so a removed source line that
    happens to start with `--` is never mistaken for a file header.
    """
    changed: dict[str, int] = {}
    current: str | None = None
    old_left = new_left = 0
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if old_left > 0 or new_left > 0:
            if line.startswith("-"):
                old_left -= 1
                changed[current or ""] = changed.get(current or "", 0) + 1
            elif line.startswith("+"):
                new_left -= 1
                changed[current or ""] = changed.get(current or "", 0) + 1
            elif line.startswith("\\"):
                pass  # "\ No newline at end of file"
            else:
                old_left -= 1
                new_left -= 1
            i += 1
            continue
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            current = _diff_path(lines[i + 1][4:], root)
            changed.setdefault(current, 0)
            i += 2
            continue
        match = _HUNK.match(line)
        if match:
            old_left = int(match.group(1)) if match.group(1) is not None else 1
            new_left = int(match.group(2)) if match.group(2) is not None else 1
        i += 1
    return {path: n for path, n in changed.items() if path and n > 0}


def _diff_path(raw: str, root: Path | None) -> str:
    raw = raw.split("\t", 1)[0].strip()
    path = Path(raw)
    if path.is_absolute() and root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return path.as_posix()
    try:
        return normalize(raw)
    except ValueError:
        return raw


def format_drift(root: Path, paths: list[str] | None = None) -> dict[str, int]:
    """Files `ruff format` would change, with the number of changed diff lines.

    Files ruff cannot parse are skipped (ruff reports them and still diffs the rest).
    """
    argv = _ruff("format", "--check", "--diff", "--no-cache", "--force-exclude")
    argv += paths if paths else ["."]
    res = run_command(argv, root, RUFF_TIMEOUT_S)
    if res.exit_code not in (0, 1, 2) or res.timed_out:
        return {}
    return parse_unified_diff(res.stdout, root)


def fix_diff(root: Path, paths: list[str]) -> dict[str, int]:
    """Changed diff lines per file if ruff applied its safe fixes (nothing is written)."""
    if not paths:
        return {}
    argv = _ruff("check", "--diff", "--no-cache", "--force-exclude", *paths)
    res = run_command(argv, root, RUFF_TIMEOUT_S)
    if res.exit_code not in (0, 1) or res.timed_out:
        return {}
    return parse_unified_diff(res.stdout, root)


def _code_summary(codes: Counter[str]) -> str:
    parts = [
        f"{code} x{n}" if n > 1 else code
        for code, n in sorted(codes.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return ", ".join(parts)


@dataclass(frozen=True)
class _FileWork:
    path: str
    fixable: Counter[str]
    format_lines: int  # 0: already formatted

    @property
    def fixes(self) -> int:
        return sum(self.fixable.values())

    @property
    def score(self) -> float:
        # A file that needs formatting counts as one fix plus a little for a large drift.
        drift = 1 + min(self.format_lines, 100) / 20 if self.format_lines else 0
        return self.fixes + drift

    def evidence(self) -> str:
        parts = []
        if self.fixes:
            noun = "safe fix" if self.fixes == 1 else "safe fixes"
            parts.append(f"{self.fixes} {noun} ({_code_summary(self.fixable)})")
        if self.format_lines:
            parts.append(f"needs formatting ({self.format_lines} diff lines)")
        return f"{self.path}: {', '.join(parts)}"


class LintFixer(OfflineAgent):
    """Applies ruff's safe fixes and `ruff format` to the files that need them most."""

    name = "lint-fixer"
    kind = "lint-fix"
    criterion = "risk"

    # ------------------------------------------------------------ propose

    def _findings(self, context: RepoContext, root: Path) -> list[Finding]:
        if any("finding" in section for section in context.truncated):
            return ruff_findings(root)  # the context cut some: ask ruff for all of them
        return list(context.findings)

    def survey(self, context: RepoContext) -> list[_FileWork]:
        """Every file ruff could improve safely, best first."""
        root = Path(context.root)
        # The file list restricts formatting to tracked files, unless the budget cut it.
        known = set() if "file tree" in context.truncated else set(context.files)
        fixable: dict[str, Counter[str]] = {}
        for f in self._findings(context, root):
            if f.fixable and (root / f.path).is_file() and not is_junk(f.path):
                fixable.setdefault(f.path, Counter())[f.code] += 1
        drift = {
            path: n
            for path, n in format_drift(root).items()
            if (root / path).is_file() and not is_junk(path) and (not known or path in known)
        }
        work = [
            _FileWork(path=p, fixable=fixable.get(p, Counter()), format_lines=drift.get(p, 0))
            for p in sorted(set(fixable) | set(drift))
        ]
        work.sort(key=lambda w: (-w.score, w.path))
        return work

    def propose(self, context: RepoContext, goal: Goal) -> list[Proposal]:
        work = self.survey(context)[: max(1, context.max_files)]
        if not work:
            return []
        root = Path(context.root)
        paths = [w.path for w in work]
        fix_lines = fix_diff(root, [w.path for w in work if w.fixes])
        estimated = sum(fix_lines.get(w.path, 0) + w.format_lines for w in work)
        fixes = sum(w.fixes for w in work)
        to_format = sum(1 for w in work if w.format_lines)
        codes: Counter[str] = Counter()
        for w in work:
            codes.update(w.fixable)
        units = fixes + to_format
        benefit = round(min(0.9, 0.15 + 0.75 * (1 - math.exp(-units / 12))), 4)
        headline_parts = []
        if fixes:
            headline_parts.append(f"{fixes} safe ruff fix{'es' if fixes != 1 else ''}")
        if to_format:
            headline_parts.append(f"{to_format} file{'s' if to_format != 1 else ''} to format")
        headline = " and ".join(headline_parts)
        summary = f"{headline} across {len(paths)} file(s)" + (
            f" ({_code_summary(codes)})" if codes else ""
        )
        return [
            self.make_proposal(
                title=f"Apply ruff's safe fixes and formatting to {len(paths)} file(s)",
                description=(
                    f"Run `ruff check --fix` (safe fixes only, never --unsafe-fixes) and "
                    f"`ruff format` under the repository's own ruff configuration: {summary}. "
                    "Behaviour does not change; the diff is mechanical and easy to review."
                ),
                files=paths,
                evidence=[summary, *(w.evidence() for w in work)],
                benefit=benefit,
                risk=0.1,
                estimated_lines=estimated,
            )
        ]

    def plan_steps(self, proposal: Proposal) -> list[str]:
        files = " ".join(proposal.files)
        return [
            f"record ruff's findings for {files}",
            f"python -m ruff check --fix --no-cache --force-exclude {files} (safe fixes only)",
            f"python -m ruff format --no-cache --force-exclude {files}",
            "compare findings before and after; fail if no file changed",
        ]

    # ------------------------------------------------------------ implement

    def implement(self, design: Design, area: WorkArea) -> str:
        root = area.worktree
        files = []
        for raw in design.files:
            try:
                path = normalize(raw)
            except ValueError:
                continue
            if (root / path).is_file():
                files.append(path)
        if not files:
            raise ImplementationFailed(
                f"none of the design's files exist in the worktree: {design.files}"
            )
        before_text = {p: (root / p).read_bytes() for p in files}
        before = ruff_findings(root, files)
        drift_before = format_drift(root, files)
        fix = run_command(
            _ruff("check", "--fix", "--no-cache", "--force-exclude", "--exit-zero", *files),
            root,
            RUFF_TIMEOUT_S,
            area.scratch,
        )
        fmt = run_command(
            _ruff("format", "--no-cache", "--force-exclude", *files),
            root,
            RUFF_TIMEOUT_S,
            area.scratch,
        )
        changed = [p for p in files if (root / p).read_bytes() != before_text[p]]
        if not changed:
            problems = "; ".join(
                f"{name} exit {r.exit_code}: {r.stderr.strip()[:300]}"
                for name, r in (("ruff check --fix", fix), ("ruff format", fmt))
                if not r.ok and r.stderr.strip()
            )
            raise ImplementationFailed(
                f"ruff changed nothing in {', '.join(files)}"
                + (f" ({problems})" if problems else "")
            )
        after = ruff_findings(root, files)
        drift_after = format_drift(root, files)
        formatted = [p for p in drift_before if p not in drift_after]
        fixed = Counter(f.code for f in before) - Counter(f.code for f in after)
        fixed_note = f" (fixed {_code_summary(fixed)})" if fixed else ""
        unformatted = f", {len(drift_after)} still unformatted" if drift_after else ""
        return (
            f"ruff findings {len(before)} -> {len(after)}{fixed_note}; "
            f"formatted {len(formatted)} file(s){unformatted}; "
            f"changed {len(changed)} of {len(files)} file(s): " + ", ".join(changed)
        )
