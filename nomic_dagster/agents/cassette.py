"""Cassettes: every request an LLM agent sends during a cycle, and its answer, as JSONL.

A cassette is one file per cycle, `<state dir>/cassettes/<cycle_id>.jsonl`. Its first line
is a `CassetteHeader` (the cycle, its panel, and the earlier cycles its context showed, so
that a replay sees the same context); every further line is a `CassetteEntry`: which agent
asked what (the system blocks and turns, the response schema, max_tokens), a digest of that
request, and what came back (the validated structured output, plain text, or the error the
backend raised) with the usage the provider reported.

`RecordingBackend` wraps any `ChatBackend` and appends one entry per call; `record_panel`
wraps every `LLMAgent` of a panel. Lines are appended whole under an exclusive lock and
fsync'd, so the phases of one cycle may record from different processes (the Dagster
multiprocess executor, the state machine's child processes).

Secrets: request headers (where the keys travel) are never seen here; every stored text is
passed through `llm.redact` with the backend's own secrets, and anything shaped like a key
is redacted as well. The digest is taken over the request *before* redaction, so a replay
compares what the agent really asks now with what it really asked then.

CLI agents (`claude-code`, `codex`) are not recorded: they run their own tool loops in the
worktree, and the loop only sees their final diff.

`nomic_dagster.agents.replay` reads cassettes back.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nomic_dagster.agents import Agent, panel_names
from nomic_dagster.agents.llm.agent import (
    BackendError,
    ChatBackend,
    LLMAgent,
    StructuredOutputError,
    SystemBlock,
    Turn,
    redact,
    tool_name,
)
from nomic_dagster.core.records import CycleSummary, utcnow
from nomic_dagster.core.settings import CycleSettings, state_dir
from nomic_dagster.core.usage import Usage
from nomic_dagster.infra.pricing import Price

log = logging.getLogger("nomic_dagster.agents.cassette")

CASSETTE_FORMAT = 1
CASSETTES_DIR = "cassettes"
TEXT_REQUEST = "text"  # the schema name of a request that asked for plain text


# ---------------------------------------------------------------- the records


class CassetteRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecordedBlock(CassetteRecord):
    text: str
    cache: bool = False


class RecordedTurn(CassetteRecord):
    role: Literal["user", "assistant"]
    text: str


class CassetteRequest(CassetteRecord):
    """What the agent asked, redacted."""

    system: list[RecordedBlock]
    messages: list[RecordedTurn]
    schema_name: str  # the response tool (submit_vote, ...) or "text"
    max_tokens: int


ResponseKind = Literal[
    "structured",  # `output` holds the validated model
    "text",  # `text` holds the plain answer
    "backend_error",  # BackendError(detail): no answer
    "structured_output_error",  # StructuredOutputError(detail, raw, usage): an invalid answer
    "crash",  # any other exception out of the backend: `detail` names it
]


class CassetteResponse(CassetteRecord):
    """What came back, redacted; `usage` as the provider reported it (unpriced)."""

    kind: ResponseKind
    output: dict[str, Any] | None = None
    text: str = ""
    detail: str = ""
    raw: str = ""
    usage: Usage | None = None
    # True when redaction changed the answer itself: a replay then serves the redacted text.
    redacted: bool = False


class CassetteHeader(CassetteRecord):
    """The first line of a cassette: the cycle it belongs to."""

    type: Literal["header"] = "header"
    format: int = CASSETTE_FORMAT
    cycle_id: str
    started_at: datetime
    goal: str
    agents: list[str]
    # The earlier cycles the recorded context showed: a replay shows exactly these, not
    # what the history holds by then (which includes the recorded cycle itself).
    recent_cycles: list[CycleSummary] = Field(default_factory=list)


class CassetteEntry(CassetteRecord):
    """One request and its answer."""

    type: Literal["call"] = "call"
    seq: int  # the line number in the cassette (the header is line 0)
    cycle_id: str
    agent: str
    provider: str
    model: str
    base_url: str | None = None
    context_window_tokens: int | None = None
    price: Price | None = None  # the price the agent used, so a replay costs the same
    schema_name: str
    digest: str  # sha256 of the canonical request, before redaction (see `request_digest`)
    request: CassetteRequest
    response: CassetteResponse
    recorded_at: datetime
    duration_s: float


def request_digest(
    system: list[SystemBlock], messages: list[Turn], schema_name: str, max_tokens: int
) -> str:
    """sha256 of the canonical JSON of everything that shapes the answer."""
    canonical = json.dumps(
        {
            "system": [[b.text, b.cache] for b in system],
            "messages": [[t.role, t.text] for t in messages],
            "schema": schema_name,
            "max_tokens": max_tokens,
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def schema_name_of(schema: type[BaseModel] | None) -> str:
    return tool_name(schema) if schema is not None else TEXT_REQUEST


# ---------------------------------------------------------------- where cassettes live


def cassettes_dir(settings: CycleSettings | None = None) -> Path:
    return state_dir(settings) / CASSETTES_DIR


def cassette_path(settings: CycleSettings | None, cycle_id: str) -> Path:
    return cassettes_dir(settings) / f"{cycle_id}.jsonl"


def cassette_link(settings: CycleSettings, cycle_id: str) -> str | None:
    """The cycle's cassette, for its record: the path when the cycle recorded any call."""
    path = cassette_path(settings, cycle_id)
    return str(path) if path.is_file() else None


