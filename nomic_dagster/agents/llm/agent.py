"""The LLM agent: the one agent protocol over a small chat interface.

`LLMAgent` turns every protocol step (propose, critique, vote, revise, design, implement) into one
chat request to a `ChatBackend` (Anthropic, OpenAI, any OpenAI-compatible server) and
validates the answer against a small pydantic response model. It is never trusted: ids
are assigned here, paths are checked, votes must name a real proposal, and edits are
applied by `nomic_dagster.agents.llm.edits` (all-or-nothing, inside the worktree, off `.git` and the
protected paths). The loop still verifies and commits; the agent never does.

The prompt has three parts, in this order so that a provider's prefix cache can re-read
the expensive part:

1. the agent's role (the same for every call),
2. the shared context: the goal and the repository facts, fit to a character budget
   (marked cacheable; identical for every call of the cycle unless the model's context
   window forces it smaller),
3. the step's own task (the proposal to critique, the ballot, the design to implement).

Malformed output gets exactly one repair prompt that quotes the validation error; a
second failure is the agent's failure (`AgentError`). Edits that do not apply get exactly
one repair round that quotes the exact rejection; a second rejection is
`ImplementationFailed`. Every request is priced and checked against the budget *before*
it is sent (`nomic_dagster.infra.pricing`), and recorded in `agent.usage`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nomic_dagster.agents.base import WorkArea
from nomic_dagster.agents.llm.edits import EditRejected, SearchReplace, apply_edits
from nomic_dagster.core import pathrules
from nomic_dagster.core.errors import AgentError, BadInput, BudgetExhausted, ImplementationFailed
from nomic_dagster.core.goals import CandidateGoal, GoalProposal, GoalVote
from nomic_dagster.core.records import Critique, Design, Goal, Proposal, RepoContext, Track, Vote
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.core.usage import LLMCall, Usage
from nomic_dagster.infra.pricing import Budget, Price, estimate_tokens

log = logging.getLogger("nomic_dagster.agents.llm.agent")

M = TypeVar("M", bound=BaseModel)

DEFAULT_MAX_TOKENS = 4096
DEFAULT_CONTEXT_CHARS = 60_000
CHARS_PER_TOKEN = 4.0  # for fitting prompts into a context window (the budget uses 3.0)
PROMPT_OVERHEAD_CHARS = 2_000  # message framing, tool definitions, the schema text


# ---------------------------------------------------------------- the chat interface


@dataclass(frozen=True)
class SystemBlock:
    """A part of the system prompt; `cache` marks the end of a cacheable prefix."""

    text: str
    cache: bool = False


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str


class BackendError(Exception):
    """The provider could not give an answer (after the SDK's own retries), or its answer
    was not a response at all (HTML, truncated JSON, an empty body). Never holds a key."""


class StructuredOutputError(Exception):
    """The provider answered, but not with valid structured output. The call was billed."""

    def __init__(self, detail: str, raw: str, usage: Usage) -> None:
        self.detail = detail
        self.raw = raw
        self.usage = usage
        super().__init__(detail)


class ChatBackend(Protocol):
    """One model behind one provider API."""

    provider: str
    model: str
    base_url: str | None
    context_window_tokens: int | None  # None: large enough for any prompt we build

    def complete(
        self,
        system: list[SystemBlock],
        messages: list[Turn],
        schema: type[BaseModel] | None,
        max_tokens: int,
    ) -> tuple[BaseModel | str, Usage | None]:
        """Send one request. With `schema`: the validated model, else the text; the usage
        (None when the provider reported none: the caller then charges the worst case).
        Raises `BackendError` (no answer) or `StructuredOutputError` (an invalid answer)."""
        ...

    def secrets(self) -> list[str]:
        """Values that must never appear in anything we log, raise or return."""
        ...


# ---------------------------------------------------------------- concurrent calls per provider


class ProviderSlots(Protocol):
    """Who may call a provider right now: `hold(provider)` waits for a slot and keeps it for
    the call. The Dagster layer installs one backed by the instance's pools
    (`nomic_llm_<provider>`), so the limit holds across runs; elsewhere there is none."""

    def hold(self, provider: str) -> AbstractContextManager[None]: ...


# ---------------------------------------------------------------- shared backend plumbing

MAX_TOKENS_ENV = "NOMIC_LLM_MAX_TOKENS"
MAX_RETRIES_ENV = "NOMIC_LLM_MAX_RETRIES"
TIMEOUT_ENV = "NOMIC_LLM_TIMEOUT_S"
MAX_RETRY_WAIT_ENV = "NOMIC_LLM_MAX_RETRY_WAIT_S"


def env_number(name: str, default: float, *, minimum: float, integer: bool = False) -> Any:
    """A number from the environment; BadInput naming the variable when it is not one."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return int(default) if integer else float(default)
    try:
        value: float = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise BadInput(
            f"{name}={raw!r} is not {kind}", f"set {name} to {kind} >= {minimum}"
        ) from None
    if value < minimum or value != value:
        raise BadInput(f"{name}={raw!r} is below {minimum}", f"set {name} to at least {minimum}")
    return value


def env_text(name: str, default: str | None = None) -> str | None:
    raw = os.environ.get(name, "").strip()
    return raw or default


def capped_retry_after(max_wait_s: float) -> Callable[[Any], None]:
    """An httpx response hook that caps a server's `retry-after` so that a misbehaving
    server cannot park an unattended cycle for hours (the SDKs honour any value)."""

    def hook(response: Any) -> None:
        headers = response.headers
        ms = headers.get("retry-after-ms")
        if ms is not None:
            try:
                if float(ms) / 1000 > max_wait_s:
                    headers["retry-after-ms"] = str(int(max_wait_s * 1000))
            except ValueError:
                del headers["retry-after-ms"]
        after = headers.get("retry-after")
        if after is not None:
            try:
                seconds = float(after)
            except ValueError:
                return  # an HTTP date: the SDK parses it; dates in the far future are rare
            if seconds > max_wait_s:
                headers["retry-after"] = f"{max_wait_s:g}"

    return hook


def describe_api_error(provider: str, base_url: str, exc: BaseException, key_env: str) -> str:
    """A one-line account of an SDK exception, without the request (or any key)."""
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    if status is not None:
        body = getattr(exc, "body", None)
        message = ""
        if isinstance(body, dict):
            err = body.get("error", body)
            message = str(err.get("message", "")) if isinstance(err, dict) else str(err)
        elif isinstance(body, str):
            message = re.sub(r"<[^>]+>", " ", body)
        message = re.sub(r"\s+", " ", message).strip()[:300]
        hint = ""
        if status in (401, 403):
            hint = f"; check {key_env}"
        elif status == 404:
            hint = "; check the model name and the base URL"
        elif status == 429 or status >= 500:
            hint = " (after the SDK's retries)"
        return f"{provider} at {base_url} answered HTTP {status} {name}: {message or '(no message)'}{hint}"
    if "Timeout" in name:
        return f"{provider} at {base_url} timed out ({name}, after the SDK's retries)"
    if "Connection" in name:
        return f"could not reach {provider} at {base_url} ({name}, after the SDK's retries)"
    if isinstance(exc, ValueError):
        return (
            f"{provider} at {base_url} sent a body that is not valid JSON (truncated or empty?): "
            f"{exc}"
        )
    return f"{provider} at {base_url} failed: {name}: {exc}"


# ---------------------------------------------------------------- response models


class Response(BaseModel):
    """Base of the structured answers: every field required, nothing extra (strict schemas)."""

    model_config = ConfigDict(extra="forbid")
    tool_name: ClassVar[str]
    instruction: ClassVar[str]


def kind_slug(kind: str) -> str:
    """A kind of improvement as a short slug ("Add Tests!" -> "add-tests")."""
    slug = re.sub(r"[^a-z0-9]+", "-", kind.strip().lower()).strip("-")
    if not slug:
        raise ValueError("kind must be a short slug such as add-tests")
    return slug[:40]


def _check_repo_path(value: str) -> str:
    norm = pathrules.normalize(value)  # ValueError for "..", absolute paths
    if not norm:
        raise ValueError(f"{value!r} is not a file path")
    return norm


class ProposalOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="short slug for the kind of change, e.g. add-tests, fix-bug")
    title: str = Field(description="one line")
    description: str = Field(description="what changes and why it helps the goal")
    files: list[str] = Field(description="repository-relative paths the change will touch")
    evidence: list[str] = Field(description="facts from the context that support it")
    benefit: float = Field(ge=0.0, le=1.0, description="0..1, expected benefit for the goal")
    risk: float = Field(ge=0.0, le=1.0, description="0..1, risk of breaking something")
    estimated_lines: int = Field(ge=0, description="changed lines, roughly")

    @field_validator("files")
    @classmethod
    def _paths(cls, files: list[str]) -> list[str]:
        if not files:
            raise ValueError("name at least one file")
        return [_check_repo_path(f) for f in files]

    @field_validator("kind")
    @classmethod
    def _kind(cls, kind: str) -> str:
        return kind_slug(kind)


