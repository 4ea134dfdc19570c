"""Replay: LLM agents that answer from a recorded cassette, with no network and no key.

`ReplayBackend` is a `ChatBackend` over the entries one agent recorded (see
`nomic_dagster.agents.cassette`). It serves them in the order they were recorded, per
response schema: the panel is built afresh in every phase (possibly in another process),
and each schema belongs to one phase (proposals, critiques and votes to the debate, the
design to design, edits to implement), so a per-schema order is the same in every phase and
process. A recorded answer is served as it came: the structured output re-validated against
the schema, the text, or the recorded `BackendError` / `StructuredOutputError` (with its
usage), so the agent's repair rounds, drop-outs and failures happen again.

Every request is compared with the recorded one by digest. A different request means the
prompt drifted (the target, the settings or the prompt code changed since the recording):
with `strict` (the default) that is `ReplayMismatch`, naming the cassette, the entry and
where the texts first differ; the phases let it through, so the cycle ends `bad_input`
with that message. `strict=False` logs a warning and serves the recorded answer anyway.
A request beyond the recorded ones is `ReplayMismatch` too.

`replay_panel` builds a cycle's panel for `CycleSettings.replay_from`: LLM agents from the
cassette (their recorded provider, model, max_tokens, context window and price, so the
replayed prompts and costs are the recorded ones), offline agents live (they are
deterministic), and CLI agents refused (their work is not recorded). `replay_role` does the
same for a judge, designer or implementer from outside the panel (recorded like the panel).

Known limits: a phase that is re-executed after a partial run (a retry, a resume) replays
from the phase's first recorded call; a cassette of a resumed cycle holds both attempts.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ValidationError

from nomic_dagster.agents import (
    CLI_AGENT_NAMES,
    OFFLINE_AGENT_NAMES,
    Agent,
    build_agent,
    panel_names,
)
from nomic_dagster.agents.cassette import (
    CassetteEntry,
    CassetteHeader,
    CassetteRequest,
    cassette_path,
    request_digest,
    schema_name_of,
)
from nomic_dagster.agents.llm.agent import (
    DEFAULT_MAX_TOKENS,
    BackendError,
    LLMAgent,
    StructuredOutputError,
    SystemBlock,
    Turn,
    redact,
)
from nomic_dagster.core.errors import BadInput, ReplayMismatch
from nomic_dagster.core.records import CycleSummary
from nomic_dagster.core.settings import CycleSettings
from nomic_dagster.core.usage import Usage
from nomic_dagster.infra.pricing import FREE, Budget, Price, PriceTable, budget_from_env

log = logging.getLogger("nomic_dagster.agents.replay")

SHOWN_CHARS = 60  # of context on each side of the first difference in a drift message


class ReplayedCrash(Exception):
    """The backend crashed at this call when the cassette was recorded."""


# ---------------------------------------------------------------- reading cassettes


@dataclass
class Cassette:
    path: Path
    header: CassetteHeader
    entries: list[CassetteEntry] = field(default_factory=list)

    def for_agent(self, name: str) -> list[CassetteEntry]:
        return [e for e in self.entries if e.agent == name]


def resolve_cassette(replay_from: str, settings: CycleSettings | None = None) -> Path:
    """The cassette `replay_from` names: a file path, else a cycle id in the state folder."""
    raw = replay_from.strip()
    as_path = Path(raw).expanduser()
    is_path = raw.endswith(".jsonl") or "/" in raw or as_path.is_file()
    path = as_path if is_path else cassette_path(settings, raw)
    if not path.is_file():
        raise BadInput(
            f"replay_from={replay_from!r}: there is no cassette at {path}",
            "name a cycle that recorded its LLM calls (record_cassette: true, the default; "
            "its record's `cassette` field) or give the path of a cassette .jsonl file",
        )
    return path


def load_cassette(path: Path) -> Cassette:
    """The cassette at `path`; BadInput naming the line when it is not one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(
            f"cannot read the cassette {path}: {exc}", "give the path of a readable cassette"
        ) from exc
    fix = "replay a cassette nomic_dagster recorded (one JSON object per line, a header first)"
    if not lines or not lines[0].strip():
        raise BadInput(f"the cassette {path} is empty", fix)
    try:
        header = CassetteHeader.model_validate_json(lines[0])
    except ValidationError as exc:
        raise BadInput(f"line 1 of {path} is not a cassette header: {exc}", fix) from exc
    cassette = Cassette(path=path, header=header)
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            cassette.entries.append(CassetteEntry.model_validate_json(line))
        except ValidationError as exc:
            raise BadInput(f"line {number} of {path} is not a cassette entry: {exc}", fix) from exc
    return cassette


def recorded_recent_cycles(settings: CycleSettings) -> list[CycleSummary]:
    """The earlier cycles the recorded cycle's context showed (for `replay_from`)."""
    assert settings.replay_from
    return load_cassette(resolve_cassette(settings.replay_from, settings)).header.recent_cycles


# ---------------------------------------------------------------- where prompts differ


