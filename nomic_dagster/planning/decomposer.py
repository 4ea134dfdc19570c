"""TaskDecomposer: split a goal into ordered subtasks with a deterministic heuristic.

The complexity score (1-10) follows the reference heuristic: files mentioned, high/medium
keywords, length, concept words, clauses, and the vagueness and abstract bonuses. Two
deliberate differences from the original:

- a goal that is actionable but too small to split becomes exactly one subtask (the goal
  itself), never zero subtasks reported as success;
- concepts are visited in the fixed order of `CONCEPTS`, never in set order, so the same goal
  always gives the same subtasks in the same order, whatever PYTHONHASHSEED is.

The abstract bonus is capped at `ABSTRACT_BONUS_CAP` (5.0). Vague-goal expansion into
deliberation templates is not implemented: a vague goal below the threshold is one subtask.

`TaskDecomposer(use_debate=True)` decomposes through the configured agents' offline scan
of the target (see the class docstring): `scan_settings`, else the current repository.
`await decomposer.decompose(goal)` is the seed's asynchronous form of `analyze`. No Dagster
imports.
"""

from __future__ import annotations

import asyncio
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nomic_dagster.agents import build_panel
from nomic_dagster.core.records import Goal, Proposal, new_cycle_id
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.infra.git import choose_target, close_workspace, open_workspace
from nomic_dagster.phases.context import gather_context

Level = Literal["low", "medium", "high"]

FILE_RE = re.compile(r"[\w./-]*\w\.(?:py|tsx|ts|jsx|js|md)\b")
PATH_RE = re.compile(r"(?:^|[\s(\"'`])(?:aragora|tests|sdk|scripts|src)/")
WORD_RE = re.compile(r"[a-z0-9_]+")

HIGH_KEYWORDS: tuple[str, ...] = (
    "refactor", "migrate", "redesign", "overhaul", "rewrite", "architectural",
    "system-wide", "cross-cutting", "harden", "consolidate",
)  # fmt: skip
MEDIUM_KEYWORDS: tuple[str, ...] = (
    "integrate", "implement", "add", "create", "build", "enhance", "extend", "improve",
    "optimize", "adapter", "comprehensive", "coverage", "module", "pipeline",
)  # fmt: skip
# The 35 concept words, in the order subtasks are made from them.
CONCEPTS: tuple[str, ...] = (
    "database", "api", "frontend", "backend", "test", "tests", "testing", "integration",
    "security", "performance", "documentation", "configuration", "deployment",
    "authentication", "compliance", "templates", "agents", "workflow", "connectors",
    "storage", "memory", "debate", "analytics", "vertical", "audit", "cli", "sdk",
    "orchestrator", "pipeline", "validation", "gauntlet", "handler", "server",
    "resilience", "observability",
)  # fmt: skip
# test/tests/testing name one concept: they make one subtask.
CONCEPT_ALIASES: dict[str, str] = {"tests": "test", "testing": "test"}
HIGH_CONCEPTS = frozenset({"database", "security", "architecture", "migration"})
MEDIUM_CONCEPTS = frozenset({"api", "backend", "frontend", "performance"})

STRATEGIC_TERMS: tuple[str, ...] = (
    "maximize", "improve", "utility", "business", "customer", "user", "value", "impact",
    "roi", "growth", "experience", "benefit",
)  # fmt: skip
STRATEGIC_VERBS: tuple[str, ...] = ("maximize", "improve", "enhance", "optimize", "strengthen")
ABSTRACT_ACTIONS: tuple[str, ...] = (
    "find", "identify", "investigate", "analyze", "analyse", "evaluate", "assess", "audit",
    "review", "prioritize", "rank", "determine", "discover", "explore",
)  # fmt: skip
SUPERLATIVES: tuple[str, ...] = (
    "best", "highest", "most", "critical", "fragile", "risky", "worst", "biggest",
    "weakest", "top",
)  # fmt: skip
BROAD_SCOPE: tuple[str, ...] = (
    "codebase", "system", "architecture", "entire", "across", "all", "everything",
    "whole", "overall",
)  # fmt: skip
QUESTION_STARTS: tuple[str, ...] = ("what", "where", "which", "how", "why", "who")
ACTION_VERBS: tuple[str, ...] = (
    "add", "remove", "fix", "update", "refactor", "implement", "replace", "rename",
    "delete", "move", "extract", "migrate", "create", "improve", "test", "document",
)  # fmt: skip
TECHNICAL_TERMS: tuple[str, ...] = (
    "retry", "backoff", "timeout", "cache", "queue", "logging", "lint", "type",
    "exception", "error", "config", "parser", "schema", "index", "migration", "mock",
)  # fmt: skip
ABSTRACT_BONUS_CAP = 5.0


class SubTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    title: str
    description: str
    dependencies: list[str] = Field(default_factory=list)
    estimated_complexity: Level = "low"
    file_scope: list[str] = Field(default_factory=list)
    success_criteria: dict[str, str] = Field(default_factory=dict)


class TaskDecomposition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    original_task: str
    complexity_score: int
    complexity_level: Level
    should_decompose: bool
    subtasks: list[SubTask] = Field(default_factory=list)
    rationale: str = ""
    recommend_debate: bool = False


def _level(score: int) -> Level:
    return "low" if score <= 3 else "medium" if score <= 6 else "high"


def _words(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


def _present(terms: tuple[str, ...], words: set[str]) -> list[str]:
    return [t for t in terms if t in words]


def mentioned_files(task: str) -> list[str]:
    """File tokens (name.py, ts, tsx, js, jsx, md) in the order they appear, without repeats."""
    return list(dict.fromkeys(FILE_RE.findall(task)))


def concepts_in(task: str) -> list[str]:
    """Distinct concepts of `task`, in `CONCEPTS` order (aliases folded)."""
    words = set(_words(task))
    found = [CONCEPT_ALIASES.get(c, c) for c in CONCEPTS if c in words]
    return list(dict.fromkeys(found))


def complexity_score(task: str) -> int:
    """The 1-10 heuristic score of a non-empty task (0 for an empty one)."""
    if not task.strip():
        return 0
    lower = task.lower()
    word_list = _words(task)
    words = set(word_list)
    files = mentioned_files(task)
    has_paths = bool(files) or bool(PATH_RE.search(task))

    file_score = min(len(files), 3) * 0.3 * 10 / 3
    # Keywords are substrings, as in the reference ("add" also matches "address").
    raw_keywords = min(
        1.5 * sum(k in lower for k in HIGH_KEYWORDS)
        + 0.5 * sum(k in lower for k in MEDIUM_KEYWORDS),
        4,
    )
    keyword_score = raw_keywords * 0.4 * 10 / 4
    length_score = min(len(task.split()) / 30, 3) * 0.3 * 10 / 3
    concepts = [c for c in CONCEPTS if c in words]
    concept_score = min(len(concepts), 3) * 0.8
    clauses = len(re.split(r",\s*and\b|\band\b|;", lower)) - 1
    clause_score = min(clauses, 2) * 0.5

    vagueness = 0.0
    strategic = _present(STRATEGIC_TERMS, words)
    if not has_paths and strategic:
        vagueness = max(2.0 + 0.5 * min(len(strategic) - 1, 2) - min(0.3 * raw_keywords, 1.5), 0.5)

    action = bool(_present(ABSTRACT_ACTIONS, words))
    superlative = bool(_present(SUPERLATIVES, words))
    broad = bool(_present(BROAD_SCOPE, words))
    if action and superlative and broad:
        abstract = 4.0
    elif action and superlative:
        abstract = 3.5
    elif action and broad:
        abstract = 3.0
    elif superlative and broad:
        abstract = 2.5
    elif action or superlative:
        abstract = 1.5
    else:
        abstract = 0.0
    if _present(STRATEGIC_VERBS, words) and concepts and not has_paths:
        abstract += 2.0
    if "?" in task or (word_list and word_list[0] in QUESTION_STARTS):
        abstract += 2.0
    if broad and not has_paths:
        abstract += 1.5
    abstract = min(abstract, ABSTRACT_BONUS_CAP)
    if has_paths:
        abstract *= 0.3

    total = (
        file_score
        + keyword_score
        + length_score
        + concept_score
        + clause_score
        + vagueness
        + abstract
    )
    return max(1, min(10, round(total)))


def is_specific(task: str) -> bool:
    """An action verb plus a technical term or a concept: the goal says what to change."""
    words = set(_words(task))
    return bool(_present(ACTION_VERBS, words)) and bool(
        _present(TECHNICAL_TERMS, words) or concepts_in(task)
    )


def _sentences_about(task: str, concept: str) -> str:
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", task) if s.strip()]
    names = {concept} | {a for a, c in CONCEPT_ALIASES.items() if c == concept}
    hits = [s for s in sentences if names & set(_words(s))]
    return " ".join(hits) or task.strip()


def _concept_complexity(concept: str) -> Level:
    if concept in HIGH_CONCEPTS:
        return "high"
    if concept in MEDIUM_CONCEPTS:
        return "medium"
    return "low"


class TaskDecomposer:
    """Decompose a goal: `analyze(goal)` returns a `TaskDecomposition`.

    Heuristic by default. `use_debate=True` decomposes through the configured agents instead:
    the target named by `scan_settings` (repo, agents, test command) is read by the real
    context phase in a throwaway worktree, every agent's `propose` step scans it, and each
    proposal becomes a subtask (best benefit first; a subtask depends on earlier ones that
    touch the same files). There is no critique or vote round: the agent protocol has no
    decomposition step, so this is the agents' offline scan, not an LLM debate. No proposal
    falls back to the heuristic (the rationale says so). Without `scan_settings` the scan
    reads `choose_target` (the target rule: $NOMIC_REPO, else the repository the current
    directory is in) with the default
    panel, resolved when the scan runs.
    """

    def __init__(
        self,
        complexity_threshold: int = 5,
        max_subtasks: int = 5,
        max_depth: int = 3,
        use_debate: bool = False,
        scan_settings: CycleSettings | None = None,
    ) -> None:
        self.complexity_threshold = complexity_threshold
        self.max_subtasks = max_subtasks
        self.max_depth = max_depth
        self.use_debate = use_debate
        self.scan_settings = scan_settings

    def analyze(self, task: str, depth: int = 0) -> TaskDecomposition:
        heuristic = self._heuristic(task.strip(), depth)
        if not self.use_debate or not heuristic.original_task:
            return heuristic
        proposals = self._scan(heuristic.original_task)
        if not proposals:
            return heuristic.model_copy(
                update={"rationale": f"the agents proposed nothing; {heuristic.rationale}"}
            )
        ranked = sorted(proposals, key=lambda p: (-p.benefit, p.risk, p.id))
        out: list[SubTask] = []
        for p in ranked[: self.max_subtasks]:
            risk: Level = "high" if p.risk >= 0.6 else "medium" if p.risk >= 0.3 else "low"
            out.append(
                SubTask(
                    id=f"subtask_{len(out) + 1}",
                    title=p.title,
                    description=f"{p.description} (goal: {heuristic.original_task})",
                    dependencies=[s.id for s in out if set(s.file_scope) & set(p.files)],
                    estimated_complexity=risk,
                    file_scope=list(p.files),
                    success_criteria={"tests_pass": "==true", "proposal": p.id},
                )
            )
        return heuristic.model_copy(
            update={
                "should_decompose": True,
                "subtasks": out,
                "rationale": f"{len(proposals)} proposal(s) from the agents' scan of the target",
                "recommend_debate": False,
            }
        )

    async def decompose(self, task: str, depth: int = 0) -> TaskDecomposition:
        """The seed's API: `result = await decomposer.decompose(goal)`; `analyze` in a
        worker thread (a scan runs the target's tests), so the event loop is not blocked."""
        return await asyncio.to_thread(self.analyze, task, depth)

    def _heuristic(self, task: str, depth: int) -> TaskDecomposition:
        if not task:
            return TaskDecomposition(
                original_task=task,
                complexity_score=0,
                complexity_level="low",
                should_decompose=False,
                rationale="empty task: nothing to do",
            )
        score = complexity_score(task)
        level = _level(score)
        files = mentioned_files(task)
        has_paths = bool(files) or bool(PATH_RE.search(task))
        recommend_debate = score >= 7 and not has_paths
        if depth >= self.max_depth or score < self.complexity_threshold:
            why = (
                f"depth {depth} reached the limit {self.max_depth}"
                if depth >= self.max_depth
                else f"score {score} is below the threshold {self.complexity_threshold}"
            )
            return TaskDecomposition(
                original_task=task,
                complexity_score=score,
                complexity_level=level,
                should_decompose=False,
                subtasks=[self._single(task, files, level)],
                rationale=f"{why}: the goal is one subtask",
                recommend_debate=recommend_debate,
            )
        subtasks = self._concept_subtasks(task, files) or self._phase_subtasks(task, files)
        return TaskDecomposition(
            original_task=task,
            complexity_score=score,
            complexity_level=level,
            should_decompose=True,
            subtasks=subtasks[: self.max_subtasks],
            rationale=f"score {score} reaches the threshold {self.complexity_threshold}",
            recommend_debate=recommend_debate,
        )

    def _scan(self, task: str) -> list[Proposal]:
        """Every agent's proposals for `task` on a fresh worktree of the target."""
        chosen = self.scan_settings or CycleSettings()
        # the target rule of every entry point run from a checkout (BadInput outside one)
        chosen = chosen.model_copy(update={"repo": choose_target(chosen.repo)})
        settings = chosen.model_copy(update={"goal": task})
        panel = build_panel(settings.agents)
        ws = open_workspace(settings, f"scan-{new_cycle_id()}")
        try:
            ctx = gather_context(ws, settings, [])
            goal = Goal(text=task, track=settings.track_enum, source="user")
            return [p for agent in panel for p in agent.propose(ctx, goal)]
        finally:
            close_workspace(ws)

    @staticmethod
    def _single(task: str, files: list[str], level: Level) -> SubTask:
        return SubTask(
            id="subtask_1",
            title=task if len(task) <= 80 else task[:77] + "...",
            description=task,
            estimated_complexity=level,
            file_scope=files,
            success_criteria={"tests_pass": "==true"},
        )

    def _concept_subtasks(self, task: str, files: list[str]) -> list[SubTask]:
        out: list[SubTask] = []
        for concept in concepts_in(task)[: self.max_subtasks]:
            out.append(
                SubTask(
                    id=f"subtask_{len(out) + 1}",
                    title=f"{concept.capitalize()} Changes",
                    description=_sentences_about(task, concept),
                    dependencies=[s.id for s in out],
                    estimated_complexity=_concept_complexity(concept),
                    file_scope=[f for f in files if concept in f.lower()],
                    success_criteria={"tests_pass": "==true"},
                )
            )
        return out

    @staticmethod
    def _phase_subtasks(task: str, files: list[str]) -> list[SubTask]:
        phases = [
            ("Analysis & Design", f"Analyse and design: {task}", "medium"),
            ("Core Implementation", f"Implement: {task}", "high"),
            ("Testing & Integration", f"Test and integrate: {task}", "medium"),
        ]
        out: list[SubTask] = []
        for title, description, level in phases:
            out.append(
                SubTask(
                    id=f"subtask_{len(out) + 1}",
                    title=title,
                    description=description,
                    dependencies=[out[-1].id] if out else [],
                    estimated_complexity=level,  # type: ignore[arg-type]
                    file_scope=list(files),
                    success_criteria={"tests_pass": "==true"},
                )
            )
        return out


_default: TaskDecomposer | None = None


def analyze_task(task: str) -> TaskDecomposition:
    """The default decomposer's `analyze` (threshold 5, at most 5 subtasks)."""
    global _default
    if _default is None:
        _default = TaskDecomposer()
    return _default.analyze(task)