class ProposalsOut(Response):
    tool_name = "submit_proposals"
    instruction = "Propose improvements, best first (at most 3; an empty list if none)."
    proposals: list[ProposalOut] = Field(max_length=3)


class CritiqueOut(Response):
    tool_name = "submit_critique"
    instruction = "Critique the proposal."
    criterion: str = Field(description="what you judge by, e.g. benefit, risk, size, correctness")
    score: float = Field(ge=0.0, le=1.0, description="0..1, higher is better for the proposal")
    stance: Literal["support", "neutral", "oppose"]
    comment: str = Field(description="the reasons, concretely")


class VoteOut(Response):
    tool_name = "submit_vote"
    instruction = "Vote for exactly one proposal by its id."
    proposal_id: str
    confidence: float = Field(ge=0.0, le=1.0)
    reason: str


class ReviseOut(Response):
    """A proposer's answer to the critiques of its proposal: keep it, or revise it. Flat and
    fully required (strict schemas); with `revise` false the proposal fields are ignored."""

    tool_name = "submit_revision"
    instruction = "Answer the critiques of your proposal: revise it, or keep it as it is."
    revise: bool = Field(description="true: replace the proposal with the fields below")
    answer: str = Field(description="how you answer the critiques: what you changed, or why not")
    title: str = Field(description="one line")
    description: str = Field(description="what changes and why it helps the goal")
    files: list[str] = Field(description="repository-relative paths the change will touch")
    evidence: list[str] = Field(description="facts from the context that support it")
    benefit: float = Field(ge=0.0, le=1.0, description="0..1, expected benefit for the goal")
    risk: float = Field(ge=0.0, le=1.0, description="0..1, risk of breaking something")
    estimated_lines: int = Field(ge=0, description="changed lines, roughly")

    @field_validator("files")
    @classmethod
    def _paths(cls, files: list[str]) -> list[str]:
        return [_check_repo_path(f) for f in files]