def _window(text: str, at: int) -> str:
    start = max(0, at - SHOWN_CHARS)
    piece = text[start : at + SHOWN_CHARS]
    return ("…" if start else "") + piece + ("…" if at + SHOWN_CHARS < len(text) else "")


def _text_difference(label: str, recorded: str, now: str) -> str | None:
    if recorded == now:
        return None
    at = next((i for i, (a, b) in enumerate(zip(recorded, now, strict=False)) if a != b), None)
    if at is None:
        at = min(len(recorded), len(now))
    return (
        f"{label} differs at character {at} (recorded {len(recorded)} characters, now "
        f"{len(now)}): recorded {_window(recorded, at)!r}, now {_window(now, at)!r}"
    )


def describe_drift(
    recorded: CassetteRequest, system: list[SystemBlock], messages: list[Turn], max_tokens: int
) -> str:
    """Where the request now first differs from the recorded (redacted) one."""
    if recorded.max_tokens != max_tokens:
        return f"max_tokens is {max_tokens}, recorded {recorded.max_tokens}"
    if len(recorded.system) != len(system):
        return f"the system prompt has {len(system)} blocks, recorded {len(recorded.system)}"
    for n, (was, block) in enumerate(zip(recorded.system, system, strict=True), start=1):
        label = f"system block {n} of {len(system)}"
        if was.cache != block.cache:
            return f"{label} is {'' if block.cache else 'not '}marked cacheable now"
        found = _text_difference(label, was.text, redact(block.text))
        if found:
            return found
    if len(recorded.messages) != len(messages):
        return f"the request has {len(messages)} turns, recorded {len(recorded.messages)}"
    for n, (was_turn, turn) in enumerate(zip(recorded.messages, messages, strict=True), start=1):
        label = f"turn {n} ({turn.role})"
        if was_turn.role != turn.role:
            return f"{label} was a {was_turn.role} turn when recorded"
        found = _text_difference(label, was_turn.text, redact(turn.text))
        if found:
            return found
    return "the texts differ only where the cassette redacted a secret"


# ---------------------------------------------------------------- the replay backend


class ReplayBackend:
    """A `ChatBackend` that answers from one agent's recorded entries (see the module)."""

    def __init__(
        self,
        entries: list[CassetteEntry],
        *,
        cassette: Path | str = "(a cassette)",
        agent_name: str = "",
        strict: bool = True,
    ) -> None:
        self.cassette = str(cassette)
        self.agent_name = agent_name or (entries[0].agent if entries else "?")
        self.strict = strict
        first = entries[0] if entries else None
        self.provider = first.provider if first else "replay"
        self.model = first.model if first else "unknown"
        self.base_url = first.base_url if first else None
        self.context_window_tokens = first.context_window_tokens if first else None
        self._recorded: dict[str, int] = {}
        self._queues: dict[str, deque[CassetteEntry]] = {}
        for entry in entries:
            self._queues.setdefault(entry.schema_name, deque()).append(entry)
            self._recorded[entry.schema_name] = self._recorded.get(entry.schema_name, 0) + 1
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ReplayBackend(agent={self.agent_name!r}, cassette={self.cassette!r})"

    def secrets(self) -> list[str]:
        return []  # a replay holds no key

    def remaining(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._queues.values())

    def complete(
        self,
        system: list[SystemBlock],
        messages: list[Turn],
        schema: type[BaseModel] | None,
        max_tokens: int,
    ) -> tuple[BaseModel | str, Usage | None]:
        name = schema_name_of(schema)
        with self._lock:
            queue = self._queues.get(name)
            entry = queue.popleft() if queue else None
        if entry is None:
            raise ReplayMismatch(
                f"the cassette {self.cassette} has no more {name} calls of agent "
                f"{self.agent_name!r} (it recorded {self._recorded.get(name, 0)}): the replayed "
                "cycle asked for more than the recorded one did",
                "replay with the settings, target commit and nomic_dagster version of the "
                "recording, or record the cycle again",
            )
        if entry.digest != request_digest(system, messages, name, max_tokens):
            where = describe_drift(entry.request, system, messages, max_tokens)
            problem = (
                f"the prompt drifted: the {name} request of agent {self.agent_name!r} differs "
                f"from entry {entry.seq} of the cassette {self.cassette}: {where}"
            )
            if self.strict:
                raise ReplayMismatch(
                    problem,
                    "replay against the target commit, settings and nomic_dagster version the "
                    "cassette was recorded with, or record the cycle again (from Python, "
                    "replay_panel(..., strict=False) serves the recorded answers anyway)",
                )
            log.warning("%s; serving the recorded answer anyway (strict=False)", problem)
        if entry.response.redacted:
            log.warning(
                "entry %d of %s: the recorded answer had a secret-shaped text redacted; the "
                "replay serves the redacted answer",
                entry.seq,
                self.cassette,
            )
        return self._serve(entry, schema)

    def _serve(
        self, entry: CassetteEntry, schema: type[BaseModel] | None
    ) -> tuple[BaseModel | str, Usage | None]:
        response = entry.response
        usage = response.usage.model_copy() if response.usage is not None else None
        if response.kind == "backend_error":
            raise BackendError(response.detail)
        if response.kind == "structured_output_error":
            raise StructuredOutputError(response.detail, response.raw, usage or Usage())
        if response.kind == "crash":
            raise ReplayedCrash(f"(replayed from {self.cassette}) {response.detail}")
        if response.kind == "text" or schema is None:
            return response.text, usage
        try:
            return schema.model_validate(response.output), usage
        except ValidationError as exc:
            raise ReplayMismatch(
                f"entry {entry.seq} of the cassette {self.cassette} holds a {entry.schema_name} "
                f"answer that the response model no longer accepts: {exc}",
                "record the cycle again with this version of nomic_dagster",
            ) from exc


