"""The meta-planner: which goals the next cycles should work on, ranked.

Scan mode (this module, no LLM): for each target it reads signals from a worktree of the
target's base branch (never the user's working tree: `workspace.open_workspace` adds one
under the state folder and `close_workspace` removes it), with the context phase's own
functions:

- ruff findings (developer track; `S` rules: security track),
- coverage gaps: public functions and methods whose names no test file mentions (qa),
- failing and flaky tests, from the cycle store's baseline runs of this target (qa),
- TODO / FIXME / XXX / HACK markers (developer),
- churn: files changed often recently weigh more.

Signals are grouped into one goal per (target, kind of improvement); a goal's score is
the churn-weighted sum of its signals, times how well that kind has fared before
(`learning.pattern_factor`: a kind that keeps failing is ranked down), times its fit to
the stated objective. Agents that keep failing are left out of a goal's panel. With an
objective, goals that share too few of its words (a Jaccard-like containment of the
objective's significant tokens, threshold 0.2) are dropped, and when none is left the
planner falls back to one goal "[track] <objective>".

Debate mode (`mode="debate"`, `planner_agents=[...]`): the scan's candidates (at most
`MAX_BALLOT`, best first) and a summary of the learning tables go to every planner agent
that implements `goal_planning.GoalPlanner` (the LLM agents; offline tools are skipped).
Each may propose goals of its own (`plan`); every proposed goal passes the same
`fidelity` filter as the scan's (off-objective ones are dropped and recorded in
`Priorities.dropped`). Then every agent votes with a confidence on the merged ballot
(`vote_goals`), and a goal's score becomes

    (VOTE_WEIGHT * support + (1 - VOTE_WEIGHT) * scan share) * min(1, pattern factor)

where support is the mean confidence over the agents that voted (an agent that did not
vote for a goal gives it 0) and scan share is the goal's scan score over the best scan
score (a goal refining a candidate, `based_on`, inherits the candidate's). Calls are
priced against one planner budget (`budget_usd`) and go through the agents' circuit
breakers. Whenever the debate cannot rank (no planner agent, missing keys, an open
breaker, server errors, garbage, the budget), the plan is the scan's, with the reason in
`Priorities.fallback_reason`; the planner never fails because of a model.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field

from nomic_dagster.agents import build_agent, panel_names
from nomic_dagster.core.errors import AgentFault, BadInput, BudgetExhausted, CycleEnded
from nomic_dagster.core.goals import CandidateGoal, GoalPlanner, GoalProposal, GoalVote
from nomic_dagster.core.records import Outcome, Phase, Record, Track, utcnow
from nomic_dagster.core.settings import CycleSettings, state_dir
from nomic_dagster.infra.breakers import BreakerRegistry, call_agent
from nomic_dagster.infra.git import close_workspace, git, is_url, open_workspace
from nomic_dagster.infra.pricing import Budget
from nomic_dagster.phases.context import recent_churn, scan_markers, scan_modules
from nomic_dagster.planning.cycle_store import CycleStore, NomicCycleRecord
from nomic_dagster.planning.learning import ALL_TRACKS, pattern_factor
from nomic_dagster.sandbox.commands import ruff_findings

log = logging.getLogger("nomic_dagster.planning.meta_planner")

Impact = Literal["high", "medium", "low"]
PlannerMode = Literal["scan", "debate"]
SignalSource = Literal["ruff", "coverage", "failing-test", "flaky-test", "marker"]
FIDELITY_THRESHOLD = 0.2
MAX_FILE_HINTS = 5
SKIP_MODULES = {"setup.py", "conftest.py", "noxfile.py", "__main__.py"}
MAX_BALLOT = 8  # scan candidates shown to the planner agents
VOTE_WEIGHT = 0.6  # share of the agents' support in a debate-mode score


class KindInfo(Record):
    track: Track
    template: str  # "{files}" is replaced by the file hints
    words: tuple[str, ...]  # words the kind answers to (objective fidelity)


KINDS: dict[str, KindInfo] = {
    "lint-fix": KindInfo(
        track=Track.DEVELOPER,
        template="Fix the lint findings in {files}",
        words=("lint", "ruff", "style", "format", "clean", "tidy", "quality", "warning"),
    ),
    "security-fix": KindInfo(
        track=Track.SECURITY,
        template="Fix the security findings in {files}",
        words=("security", "secure", "vulnerability", "bandit", "safety", "harden"),
    ),
    "add-tests": KindInfo(
        track=Track.QA,
        template="Add tests for the untested public functions in {files}",
        words=("test", "coverage", "untested", "qa", "regression", "verify", "quality"),
    ),
    "fix-tests": KindInfo(
        track=Track.QA,
        template="Fix the failing tests in {files}",
        words=("test", "failing", "broken", "red", "fix", "qa", "regression"),
    ),
    "stabilize-tests": KindInfo(
        track=Track.QA,
        template="Stabilize the flaky tests in {files}",
        words=("test", "flaky", "flake", "unstable", "intermittent", "qa"),
    ),
    "resolve-markers": KindInfo(
        track=Track.DEVELOPER,
        template="Resolve the TODO and FIXME markers in {files}",
        words=("todo", "fixme", "hack", "debt", "cleanup", "clean", "marker"),
    ),
}

TRACK_WORDS: dict[Track, tuple[str, ...]] = {
    Track.SECURITY: ("security", "secure", "vulnerab", "auth", "secret", "harden", "cve"),
    Track.QA: ("test", "coverage", "qa", "flaky", "regression"),
    Track.SME: ("sme", "business", "dashboard", "customer", "small"),
    Track.SELF_HOSTED: ("self-hosted", "self_hosted", "deploy", "docker", "install"),
    Track.CORE: ("core", "engine", "architecture", "performance", "refactor"),
    Track.DEVELOPER: ("lint", "developer", "api", "docs", "cleanup", "todo"),
}

STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        """the and for with from into this that these those its are was were our your all any
        some more most less make made improve improved improving better code repository repo
        module modules file files please should would could need needs about over under""",
    )
)


# ---------------------------------------------------------------- records


class Signal(Record):
    source: SignalSource
    kind: str  # the improvement it calls for, a key of KINDS
    path: str
    detail: str
    weight: float = Field(ge=0.0)

    @property
    def track(self) -> Track:
        return KINDS[self.kind].track


class PlanTarget(Record):
    """A repository to plan for: `origin` is what a cycle's run config names (a path, a URL,
    or "demo"); `scan` is the local repository read for signals (default: `origin`)."""

    origin: str
    scan: str | None = None
    base_branch: str | None = None


class TargetScan(Record):
    target: PlanTarget
    base_sha: str = ""
    files: int = 0
    signals: list[Signal] = Field(default_factory=list)
    churn: dict[str, int] = Field(default_factory=dict)
    error: str = ""


class PrioritizedGoal(Record):
    """One ranked goal (the seed's `PrioritizedGoal`); JSON-serializable."""

    id: str
    priority: int = Field(ge=1)  # 1 = highest
    track: Track
    goal: str
    kind: str
    rationale: str
    expected_impact: Impact
    score: float = Field(ge=0.0)
    signals: int = Field(ge=0)
    focus_areas: list[str] = Field(default_factory=list)
    file_hints: list[str] = Field(default_factory=list)
    repo: str | None = None  # for the run config; None: $NOMIC_REPO, else the demo
    base_branch: str | None = None
    base_sha: str | None = None
    agents: list[str] = Field(default_factory=list)  # the panel; empty: the default panel
    source: Literal["planner", "user"] = "planner"
    objective_fidelity: float | None = None
    requested_at: datetime | None = None  # user goals: each request is launched once
    proposed_by: str = ""  # debate mode: the agent that proposed it ("" : the scan)
    support: float | None = None  # debate mode: mean vote confidence, 0..1

    @property
    def run_key(self) -> str:
        """Stable for the same goal on the same target at the same base commit, so the
        sensor launches it once."""
        raw = "|".join([self.track.value, self.repo or "demo", self.goal, self.base_sha or ""])
        if self.requested_at is not None:
            raw += "|" + self.requested_at.isoformat()
        return "goal-" + hashlib.sha256(raw.encode()).hexdigest()[:16]

    @property
    def cycle_id(self) -> str:
        return "p" + self.run_key.removeprefix("goal-")[:11]


class DroppedGoal(Record):
    """An agent's goal the planner did not put on the ballot, and why."""

    agent: str
    goal: str
    reason: str
    objective_fidelity: float | None = None


class Priorities(Record):
    """What `meta_planner_priorities` holds: the ranked goals and where they came from.

    `mode` is how the goals were ranked; `requested_mode` what was configured. A debate
    that could not rank leaves `mode` "scan" and says why in `fallback_reason`."""

    generated_at: datetime = Field(default_factory=utcnow)
    mode: PlannerMode = "scan"
    requested_mode: PlannerMode = "scan"
    fallback_reason: str = ""
    planner_agents: list[str] = Field(default_factory=list)  # the agents that took part
    agent_failures: dict[str, str] = Field(default_factory=dict)
    votes: list[GoalVote] = Field(default_factory=list)
    dropped: list[DroppedGoal] = Field(default_factory=list)
    llm_calls: int = 0
    cost_usd: float = Field(default=0.0, ge=0.0)
    objective: str = ""
    targets: list[str] = Field(default_factory=list)
    signals_total: int = 0
    signals_by_source: dict[str, int] = Field(default_factory=dict)
    goals: list[PrioritizedGoal] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------- objective fidelity


def significant_tokens(text: str) -> set[str]:
    words = re.findall(r"[a-z][a-z0-9]+", text.lower().replace("_", " "))
    return {_stem(w) for w in words if len(w) > 2 and w not in STOPWORDS}


def _stem(word: str) -> str:
    for suffix in ("ing", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def fidelity(objective: str, goal_text: str, kind: str | None = None) -> float:
    """Share of the objective's significant tokens that the goal (its text, its kind's
    words and its track) also carries: 1.0 = fully on the objective."""
    wanted = significant_tokens(objective)
    if not wanted:
        return 1.0
    extra = " ".join(KINDS[kind].words) + " " + KINDS[kind].track.value if kind in KINDS else ""
    have = significant_tokens(goal_text + " " + extra)
    return round(len(wanted & have) / len(wanted), 4)


def infer_track(text: str, allowed: Sequence[Track]) -> Track:
    """The allowed track whose words the text uses most (ties: the order of `allowed`)."""
    low = text.lower()
    best = max(allowed, key=lambda t: sum(1 for w in TRACK_WORDS.get(t, ()) if w in low))
    if any(w in low for w in TRACK_WORDS.get(best, ())):
        return best
    return Track.DEVELOPER if Track.DEVELOPER in allowed else allowed[0]


# ---------------------------------------------------------------- signals


def _test_words(root: Path, test_paths: Iterable[str]) -> set[str]:
    words: set[str] = set()
    for rel in test_paths:
        try:
            words |= set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", (root / rel).read_text("utf-8")))
        except OSError:
            continue
    return words


def scan_signals(root: Path, base_sha: str) -> tuple[list[Signal], dict[str, int], int]:
    """(signals, churn by file, number of tracked files) for a checkout at `root`."""
    files = sorted(f for f in git(root, "ls-files", "-z").split("\0") if f)
    modules, _ = scan_modules(root, files)
    signals: list[Signal] = []
    for f in ruff_findings(root)[:500]:
        security = f.code.startswith("S") and f.code[1:2].isdigit()
        signals.append(
            Signal(
                source="ruff",
                kind="security-fix" if security else "lint-fix",
                path=f.path,
                detail=f"{f.code} line {f.line}: {f.message}"[:200],
                weight=1.0 if f.fixable or security else 0.5,
            )
        )
    tests = [m.path for m in modules if m.is_test]
    mentioned = _test_words(root, tests)
    for m in modules:
        name = Path(m.path).name
        if m.is_test or name in SKIP_MODULES or not m.module:
            continue
        if any(part.startswith("_") and part != "__init__" for part in m.module.split(".")):
            continue
        for s in m.symbols:
            if not s.public or s.kind == "class":
                continue
            leaf = s.name.rsplit(".", 1)[-1]
            if leaf.startswith("_") or leaf in mentioned:
                continue
            signals.append(
                Signal(
                    source="coverage",
                    kind="add-tests",
                    path=m.path,
                    detail=f"no test names {s.name} (line {s.line})",
                    weight=1.0,
                )
            )
    for marker in scan_markers(root, files):
        if not marker.path.endswith(".py"):
            continue
        signals.append(
            Signal(
                source="marker",
                kind="resolve-markers",
                path=marker.path,
                detail=f"{marker.kind} line {marker.line}: {marker.text}"[:200],
                weight=0.5 if marker.kind == "TODO" else 1.0,
            )
        )
    churn = {c.path: c.commits for c in recent_churn(root, base_sha, top=50)}
    return signals, churn, len(files)


def test_signals(records: Sequence[NomicCycleRecord]) -> list[Signal]:
    """Failing and flaky tests of one target from its cycles (`records` newest first).

    failing: failed in the newest baseline run; flaky: failed in an earlier baseline run
    and a later cycle of the same target had a green baseline.
    """
    ran = [
        r
        for r in records
        if Phase.CONTEXT in r.phases_completed or r.outcome is Outcome.BASELINE_RED
    ]
    if not ran:
        return []
    signals: list[Signal] = []
    latest = set(ran[0].baseline_failing_tests)
    for test in sorted(latest):
        signals.append(
            Signal(
                source="failing-test",
                kind="fix-tests",
                path=test.split("::", 1)[0],
                detail=f"{test} failed before any change in cycle {ran[0].cycle_id}",
                weight=3.0,
            )
        )
    flaky: Counter[str] = Counter()
    for i, r in enumerate(ran):
        later_green = any(x.outcome is not Outcome.BASELINE_RED for x in ran[:i])
        if later_green:
            flaky.update(t for t in r.baseline_failing_tests if t not in latest)
    for test, times in sorted(flaky.items()):
        signals.append(
            Signal(
                source="flaky-test",
                kind="stabilize-tests",
                path=test.split("::", 1)[0],
                detail=f"{test} failed {times} time(s) before a change, then passed",
                weight=2.0,
            )
        )
    return signals


# ---------------------------------------------------------------- the planner


def plan_targets(
    store: CycleStore, repo: str = "", base_branch: str = "", max_targets: int = 3
) -> list[PlanTarget]:
    """The configured repository, else the targets of the most recent cycles, else the demo."""
    branch = base_branch or None
    if repo.strip():
        return [PlanTarget(origin=repo.strip(), base_branch=branch)]
    targets: dict[str, PlanTarget] = {}
    for r in store.recent(100):
        if r.origin in targets:
            continue
        scan = r.repo if r.origin == "demo" and r.repo and Path(r.repo).is_dir() else None
        if r.origin != "demo" and not is_url(r.origin) and not Path(r.origin).is_dir():
            continue  # a path that is gone
        targets[r.origin] = PlanTarget(origin=r.origin, scan=scan, base_branch=branch)
        if len(targets) >= max_targets:
            break
    return list(targets.values()) or [PlanTarget(origin="demo", base_branch=branch)]


def agent_names(specs: Sequence[str]) -> dict[str, str]:
    """spec -> the agent's name (what proposals and the learning tables call it)."""
    names = {}
    for spec in specs:
        try:
            names[spec] = build_agent(spec).name
        except Exception:  # an LLM agent without its key: its spec is the best name we have
            names[spec] = spec.rsplit(":", 1)[-1]
    return names


class MetaPlanner:
    """Scan-mode planner; see the module docstring. `agent_performance` and `patterns` are
    the learning tables (`learning.agent_performance_table`, `learning.pattern_table`)."""

    def __init__(
        self,
        store: CycleStore,
        *,
        objective: str = "",
        tracks: Sequence[Track | str] | None = None,
        agents: Sequence[str] = (),
        max_goals: int = 5,
        agent_performance: pd.DataFrame | None = None,
        patterns: pd.DataFrame | None = None,
        root: Path | str | None = None,
        fidelity_threshold: float = FIDELITY_THRESHOLD,
        mode: PlannerMode = "scan",
        planner_agents: Sequence[str | GoalPlanner] = (),
        budget_usd: float | None = None,
        breakers: BreakerRegistry | None = None,
    ) -> None:
        """`planner_agents`: agent names or import paths (built with the planner's own
        budget of `budget_usd`, None or <= 0: unlimited) or agent objects (debate mode);
        each is called through its breaker in `breakers` (else the planner's own)."""
        if mode not in ("scan", "debate"):
            raise BadInput(f"planner mode {mode!r} is unknown", "use mode 'scan' or 'debate'")
        self.store = store
        self.objective = objective.strip()
        self.tracks = [Track(t) for t in tracks] if tracks else list(Track)
        self.agents = panel_names(agents)  # empty: $NOMIC_AGENTS, else the offline agents
        self.max_goals = max_goals
        self.performance = agent_performance
        self.patterns = patterns
        self.root = Path(root) if root else None
        self.fidelity_threshold = fidelity_threshold
        self.mode: PlannerMode = mode
        self.planner_agents = list(planner_agents)
        self.budget = Budget(budget_usd if budget_usd is not None and budget_usd > 0 else None)
        self.breakers = breakers if breakers is not None else BreakerRegistry()
        self._names: dict[str, str] | None = None

    # ------------------------------------------------------------ scanning

    def scan(self, target: PlanTarget) -> TargetScan:
        """Signals of one target, read from a fresh worktree of its base branch."""
        settings = CycleSettings(
            repo=target.scan or (None if target.origin == "demo" else target.origin),
            base_branch=target.base_branch,
            state_dir=str(self.root) if self.root else None,
        )
        scan_id = f"plan-{uuid.uuid4().hex[:8]}"
        ws = None
        try:
            ws = open_workspace(settings, scan_id)
            signals, churn, files = scan_signals(Path(ws.worktree), ws.base_sha)
            base_sha = ws.base_sha
        except Exception as exc:
            log.warning("planner: cannot scan %s: %s", target.origin, exc)
            return TargetScan(target=target, error=f"{type(exc).__name__}: {exc}"[:500])
        finally:
            if ws is not None:
                close_workspace(ws)
            if settings.repo is None:  # the planner's own demo copy
                shutil.rmtree(state_dir(settings) / "demo" / scan_id, ignore_errors=True)
        signals += test_signals(self.store.recent(20, origin=target.origin))
        return TargetScan(
            target=target, base_sha=base_sha, files=files, signals=signals, churn=churn
        )

    # ------------------------------------------------------------ learning

    def panel_for(self, track: Track) -> tuple[list[str], list[str]]:
        """(the panel for a goal on `track`, notes on the agents left out): an agent that
        failed in at least two cycles and in half of its cycles (on this track when it has
        a row for it, else overall) is left out; the panel never goes empty."""
        if self.performance is None or self.performance.empty:
            return list(self.agents), []
        if self._names is None:
            self._names = agent_names(self.agents)
        names = self._names
        table = self.performance
        kept, notes, ratings = [], [], {}
        for spec in self.agents:
            name = names[spec]
            rows = table[(table["agent"] == name) & (table["track"] == track.value)]
            if rows.empty:
                rows = table[(table["agent"] == name) & (table["track"] == ALL_TRACKS)]
            if rows.empty:
                kept.append(spec)
                continue
            row = rows.iloc[0]
            ratings[spec] = float(row["rating"])
            if int(row["failed_cycles"]) >= 2 and float(row["failure_rate"]) >= 0.5:
                notes.append(
                    f"left {name} out: it failed in {int(row['failed_cycles'])} of "
                    f"{int(row['cycles'])} cycles (rating {float(row['rating']):.0f})"
                )
            else:
                kept.append(spec)
        if not kept:
            best = max(self.agents, key=lambda s: ratings.get(s, 0.0))
            kept = [best]
            notes.append(f"kept {names[best]} only: every agent keeps failing")
        return kept, notes

    def kind_history(self, kind: str) -> str:
        if self.patterns is None or self.patterns.empty or kind not in set(self.patterns["kind"]):
            return f"{kind} not tried yet"
        row = self.patterns[self.patterns["kind"] == kind].iloc[0]
        return (
            f"{kind} landed {int(row['successes'])} of {int(row['attempts'])} tries "
            f"(95% CI {float(row['ci_low']):.2f}-{float(row['ci_high']):.2f})"
        )

    # ------------------------------------------------------------ ranking

    def goals_for(self, scan: TargetScan) -> list[PrioritizedGoal]:
        grouped: dict[str, list[Signal]] = defaultdict(list)
        for s in scan.signals:
            if s.track in self.tracks:
                grouped[s.kind].append(s)
        goals = []
        repo = None if scan.target.origin == "demo" else scan.target.origin
        for kind, signals in grouped.items():
            by_file: dict[str, float] = defaultdict(float)
            for s in signals:
                churn = scan.churn.get(s.path, 0)
                by_file[s.path] += s.weight * (1.0 + 0.5 * min(1.0, churn / 10.0))
            ranked_files = sorted(by_file.items(), key=lambda kv: (-kv[1], kv[0]))
            hints = [path for path, _ in ranked_files[:MAX_FILE_HINTS]]
            factor = pattern_factor(self.patterns, kind)
            raw = sum(by_file.values())
            info = KINDS[kind]
            text = info.template.format(files=", ".join(hints))
            fit = fidelity(self.objective, text, kind) if self.objective else None
            score = raw * factor * (0.5 + fit if fit is not None else 1.0)
            if self.objective:
                text = f"{text} (objective: {self.objective})"
            panel, panel_notes = self.panel_for(info.track)
            sources = Counter(s.source for s in signals)
            top = ", ".join(f"{p} {w:.1f}" for p, w in ranked_files[:3])
            rationale = "; ".join(
                [
                    f"{len(signals)} signal(s) ({', '.join(f'{n} {k}' for k, n in sorted(sources.items()))}) "
                    f"in {len(by_file)} file(s), weighted by churn: {top}",
                    f"{self.kind_history(kind)}: factor {factor:.2f}",
                    *([f"objective fit {fit:.2f}"] if fit is not None else []),
                    *panel_notes,
                ]
            )
            goals.append(
                PrioritizedGoal(
                    id="",
                    priority=1,
                    track=info.track,
                    goal=text,
                    kind=kind,
                    rationale=rationale,
                    expected_impact="high" if raw >= 10 else "medium" if raw >= 3 else "low",
                    score=round(score, 4),
                    signals=len(signals),
                    focus_areas=_focus_areas(hints, signals),
                    file_hints=hints,
                    repo=repo,
                    base_branch=scan.target.base_branch,
                    base_sha=scan.base_sha or None,
                    agents=panel,
                    objective_fidelity=fit,
                )
            )
        return goals

    def prioritize(
        self,
        targets: Sequence[PlanTarget],
        user_goals: Sequence[str] = (),
        user_track: Track | str | None = None,
    ) -> Priorities:
        """Scan every target and rank the goals (user goals first, as asked)."""
        scans = [self.scan(t) for t in targets]
        notes = [f"could not scan {s.target.origin}: {s.error}" for s in scans if s.error]
        candidates = [g for s in scans for g in self.goals_for(s)]
        if self.objective:
            on = [g for g in candidates if (g.objective_fidelity or 0.0) >= self.fidelity_threshold]
            if len(on) < len(candidates):
                notes.append(
                    f"dropped {len(candidates) - len(on)} goal(s) off the objective "
                    f"(fit < {self.fidelity_threshold})"
                )
            candidates = on
            if not candidates:
                candidates = [self._fallback(scans[0] if scans else None)]
        candidates.sort(key=lambda g: (-g.score, g.track.value, g.goal))
        debate = Debate(requested=self.mode)
        if self.mode == "debate":
            debate = self.debate(candidates[:MAX_BALLOT], scans)
            if debate.ranked is not None:
                candidates = debate.ranked
            else:
                notes.append(f"debate mode fell back to the scan: {debate.fallback_reason}")
            notes += [f"planner agent {a}: {e}" for a, e in debate.failures.items()]
            notes += [f"dropped {d.agent}'s goal {d.goal!r}: {d.reason}" for d in debate.dropped]
        candidates = candidates[: self.max_goals]
        first = scans[0] if scans else None
        users = [self._user_goal(text, user_track, first) for text in user_goals if text.strip()]
        ranked = []
        for i, g in enumerate([*users, *candidates], start=1):
            g = g.model_copy(update={"priority": i})
            ranked.append(g.model_copy(update={"id": g.run_key.removeprefix("goal-")}))
        signals = [s for scan in scans for s in scan.signals]
        return Priorities(
            objective=self.objective,
            targets=[s.target.origin for s in scans],
            signals_total=len(signals),
            signals_by_source=dict(sorted(Counter(s.source for s in signals).items())),
            goals=ranked,
            notes=notes,
            mode="debate" if debate.ranked is not None else "scan",
            requested_mode=self.mode,
            fallback_reason=debate.fallback_reason,
            planner_agents=debate.agents,
            agent_failures=debate.failures,
            votes=debate.votes,
            dropped=debate.dropped,
            llm_calls=debate.calls,
            cost_usd=round(debate.cost_usd, 8),
        )

    # ------------------------------------------------------------ debate mode

    def planning_context(self, scans: Sequence[TargetScan]) -> str:
        """What the planner agents read besides the ballot: the signals and the learning
        tables (how each kind of improvement and each agent has fared)."""
        lines = ["# Signals"]
        for scan in scans:
            sources = Counter(s.source for s in scan.signals)
            lines.append(
                f"- {scan.target.origin} at {scan.base_sha[:12] or '?'}: {scan.files} files; "
                + (", ".join(f"{n} {k}" for k, n in sorted(sources.items())) or "no signals")
                + (f"; scan failed: {scan.error}" if scan.error else "")
            )
        lines.append("\n# Kinds of improvement tried before (pattern reinforcements)")
        if self.patterns is None or self.patterns.empty:
            lines.append("(no cycles yet)")
        else:
            for row in self.patterns.head(20).itertuples(False):
                lines.append(
                    f"- {row.kind}: landed {int(row.successes)} of {int(row.attempts)} "
                    f"(success rate {float(row.success_rate):.2f})"
                )
        lines.append("\n# Agents (agent performance, all tracks)")
        table = self.performance
        if table is None or table.empty:
            lines.append("(no cycles yet)")
        else:
            for row in table[table["track"] == ALL_TRACKS].head(20).itertuples(False):
                lines.append(
                    f"- {row.agent}: {int(row.cycles)} cycles, {int(row.commits)} commits, "
                    f"{int(row.failed_cycles)} failed, rating {float(row.rating):.0f}"
                )
        return "\n".join(lines)

    def _planner_panel(self, failures: dict[str, str]) -> list[GoalPlanner]:
        panel: list[GoalPlanner] = []
        for spec in self.planner_agents:
            label = spec if isinstance(spec, str) else getattr(spec, "name", repr(spec))
            try:
                agent = build_agent(spec, self.budget) if isinstance(spec, str) else spec
            except Exception as exc:  # a missing key, an unpriced model: fall back, not crash
                failures[label] = f"cannot be built: {exc}"[:500]
                continue
            if isinstance(agent, GoalPlanner):
                panel.append(agent)
            else:
                failures[label] = "has no plan/vote_goals step (an offline tool): skipped"
        return panel

    def debate(self, ranked: Sequence[PrioritizedGoal], scans: Sequence[TargetScan]) -> Debate:
        """Ask the planner agents for goals and votes; `Debate.ranked` is None when the
        debate cannot rank (the caller keeps the scan's ranking)."""
        out = Debate(requested="debate")
        panel = self._planner_panel(out.failures)
        out.agents = [a.name for a in panel]
        if not panel:
            out.fallback_reason = (
                "no planner agent could take part: "
                + "; ".join(f"{a} {e}" for a, e in out.failures.items())
                if out.failures
                else "no planner agents are configured (planner_agents)"
            )[:1000]
            return out
        usage_before = {a.name: len(getattr(a, "usage", [])) for a in panel}
        objective = self.objective
        ballot = [
            CandidateGoal(
                id=f"c{i}",
                track=g.track,
                kind=g.kind,
                goal=g.goal,
                rationale=g.rationale[:400],
                file_hints=g.file_hints,
                scan_score=g.score,
                source="scan",
            )
            for i, g in enumerate(ranked, start=1)
        ]
        goals: dict[str, PrioritizedGoal] = {c.id: g for c, g in zip(ballot, ranked, strict=True)}
        context = self.planning_context(scans)
        seen = {_norm(g.goal) for g in ranked}
        for agent in panel:
            proposals = self._ask_planner(
                agent, "plan", out, lambda a=agent: a.plan(ballot, objective, context)
            )
            for p in proposals or []:
                goal = self._agent_goal(p, goals, scans, out)
                if goal is None or _norm(goal.goal) in seen:
                    continue
                seen.add(_norm(goal.goal))
                cid = f"a{len(ballot) - len(ranked) + 1}"
                ballot.append(
                    CandidateGoal(
                        id=cid,
                        track=goal.track,
                        kind=goal.kind,
                        goal=goal.goal,
                        rationale=p.description[:400],
                        file_hints=goal.file_hints,
                        scan_score=goal.score,
                        source=f"agent:{p.agent}",
                    )
                )
                goals[cid] = goal
        voters = 0
        for agent in panel:
            votes = self._ask_planner(
                agent, "vote_goals", out, lambda a=agent: a.vote_goals(ballot, objective, context)
            )
            if votes is None:
                continue
            voters += 1
            valid = {c.id for c in ballot}
            out.votes += [
                v.model_copy(update={"voter": agent.name}) for v in votes if v.goal_id in valid
            ]
        for agent in panel:
            for call in list(getattr(agent, "usage", []))[usage_before[agent.name] :]:
                out.calls += 1
                out.cost_usd += call.usage.usd
        if voters == 0:
            out.fallback_reason = "no planner agent voted: " + (
                "; ".join(f"{a}: {e}" for a, e in out.failures.items()) or "no votes"
            )
            return out
        out.ranked = self._rank(goals, out.votes, voters)
        return out

    def _ask_planner(self, agent: GoalPlanner, step: str, out: Debate, fn: Any) -> Any:
        """One planner step through the agent's circuit breaker; a failure is recorded and
        the agent sits the step out; a refused budget ends every later call."""
        if out.budget_exhausted:
            out.failures.setdefault(agent.name, f"{step}: not asked, the planner budget is spent")
            return None
        try:
            return call_agent(self.breakers, agent.name, step, fn)
        except BudgetExhausted as exc:
            out.budget_exhausted = True
            out.failures.setdefault(agent.name, f"{step}: {exc}"[:500])
        except AgentFault as fault:  # an agent's failure must not fail the plan
            out.failures.setdefault(agent.name, f"{step}: {fault.detail}"[:500])
        except CycleEnded as exc:  # bad input (a missing key, ...): the scan plan stands
            out.failures.setdefault(agent.name, f"{step}: {type(exc).__name__}: {exc}"[:500])
        return None

    def _agent_goal(
        self,
        p: GoalProposal,
        ballot: dict[str, PrioritizedGoal],
        scans: Sequence[TargetScan],
        out: Debate,
    ) -> PrioritizedGoal | None:
        """An agent's proposal as a goal, or None (recorded in `out.dropped`)."""
        text = p.title.strip()
        fit = (
            fidelity(self.objective, f"{text} {p.description}", p.kind) if self.objective else None
        )
        if fit is not None and fit < self.fidelity_threshold:
            out.dropped.append(
                DroppedGoal(
                    agent=p.agent,
                    goal=text,
                    reason=f"off the objective (fit {fit:.2f} < {self.fidelity_threshold})",
                    objective_fidelity=fit,
                )
            )
            return None
        if p.track not in self.tracks:
            out.dropped.append(
                DroppedGoal(
                    agent=p.agent,
                    goal=text,
                    reason=f"track {p.track.value} is not one the planner may plan for",
                    objective_fidelity=fit,
                )
            )
            return None
        track = p.track
        base = ballot.get(p.based_on)
        scan = scans[0] if scans else None
        panel, panel_notes = self.panel_for(track)
        if self.objective:
            text = f"{text} (objective: {self.objective})"
        repo = (
            base.repo
            if base
            else (None if scan is None or scan.target.origin == "demo" else scan.target.origin)
        )
        return PrioritizedGoal(
            id="",
            priority=1,
            track=track,
            goal=text,
            kind=p.kind,
            rationale="; ".join(
                [
                    f"proposed by {p.agent}: {p.description}"[:600],
                    *([f"refines {p.based_on}"] if base else []),
                    f"{self.kind_history(p.kind)}",
                    *([f"objective fit {fit:.2f}"] if fit is not None else []),
                    *panel_notes,
                ]
            ),
            expected_impact=p.expected_impact,
            score=base.score if base else 0.0,
            signals=base.signals if base else 0,
            focus_areas=_focus_areas(p.file_hints[:MAX_FILE_HINTS], []),
            file_hints=p.file_hints[:MAX_FILE_HINTS],
            repo=repo,
            base_branch=base.base_branch if base else (scan.target.base_branch if scan else None),
            base_sha=base.base_sha if base else ((scan.base_sha or None) if scan else None),
            agents=panel,
            objective_fidelity=fit,
            proposed_by=p.agent,
        )

    def _rank(
        self, goals: dict[str, PrioritizedGoal], votes: Sequence[GoalVote], voters: int
    ) -> list[PrioritizedGoal]:
        best_scan = max((g.score for g in goals.values()), default=0.0)
        ranked = []
        for cid, g in goals.items():
            mine = [v for v in votes if v.goal_id == cid]
            support = sum(v.confidence for v in mine) / voters
            share = g.score / best_scan if best_scan > 0 else 0.0
            factor = min(1.0, pattern_factor(self.patterns, g.kind))
            score = (VOTE_WEIGHT * support + (1 - VOTE_WEIGHT) * share) * factor
            tally = ", ".join(f"{v.voter} {v.confidence:.2f}" for v in mine) or "no votes"
            ranked.append(
                g.model_copy(
                    update={
                        "score": round(score, 4),
                        "support": round(support, 4),
                        "rationale": f"{g.rationale}; votes: {tally} (support {support:.2f}, "
                        f"scan share {share:.2f}, kind factor {factor:.2f})",
                    }
                )
            )
        ranked.sort(key=lambda g: (-g.score, -(g.support or 0.0), g.track.value, g.goal))
        return ranked

    def _fallback(self, scan: TargetScan | None) -> PrioritizedGoal:
        track = infer_track(self.objective, self.tracks)
        panel, notes = self.panel_for(track)
        return PrioritizedGoal(
            id="",
            priority=1,
            track=track,
            goal=f"[{track.value}] {self.objective}",
            kind="objective",
            rationale="; ".join(
                ["no scanned signal matches the objective: the objective itself", *notes]
            ),
            expected_impact="medium",
            score=1.0,
            signals=0,
            repo=None if scan is None or scan.target.origin == "demo" else scan.target.origin,
            base_branch=scan.target.base_branch if scan else None,
            base_sha=(scan.base_sha or None) if scan else None,
            agents=panel,
            objective_fidelity=1.0,
        )

    def _user_goal(
        self, text: str, track: Track | str | None, scan: TargetScan | None
    ) -> PrioritizedGoal:
        chosen = Track(track) if track else infer_track(text, self.tracks)
        panel, notes = self.panel_for(chosen)
        return PrioritizedGoal(
            id="",
            priority=1,
            track=chosen,
            goal=text.strip(),
            kind="user",
            rationale="; ".join(["asked for by a person", *notes]),
            expected_impact="high",
            score=0.0,  # ranked first because a person asked, not by score
            signals=0,
            repo=None if scan is None or scan.target.origin == "demo" else scan.target.origin,
            base_branch=scan.target.base_branch if scan else None,
            base_sha=(scan.base_sha or None) if scan else None,
            agents=panel,
            source="user",
            requested_at=utcnow(),
        )


class Debate(Record):
    """What one debate-mode plan did (internal; its parts go into `Priorities`)."""

    requested: PlannerMode = "scan"
    agents: list[str] = Field(default_factory=list)
    ranked: list[PrioritizedGoal] | None = None
    fallback_reason: str = ""
    failures: dict[str, str] = Field(default_factory=dict)
    votes: list[GoalVote] = Field(default_factory=list)
    dropped: list[DroppedGoal] = Field(default_factory=list)
    calls: int = 0
    cost_usd: float = 0.0
    budget_exhausted: bool = False


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _focus_areas(files: Sequence[str], signals: Sequence[Signal]) -> list[str]:
    areas = []
    for path in files:
        parent = str(Path(path).parent)
        area = "(root)" if parent == "." else parent + "/"
        if area not in areas:
            areas.append(area)
    codes = Counter(s.detail.split(" ", 1)[0] for s in signals if s.source == "ruff" and s.detail)
    areas += [code for code, _ in codes.most_common(3)]
    return areas


def run_config_for(goal: PrioritizedGoal, test_command: str = "") -> dict[str, Any]:
    """The `nomic_cycle_<track>` run config that works on `goal`."""
    config: dict[str, Any] = {"goal": goal.goal, "track": goal.track.value}
    if goal.repo:
        config["repo"] = goal.repo
    if goal.base_branch:
        config["base_branch"] = goal.base_branch
    if goal.agents:
        config["agents"] = list(goal.agents)
    if test_command:
        config["test_command"] = test_command
    return {"ops": {"context_op": {"config": config}}}