class DesignOut(Response):
    tool_name = "submit_design"
    instruction = "Design your winning proposal."
    title: str
    files: list[str] = Field(description="every file the implementation will touch")
    steps: list[str]
    test_plan: str
    risk: Literal["low", "medium", "high"]
    rationale: str

    @field_validator("files")
    @classmethod
    def _paths(cls, files: list[str]) -> list[str]:
        if not files:
            raise ValueError("name at least one file")
        return [_check_repo_path(f) for f in files]


class EditsOut(Response):
    tool_name = "submit_edits"
    instruction = "Return the edits that carry out the design."
    summary: str = Field(description="one line: what the edits do")
    edits: list[SearchReplace] = Field(
        description="search/replace blocks; `search` must match the current file exactly once; "
        "an empty `search` creates a new file"
    )
    diff: str = Field(description="optionally a unified diff instead of (or besides) the edits")


class PlannedGoalOut(BaseModel):
    """One goal an agent proposes to the meta-planner (debate mode)."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(description="the goal, one line, as a cycle's goal")
    description: str = Field(description="why it matters now, from the signals and history")
    track: Literal["sme", "developer", "self_hosted", "qa", "core", "security"]
    kind: str = Field(description="kind of improvement: lint-fix, add-tests, fix-tests, ...")
    files: list[str] = Field(description="repository-relative file hints (may be empty)")
    expected_impact: Literal["high", "medium", "low"]
    based_on: str = Field(description="the candidate id it refines, or an empty string")

    @field_validator("files")
    @classmethod
    def _paths(cls, files: list[str]) -> list[str]:
        return [_check_repo_path(f) for f in files]

    @field_validator("kind")
    @classmethod
    def _kind(cls, kind: str) -> str:
        return kind_slug(kind)


class GoalPlanOut(Response):
    tool_name = "submit_goals"
    instruction = "Propose goals for the next cycles, best first (at most 3; [] if none)."
    goals: list[PlannedGoalOut] = Field(max_length=3)


class GoalVoteOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    goal_id: str
    confidence: float = Field(ge=0.0, le=1.0)
    reason: str


class GoalBallotOut(Response):
    tool_name = "submit_goal_votes"
    instruction = "Vote for the goals the next cycles should work on, by their ids."
    votes: list[GoalVoteOut] = Field(max_length=10)


RESPONSE_MODELS: tuple[type[Response], ...] = (
    ProposalsOut,
    CritiqueOut,
    VoteOut,
    DesignOut,
    EditsOut,
    ReviseOut,
    GoalPlanOut,
    GoalBallotOut,
)


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.rsplit("/", 1)[1]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with every $ref inlined (accepted by every provider)."""
    schema = model.model_json_schema()
    return _inline_refs(schema, schema.get("$defs", {}))


def tool_name(schema: type[BaseModel]) -> str:
    return getattr(schema, "tool_name", schema.__name__.lower())


@lru_cache(maxsize=1)
def _schemas_chars() -> int:
    """The size of every response schema: the most a request spends on tool definitions."""
    return sum(len(json.dumps(json_schema(m))) for m in RESPONSE_MODELS)


# ---------------------------------------------------------------- parsing text