# ---------------------------------------------------------------- a replayed panel


def _recorded_price(entries: list[CassetteEntry]) -> Price:
    first = entries[0] if entries else None
    if first is None:
        return FREE  # it made no call when recorded; any call now is a mismatch anyway
    if first.price is not None:
        return first.price
    return PriceTable().find(first.model) or FREE


def replay_agent(
    name: str,
    cassette: Cassette,
    budget: Budget | None = None,
    *,
    strict: bool = True,
) -> LLMAgent:
    """The LLM agent `name` as recorded: its backend, limits and price from the cassette."""
    entries = cassette.for_agent(name)
    backend = ReplayBackend(entries, cassette=cassette.path, agent_name=name, strict=strict)
    return LLMAgent(
        name,
        backend,
        _recorded_price(entries),
        max_tokens=entries[0].request.max_tokens if entries else DEFAULT_MAX_TOKENS,
        budget=budget,
        budget_limit_usd=budget_from_env(),
    )


def replay_role(role: str, name: str, settings: CycleSettings, budget: Budget | None) -> Agent:
    """The agent `name` for `role` (judge, designer, implementer) outside the panel, in a
    replay: an offline agent runs live, an LLM agent answers from the cassette."""
    if name in CLI_AGENT_NAMES:
        raise BadInput(
            f"replay_from is set and the {role} is the CLI agent {name!r}, whose work is not "
            "recorded in a cassette",
            f"replay with another {role}, or leave replay_from empty",
        )
    if name in OFFLINE_AGENT_NAMES or ":" in name:
        return build_agent(name, budget)
    cassette = load_cassette(resolve_cassette(settings.replay_from or "", settings))
    return replay_agent(name, cassette, budget)


def replay_panel(
    settings: CycleSettings, budget: Budget | None = None, *, strict: bool = True
) -> list[Agent]:
    """The panel of `settings.agents` for replaying the cassette `settings.replay_from`."""
    if not settings.replay_from:
        raise ValueError("replay_panel needs settings.replay_from")
    names = panel_names(settings.agents)
    cli = [n for n in names if n in CLI_AGENT_NAMES]
    if cli:
        raise BadInput(
            f"replay_from is set and the panel holds the CLI agent(s) {', '.join(cli)}, whose "
            "work is not recorded in a cassette",
            "replay a panel of LLM and offline agents, or leave replay_from empty",
        )
    # A role outside the panel answers from the cassette too (`replay_role`), except a CLI
    # agent, whose work in the worktree is not recorded.
    for role in ("judge", "designer", "implementer"):
        other = str(getattr(settings, role, "") or "").strip()
        if other in CLI_AGENT_NAMES:
            raise BadInput(
                f"replay_from is set and the {role} is the CLI agent {other!r}, whose work is "
                "not recorded in a cassette",
                f"replay with another {role}, or leave replay_from empty",
            )
    cassette = load_cassette(resolve_cassette(settings.replay_from, settings))
    if cassette.header.agents != names:
        raise BadInput(
            f"the cassette {cassette.path} recorded the panel {cassette.header.agents}, and this "
            f"cycle's panel is {names}",
            f"set agents to {cassette.header.agents} (in that order) to replay it",
        )
    panel: list[Agent] = []
    for name in names:
        if name in OFFLINE_AGENT_NAMES:  # deterministic: they run live
            panel.append(build_agent(name, budget))
        elif ":" in name:  # an agent of one's own, by import path: built, its model replayed
            agent = build_agent(name, budget)
            if isinstance(agent, LLMAgent):
                agent.backend = ReplayBackend(
                    cassette.for_agent(agent.name),
                    cassette=cassette.path,
                    agent_name=agent.name,
                    strict=strict,
                )
            panel.append(agent)
        else:  # an LLM backend (built-in or configured): from the cassette, never built live
            panel.append(replay_agent(name, cassette, budget, strict=strict))
    return panel


__all__ = [
    "Cassette",
    "ReplayBackend",
    "ReplayedCrash",
    "describe_drift",
    "load_cassette",
    "recorded_recent_cycles",
    "replay_agent",
    "replay_panel",
    "replay_role",
    "resolve_cassette",
]