# ---------------------------------------------------------------- writing


class CassetteWriter:
    """Appends whole lines to one cassette: the header first, then one entry per call."""

    def __init__(self, path: Path, header: CassetteHeader) -> None:
        self.path = path
        self.header = header

    def append(self, make_entry: Callable[[int], CassetteEntry]) -> CassetteEntry:
        """Append the entry `make_entry(seq)` builds; the sequence number is assigned under
        the lock, so concurrent writers (threads or processes) never share one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            lines = _count_lines(fd)
            out = b""
            if lines == 0:
                out += self.header.model_dump_json().encode("utf-8") + b"\n"
                lines = 1
            entry: CassetteEntry = make_entry(lines)
            out += entry.model_dump_json().encode("utf-8") + b"\n"
            while out:  # O_APPEND: at the end; the lock keeps other writers out meanwhile
                out = out[os.write(fd, out) :]
            os.fsync(fd)
            return entry
        finally:
            os.close(fd)  # releases the lock


def _count_lines(fd: int) -> int:
    count = 0
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        count += chunk.count(b"\n")
        offset += len(chunk)
    return count


# ---------------------------------------------------------------- the recording backend


class RecordingBackend:
    """A `ChatBackend` that delegates to `inner` and records every call in a cassette."""

    def __init__(
        self,
        inner: ChatBackend,
        writer: CassetteWriter,
        agent_name: str,
        price: Price | None = None,
    ) -> None:
        self.inner = inner
        self.writer = writer
        self.agent_name = agent_name
        self.price = price

    # The protocol's attributes are the inner backend's (read each time: a backend may change).
    @property
    def provider(self) -> str:
        return self.inner.provider

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def base_url(self) -> str | None:
        return self.inner.base_url

    @property
    def context_window_tokens(self) -> int | None:
        return self.inner.context_window_tokens

    def __repr__(self) -> str:
        return f"RecordingBackend({self.inner!r} -> {self.writer.path})"

    def secrets(self) -> list[str]:
        return list(self.inner.secrets())

    def complete(
        self,
        system: list[SystemBlock],
        messages: list[Turn],
        schema: type[BaseModel] | None,
        max_tokens: int,
    ) -> tuple[BaseModel | str, Usage | None]:
        name = schema_name_of(schema)
        digest = request_digest(system, messages, name, max_tokens)
        started = time.perf_counter()

        def record(response: CassetteResponse) -> None:
            self._record(system, messages, name, max_tokens, digest, started, response)

        try:
            result, usage = self.inner.complete(system, messages, schema, max_tokens)
        except StructuredOutputError as exc:
            record(
                CassetteResponse(
                    kind="structured_output_error", detail=exc.detail, raw=exc.raw, usage=exc.usage
                )
            )
            raise
        except BackendError as exc:
            record(CassetteResponse(kind="backend_error", detail=str(exc)))
            raise
        except Exception as exc:
            record(CassetteResponse(kind="crash", detail=f"{type(exc).__name__}: {exc}"))
            raise
        if isinstance(result, BaseModel):
            record(
                CassetteResponse(
                    kind="structured", output=result.model_dump(mode="json"), usage=usage
                )
            )
        else:
            record(CassetteResponse(kind="text", text=str(result), usage=usage))
        return result, usage

    def _record(
        self,
        system: list[SystemBlock],
        messages: list[Turn],
        schema_name: str,
        max_tokens: int,
        digest: str,
        started: float,
        response: CassetteResponse,
    ) -> None:
        secrets = self.secrets()

        def clean(text: str) -> str:
            return redact(text, secrets)

        request = CassetteRequest(
            system=[RecordedBlock(text=clean(b.text), cache=b.cache) for b in system],
            messages=[RecordedTurn(role=t.role, text=clean(t.text)) for t in messages],
            schema_name=schema_name,
            max_tokens=max_tokens,
        )
        response = _redacted_response(response, secrets)
        duration = round(time.perf_counter() - started, 3)

        def entry(seq: int) -> CassetteEntry:
            return CassetteEntry(
                seq=seq,
                cycle_id=self.writer.header.cycle_id,
                agent=self.agent_name,
                provider=self.provider,
                model=self.model,
                base_url=clean(self.base_url) if self.base_url else None,
                context_window_tokens=self.context_window_tokens,
                price=self.price,
                schema_name=schema_name,
                digest=digest,
                request=request,
                response=response,
                recorded_at=utcnow(),
                duration_s=duration,
            )

        try:
            self.writer.append(entry)
        except OSError as exc:  # a full disk must not cost the cycle its answer
            log.warning(
                "could not record %s's call in %s: %s", self.agent_name, self.writer.path, exc
            )


def _redacted_response(response: CassetteResponse, secrets: list[str]) -> CassetteResponse:
    data = response.model_dump(mode="json", exclude={"redacted"})
    text = json.dumps(data, ensure_ascii=False)
    clean = redact(text, secrets)
    if clean == text:
        return response
    return CassetteResponse.model_validate({**json.loads(clean), "redacted": True})


# ---------------------------------------------------------------- wiring


def cassette_writer(
    settings: CycleSettings,
    cycle_id: str,
    started_at: datetime,
    recent_cycles: list[CycleSummary] | None = None,
) -> CassetteWriter:
    header = CassetteHeader(
        cycle_id=cycle_id,
        started_at=started_at,
        goal=settings.goal,
        agents=panel_names(settings.agents),
        recent_cycles=list(recent_cycles or []),
    )
    return CassetteWriter(cassette_path(settings, cycle_id), header)


def record_panel(panel: list[Agent], writer: CassetteWriter) -> list[Agent]:
    """Wrap the backend of every LLM agent in `panel` (in place) so that its calls are
    recorded in `writer`'s cassette; other agents are left as they are."""
    for agent in panel:
        if isinstance(agent, LLMAgent) and not isinstance(agent.backend, RecordingBackend):
            agent.backend = RecordingBackend(agent.backend, writer, agent.name, agent.price)
    return panel


__all__ = [
    "CASSETTE_FORMAT",
    "CassetteEntry",
    "CassetteHeader",
    "CassetteRequest",
    "CassetteResponse",
    "CassetteWriter",
    "RecordingBackend",
    "cassette_link",
    "cassette_path",
    "cassette_writer",
    "cassettes_dir",
    "record_panel",
    "request_digest",
]