def extract_json(text: str) -> Any:
    """The JSON value in a model's text: the whole text, a ```json fence, or the first
    object embedded in prose. ValueError when there is none."""
    stripped = text.strip()
    if not stripped:
        raise ValueError("the reply is empty")
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    for fenced in re.findall(r"```(?:json|JSON)?\s*\n?(.*?)```", text, re.DOTALL):
        try:
            return json.loads(fenced.strip())
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[{\[]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("the reply holds no JSON object")


def validate_output(schema: type[M], data: Any, raw: str, usage: Usage) -> M:
    """`schema` validated from `data`; StructuredOutputError with a readable detail."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise StructuredOutputError(validation_detail(exc), raw, usage) from None


def validation_detail(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False)[:12]:
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problems.append(f"{where}: {err['msg']}")
    return "; ".join(problems)


# ---------------------------------------------------------------- secrets

_KEY_PATTERNS = (
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"sk-[A-Za-z0-9_\-]{16,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{12,}"),
    re.compile(r"(?i)(x-api-key['\"]?\s*[:=]\s*['\"]?)[A-Za-z0-9._\-]{8,}"),
)


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` with every given secret and anything shaped like an API key replaced."""
    for secret in sorted((s for s in secrets if s and len(s) >= 6), key=len, reverse=True):
        text = text.replace(secret, "[redacted]")
    for pattern in _KEY_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
    return text


# ---------------------------------------------------------------- prompts

ROLE = """\
You are {name}, one member of a panel of agents that improves a git repository, one \
small verified change per cycle. Each cycle the panel proposes changes, critiques each \
other's proposals, votes, and the winner designs and implements its change. The loop runs \
the repository's tests and checks the final diff itself; it rejects changes that break or \
delete tests, weaken assertions, add skips, touch protected paths or leave the repository. \
Prefer small, safe, clearly valuable changes that serve the goal. Answer only through the \
requested structured output."""


def _section(title: str, lines: list[str]) -> str:
    return f"## {title}\n" + ("\n".join(lines) if lines else "(none)")


def render_context(context: RepoContext, goal: Goal, budget_chars: int) -> str:
    """The goal and the repository facts as text of at most `budget_chars` characters.

    Sections go in order of usefulness; the first that does not fit is cut line by line,
    and the rest are dropped, each with a note saying so.
    """
    tests = context.tests
    status = (
        "not run"
        if tests.passed is None
        else f"{'passing' if tests.passed else 'FAILING'}, {tests.collected} collected"
    )
    header = [
        f"# Goal\n{goal.text}",
        f"# Repository (base commit {context.base_sha[:12]})\n"
        f"{len(context.files)} files; test command `{tests.command}`: {status}; a design may "
        f"touch at most {context.max_files} files.",
    ]
    sections: list[tuple[str, list[str]]] = [
        (
            "Linter findings (ruff)",
            [
                f"{f.path}:{f.line} {f.code} {f.message}{' (fixable)' if f.fixable else ''}"
                for f in context.findings
            ],
        ),
        (
            "Modules and their symbols",
            [
                f"{m.path} ({m.lines} lines{', test' if m.is_test else ''}): "
                + "; ".join(s.signature for s in m.symbols if s.public or m.is_test)
                for m in context.modules
            ],
        ),
        ("Test files", list(tests.test_files)),
        ("TODO/FIXME markers", [f"{m.path}:{m.line} {m.kind} {m.text}" for m in context.markers]),
        ("Most changed files", [f"{c.path}: {c.commits} commits" for c in context.churn]),
        (
            "Earlier cycles on this repository",
            [
                f"{c.cycle_id}: {c.outcome.value} {c.kind or ''} {', '.join(c.files)} {c.reason}"[
                    :300
                ]
                for c in context.recent_cycles
            ],
        ),
        ("All files", list(context.files)),
    ]
    out = "\n\n".join(header)
    left_out: list[str] = []
    for title, lines in sections:
        block = _section(title, lines)
        room = budget_chars - len(out) - 2 - 120  # room for the closing note
        if not left_out and len(block) <= room:
            out += "\n\n" + block
            continue
        if not left_out:
            kept: list[str] = []
            used = len(title) + 80
            for line in lines:
                if used + len(line) + 1 > room:
                    break
                kept.append(line)
                used += len(line) + 1
            if kept:
                out += "\n\n" + _section(title, kept)
                out += f"\n[{len(lines) - len(kept)} more lines cut to fit the context budget]"
                left_out.append("")  # the cut section: later ones are left out
                continue
        left_out.append(title)
    dropped = [t for t in left_out if t]
    if dropped:
        out += f"\n\n[left out to fit the context budget: {', '.join(dropped)}]"
    return out[:budget_chars]


def _proposal_text(p: Proposal) -> str:
    data = p.model_dump(exclude={"agent"})
    return json.dumps(data, indent=1)


def _critiques_text(critiques: Sequence[Critique]) -> str:
    """One line per critique, labelled with its debate round and the revision it judged."""
    return "\n".join(
        f"- round {c.round}, {c.critic} on {c.proposal_id} (revision {c.revision}): {c.stance}, "
        f"score {c.score:.2f} ({c.criterion}): {c.comment}"
        for c in critiques
    )


def _file_blocks(root: Path, paths: Sequence[str], budget_chars: int) -> str:
    """The current text of `paths` (each fenced), at most `budget_chars` characters."""
    blocks: list[str] = []
    used = 0
    for raw in paths:
        try:
            rel = pathrules.normalize(raw)
        except ValueError:
            continue
        target = root / rel
        if target.is_symlink():
            blocks.append(f"### {rel}\n(a symlink: it may not be edited)")
            continue
        if not target.is_file():
            blocks.append(f"### {rel}\n(does not exist yet)")
            continue
        try:
            text = target.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            blocks.append(f"### {rel}\n(not a text file)")
            continue
        room = budget_chars - used
        if len(text) + len(rel) + 20 > room:
            blocks.append(
                f"### {rel}\n(too large to show: {len(text)} characters; quote only lines you "
                "are sure of)"
            )
            continue
        blocks.append(
            f"### {rel}\n```\n{text}```" if text.endswith("\n") else f"### {rel}\n```\n{text}\n```"
        )
        used += len(blocks[-1])
    return "\n\n".join(blocks)


EDIT_FORMAT = """\
Return your edits in `edits` as search/replace blocks: `path` relative to the repository \
root, `search` an exact copy of text that occurs exactly once in the current file \
(indentation and blank lines included), and `replace` the new text. To create a file, \
leave `search` empty and put the whole file in `replace`. Instead you may give a unified \
diff (`--- a/path` / `+++ b/path` / `@@` hunks) in `diff`; leave `diff` empty otherwise. \
All edits are applied together or not at all. Never touch .git, CI configuration or other \
protected files, and never delete, skip or weaken tests."""


# ---------------------------------------------------------------- the agent


class LLMAgent:
    """The agent protocol over a `ChatBackend`. Subclasses only choose the backend."""

    criterion: str = "overall merit for the goal"

    def __init__(
        self,
        name: str,
        backend: ChatBackend,
        price: Price,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        budget: Budget | None = None,
        budget_limit_usd: float | None = None,
        context_chars: int | None = None,
    ) -> None:
        self.name = name
        self.backend = backend
        self.price = price
        self.max_tokens = max_tokens
        self.budget = budget
        self.budget_limit_usd = budget_limit_usd
        # Given by the registry (`build_agent`): who may call the provider right now.
        self.slots: ProviderSlots | None = None
        self.context_chars = context_chars
        self.usage: list[LLMCall] = []

    def __repr__(self) -> str:  # never the client (which holds the key)
        return f"{type(self).__name__}(name={self.name!r}, model={self.backend.model!r})"

    # ------------------------------------------------------------ money

    @property
    def total_usage(self) -> Usage:
        total = Usage()
        for call in self.usage:
            total = total + call.usage
        return total

    def budget_for(self) -> Budget:
        """The budget this agent draws on: the phase's (given by the registry), else one
        of its own with its configured limit (an agent used outside a cycle)."""
        if self.budget is None:
            self.budget = Budget(self.budget_limit_usd)
        return self.budget

    # ------------------------------------------------------------ prompts

    def _prompt_chars(self) -> int | None:
        """How many characters of prompt fit the model's window next to max_tokens."""
        window = self.backend.context_window_tokens
        if window is None:
            return None
        return int((window - self.max_tokens) * CHARS_PER_TOKEN) - PROMPT_OVERHEAD_CHARS

    def _system(self, context: RepoContext, goal: Goal, task_chars: int) -> list[SystemBlock]:
        role = ROLE.format(name=self.name)
        budget = self.context_chars or context.budget_chars or DEFAULT_CONTEXT_CHARS
        fit = self._prompt_chars()
        if fit is not None:
            budget = min(budget, fit - len(role) - task_chars)
        if budget < 500:
            raise AgentError(
                self.name,
                "build a prompt",
                f"the model's context window ({self.backend.context_window_tokens} tokens) "
                f"leaves no room for the repository context next to max_tokens="
                f"{self.max_tokens}; raise the window or lower NOMIC_LLM_MAX_TOKENS",
            )
        return [
            SystemBlock(role),
            SystemBlock(render_context(context, goal, budget), cache=True),
        ]

    # ------------------------------------------------------------ one request

    def _secrets(self) -> list[str]:
        return list(self.backend.secrets())

    def _fail(self, step: str, detail: str) -> AgentError:
        return AgentError(self.name, step, redact(detail, self._secrets()))

    def _call(
        self,
        step: str,
        system: list[SystemBlock],
        messages: list[Turn],
        schema: type[M],
    ) -> M:
        """One priced, budgeted request. Raises StructuredOutputError for a bad answer."""
        chars = sum(len(b.text) for b in system) + sum(len(t.text) for t in messages)
        chars += _schemas_chars() + PROMPT_OVERHEAD_CHARS
        worst = self.price.worst_case(estimate_tokens(chars), self.max_tokens)
        budget = self.budget_for()
        what = f"{self.name} {step} ({self.backend.model}, max_tokens={self.max_tokens})"
        reservation = budget.reserve(worst, what)  # BudgetExhausted: nothing is sent
        call = LLMCall(
            agent=self.name,
            provider=self.backend.provider,
            model=self.backend.model,
            step=step,
            usage=Usage(),
            worst_case_usd=round(worst, 8),
        )
        try:
            try:
                with self.slots.hold(self.backend.provider) if self.slots else nullcontext():
                    result, usage = self.backend.complete(system, messages, schema, self.max_tokens)
            except StructuredOutputError as exc:
                exc.usage = self.price.priced(exc.usage)
                error = redact(exc.detail, self._secrets())[:500]
                call = call.model_copy(update={"usage": exc.usage, "ok": False, "error": error})
                raise
            except BackendError as exc:
                error = redact(str(exc), self._secrets())[:500]
                call = call.model_copy(update={"ok": False, "error": error})
                raise self._fail(step, str(exc)) from None
            except Exception as exc:  # e.g. a replay that drifted: no answer, not a success
                error = redact(f"{type(exc).__name__}: {exc}", self._secrets())[:500]
                call = call.model_copy(update={"ok": False, "error": error})
                raise
            # No usage in the answer: the cost is unknown, so the reservation is charged.
            priced = self.price.priced(usage) if usage is not None else Usage(usd=round(worst, 8))
            call = call.model_copy(update={"usage": priced})
            if not isinstance(result, schema):
                detail = f"expected {tool_name(schema)} output, got plain text"
                call = call.model_copy(update={"ok": False, "error": detail})
                raise StructuredOutputError(detail, str(result), call.usage)
            return result
        finally:
            budget.settle(reservation, call.usage.usd)
            budget.record(call)
            self.usage.append(call)
            u = call.usage
            log.info(
                "%s %s via %s/%s: %d in + %d cache read + %d cache write, %d out tokens, $%.6f%s",
                self.name,
                step,
                self.backend.provider,
                self.backend.model,
                u.input_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens,
                u.output_tokens,
                u.usd,
                f" (failed: {call.error})" if not call.ok else "",
            )

    def _ask(
        self,
        step: str,
        system: list[SystemBlock],
        messages: list[Turn],
        schema: type[M],
        check: Callable[[M], None] | None = None,
    ) -> tuple[M, list[Turn]]:
        """A structured answer, with one repair prompt for a malformed one; returns the answer
        and the conversation so far (ending with the answer)."""
        convo = list(messages)
        for attempt in (1, 2):
            label = step if attempt == 1 else f"{step}:repair"
            try:
                answer = self._call(label, system, convo, schema)
            except StructuredOutputError as exc:
                raw, detail = exc.raw, exc.detail
            else:
                try:
                    if check is not None:
                        check(answer)
                    return answer, [*convo, Turn("assistant", answer.model_dump_json())]
                except ValueError as exc:  # a check on the meaning (e.g. an unknown proposal id)
                    raw, detail = answer.model_dump_json(), str(exc)
            if attempt == 2:
                raise self._fail(step, f"malformed output after one repair prompt: {detail}")
            convo += [
                Turn("assistant", raw.strip() or "(an empty reply)"),
                Turn(
                    "user",
                    f"Your answer was not valid: {detail}\n"
                    f"Answer again with the complete {tool_name(schema)} output, fixing exactly "
                    "that problem.",
                ),
            ]
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ the protocol

    def propose(self, context: RepoContext, goal: Goal) -> list[Proposal]:
        task = (
            "Step: propose. Study the repository facts and the goal, then propose the "
            "improvements you would make, best first. Each names the files it touches (at "
            f"most {context.max_files}), the evidence from the context, and honest estimates "
            "of benefit, risk and size. Propose nothing rather than something useless."
        )
        system = self._system(context, goal, len(task))
        answer, _ = self._ask("propose", system, [Turn("user", task)], ProposalsOut)
        return [
            Proposal(
                id=f"{self.name}:{n}",
                agent=self.name,
                kind=p.kind,
                title=p.title[:200],
                description=p.description[:4000],
                files=p.files,
                evidence=[e[:500] for e in p.evidence[:10]],
                benefit=p.benefit,
                risk=p.risk,
                estimated_lines=p.estimated_lines,
            )
            for n, p in enumerate(answer.proposals, start=1)
        ]

    def critique(
        self,
        proposal: Proposal,
        context: RepoContext,
        goal: Goal,
        earlier_critiques: Sequence[Critique] = (),
    ) -> Critique:
        """`earlier_critiques`: the earlier debate rounds' critiques of this proposal."""
        earlier = (
            f"\n\nThe earlier rounds' critiques of it:\n{_critiques_text(earlier_critiques)}\n"
            "Say whether the current revision answers them."
            if earlier_critiques
            else ""
        )
        task = (
            f"Step: critique. Another agent ({proposal.agent}) proposes:\n"
            f"{_proposal_text(proposal)}{earlier}\n\nJudge it against the goal and the repository "
            "facts: is it real, valuable, safe, small enough, and will the tests verify it? "
            "Score 0..1 (higher is better for the proposal)."
        )
        system = self._system(context, goal, len(task))
        answer, _ = self._ask("critique", system, [Turn("user", task)], CritiqueOut)
        return Critique(
            critic=self.name,
            proposal_id=proposal.id,
            criterion=answer.criterion[:60] or self.criterion,
            score=answer.score,
            stance=answer.stance,
            comment=answer.comment[:2000],
        )

    def vote(
        self,
        proposals: list[Proposal],
        critiques: list[Critique],
        context: RepoContext,
        goal: Goal,
    ) -> Vote:
        if not proposals:
            raise ValueError("nothing to vote on")
        ids = [p.id for p in proposals]
        ballot = "\n\n".join(_proposal_text(p) for p in proposals)
        reviews = _critiques_text(critiques)
        task = (
            f"Step: vote{' after the critiques' if critiques else ' (before any critique)'}. "
            f"The proposals:\n{ballot}\n\n"
            + (f"The critiques:\n{reviews}\n\n" if critiques else "")
            + f"Vote for the one proposal that best serves the goal and is most likely to land "
            f"as a verified change. `proposal_id` must be one of: {', '.join(ids)}."
        )
        system = self._system(context, goal, len(task))

        def known(answer: VoteOut) -> None:
            if answer.proposal_id not in ids:
                raise ValueError(
                    f"proposal_id {answer.proposal_id!r} is not one of {', '.join(ids)}"
                )

        answer, _ = self._ask("vote", system, [Turn("user", task)], VoteOut, check=known)
        return Vote(
            voter=self.name,
            proposal_id=answer.proposal_id,
            confidence=answer.confidence,
            round=1 if critiques else 0,
            reason=answer.reason[:1000],
        )

    def revise(
        self, proposal: Proposal, critiques: list[Critique], context: RepoContext, goal: Goal
    ) -> Proposal | None:
        """This agent's proposal, revised in light of this round's critiques of it; None to
        keep it. When every critique supports it there is nothing to answer: no call."""
        if not critiques or all(c.stance == "support" for c in critiques):
            return None
        task = (
            f"Step: revise. Your proposal:\n{_proposal_text(proposal)}\n\n"
            f"The panel's critiques of it:\n{_critiques_text(critiques)}\n\n"
            "If a critique shows a real problem you can fix (a missing test, too many files, "
            "a risky step, an overstated benefit), revise the proposal: set `revise` to true "
            "and give the complete revised proposal (the same kind of change; at most "
            f"{context.max_files} files). Otherwise set `revise` to false and repeat the "
            "current values. Either way, say in `answer` how you answer the critiques."
        )
        system = self._system(context, goal, len(task))

        def complete(answer: ReviseOut) -> None:
            if answer.revise and not answer.files:
                raise ValueError("a revised proposal must name at least one file")

        answer, _ = self._ask("revise", system, [Turn("user", task)], ReviseOut, check=complete)
        if not answer.revise:
            return None
        return proposal.model_copy(
            update={
                "title": answer.title[:200] or proposal.title,
                "description": answer.description[:4000] or proposal.description,
                "files": answer.files,
                "evidence": [e[:500] for e in answer.evidence[:10]],
                "benefit": answer.benefit,
                "risk": answer.risk,
                "estimated_lines": answer.estimated_lines,
                "revision_note": answer.answer[:2000],
            }
        )

    def design(self, proposal: Proposal, context: RepoContext, settings: CycleSettings) -> Design:
        goal = Goal(text=settings.goal, track=settings.track_enum)
        root = Path(context.root)
        files = _file_blocks(root, proposal.files, 20_000)
        task = (
            f"Step: design. Your proposal won the vote:\n{_proposal_text(proposal)}\n\n"
            f"The files it names, as they are now:\n{files}\n\n"
            f"Design the change: every file it will touch (at most {settings.max_files}; none "
            f"of the protected paths {', '.join(settings.protected_paths)}), the steps, how "
            f"`{settings.test_command}` will verify it, and the risk."
        )
        system = self._system(context, goal, len(task))
        answer, _ = self._ask("design", system, [Turn("user", task)], DesignOut)
        return Design(
            proposal_id=proposal.id,
            agent=self.name,
            kind=proposal.kind,
            title=answer.title[:200] or proposal.title,
            files=answer.files,
            steps=[s[:1000] for s in answer.steps[:30]],
            test_plan=answer.test_plan[:2000],
            risk=answer.risk,
            rationale=answer.rationale[:4000],
        )

    def implement(self, design: Design, area: WorkArea) -> str:
        settings = area.settings
        goal = Goal(text=settings.goal, track=settings.track_enum)
        root = area.worktree
        file_budget = 40_000
        fit = self._prompt_chars()
        if fit is not None:
            file_budget = max(2_000, min(file_budget, fit // 2))
        files = _file_blocks(root, design.files, file_budget)
        task = (
            f"Step: implement. Carry out your design:\n{design.model_dump_json(indent=1)}\n\n"
            f"The files, as they are now:\n{files}\n\n{EDIT_FORMAT}"
        )
        system = self._system(area.context, goal, len(task))
        answer, convo = self._ask("implement", system, [Turn("user", task)], EditsOut)
        protected = list(settings.protected_paths)
        try:
            applied = apply_edits(root, answer.edits, answer.diff or None, protected)
        except EditRejected as first:
            log.info("%s: edits rejected, one repair round: %s", self.name, first)
            repair = Turn(
                "user",
                f"{first}\nNo file was changed. The files, as they are now:\n"
                f"{_file_blocks(root, design.files, file_budget)}\n\n"
                "Send the complete set of edits again, fixing exactly these problems.",
            )
            answer, _ = self._ask("implement:repair-edits", system, [*convo, repair], EditsOut)
            try:
                applied = apply_edits(root, answer.edits, answer.diff or None, protected)
            except EditRejected as second:
                raise ImplementationFailed(
                    redact(
                        f"{self.name}: the edits did not apply after one repair round: {second}",
                        self._secrets(),
                    )
                ) from None
        summary = answer.summary.strip().splitlines()[0] if answer.summary.strip() else ""
        return redact(f"{summary or design.title} ({applied.summary()})"[:500], self._secrets())

    # ------------------------------------------------------------ the planner (debate mode)

    def _planner_system(self, objective: str, context: str) -> list[SystemBlock]:
        role = PLANNER_ROLE.format(name=self.name)
        budget = self.context_chars or DEFAULT_CONTEXT_CHARS
        fit = self._prompt_chars()
        if fit is not None:
            budget = min(budget, fit - len(role) - 4_000)
        text = f"# Objective\n{objective or '(none: self-directed improvement)'}\n\n{context}"
        return [SystemBlock(role), SystemBlock(text[: max(500, budget)], cache=True)]

    def plan(
        self, candidates: list[CandidateGoal], objective: str, context: str
    ) -> list[GoalProposal]:
        """Goals this agent adds to the planner's ballot (the scan's candidates are shown)."""
        ballot = "\n".join(_candidate_line(c) for c in candidates) or "(none)"
        ids = {c.id for c in candidates}
        task = (
            f"Step: plan. The scan found these candidate goals:\n{ballot}\n\n"
            "Propose up to 3 goals the next cycles should work on that the list misses or "
            "states too vaguely: concrete, small enough for one verified change each, on the "
            "objective. Set `based_on` to the candidate id a goal refines (else empty)."
        )

        def known(answer: GoalPlanOut) -> None:
            bad = [g.based_on for g in answer.goals if g.based_on and g.based_on not in ids]
            if bad:
                raise ValueError(f"based_on {bad} is not a candidate id ({', '.join(sorted(ids))})")

        system = self._planner_system(objective, context)
        answer, _ = self._ask("plan", system, [Turn("user", task)], GoalPlanOut, check=known)
        return [
            GoalProposal(
                agent=self.name,
                title=g.title.strip()[:300],
                description=g.description.strip()[:2000],
                track=Track(g.track),
                kind=g.kind,
                file_hints=g.files[:10],
                expected_impact=g.expected_impact,
                based_on=g.based_on,
            )
            for g in answer.goals
            if g.title.strip()
        ]

    def vote_goals(
        self, candidates: list[CandidateGoal], objective: str, context: str
    ) -> list[GoalVote]:
        """This agent's confidence in the goals on the ballot (unknown ids are repaired once)."""
        if not candidates:
            return []
        ballot = "\n".join(_candidate_line(c) for c in candidates)
        ids = [c.id for c in candidates]
        task = (
            f"Step: vote on goals. The ballot:\n{ballot}\n\n"
            "Vote for the goals the next cycles should work on: each vote names a goal id "
            "and your confidence (0..1) that a cycle on it lands a verified, valuable change "
            f"on the objective. Vote for at most 5; ids must be among: {', '.join(ids)}."
        )

        def known(answer: GoalBallotOut) -> None:
            bad = [v.goal_id for v in answer.votes if v.goal_id not in ids]
            if bad:
                raise ValueError(f"goal_id {bad} is not on the ballot ({', '.join(ids)})")

        system = self._planner_system(objective, context)
        answer, _ = self._ask(
            "vote-goals", system, [Turn("user", task)], GoalBallotOut, check=known
        )
        best: dict[str, GoalVote] = {}
        for v in answer.votes:  # one vote per goal: a repeated id keeps its highest confidence
            if v.goal_id not in best or v.confidence > best[v.goal_id].confidence:
                best[v.goal_id] = GoalVote(
                    voter=self.name,
                    goal_id=v.goal_id,
                    confidence=v.confidence,
                    reason=v.reason[:500],
                )
        return list(best.values())


PLANNER_ROLE = """\
You are {name}, one member of a panel that decides what an autonomous improvement loop \
works on next. Each goal becomes one cycle: the panel proposes, implements and verifies \
one small change, and only changes the repository's tests accept are committed. Use the \
signals and the history of earlier cycles: a kind of improvement that keeps failing is \
a poor bet, one that keeps landing a good one. Stay on the stated objective. Answer only \
through the requested structured output."""


def _candidate_line(c: CandidateGoal) -> str:
    files = f" files: {', '.join(c.file_hints[:5])}" if c.file_hints else ""
    return (
        f"- {c.id} [{c.track.value}, {c.kind}, from {c.source}, scan score {c.scan_score:.2f}] "
        f"{c.goal}.{files} {c.rationale}"[:700]
    )


__all__ = [
    "RESPONSE_MODELS",
    "BackendError",
    "BudgetExhausted",
    "ChatBackend",
    "CritiqueOut",
    "DesignOut",
    "EditsOut",
    "GoalBallotOut",
    "GoalPlanOut",
    "LLMAgent",
    "ProposalOut",
    "ProposalsOut",
    "ReviseOut",
    "StructuredOutputError",
    "SystemBlock",
    "Turn",
    "VoteOut",
    "extract_json",
    "json_schema",
    "redact",
    "render_context",
    "tool_name",
    "validate_output",
]
