"""Claude through the Anthropic Messages API (the `anthropic` SDK).

Structured output is tool use: every request carries the same five response tools (one per
protocol step, their input schemas generated from our pydantic models) and forces the one
the step needs with `tool_choice`. Keeping the tool list identical across steps keeps the
cached prefix identical too: the prompt cache covers tools + system up to the shared
context block, which carries `cache_control: {"type": "ephemeral"}`, so every call after
the first in a cycle re-reads the repository context at the cache-read price. The response
tools are every structured step's (`RESPONSE_MODELS`: propose, critique, vote, revise,
design, implement, ...), whichever the call needs. `NOMIC_PROMPT_CACHE=0` leaves the marker
out, to measure what caching saves (benchmarks/debate.py).

Configuration: `AnthropicSettings` (`agents/backends.py`; the Dagster `claude` resource fills
it in), whose unset fields come from `ANTHROPIC_API_KEY` (required), `ANTHROPIC_BASE_URL`,
`NOMIC_CLAUDE_MODEL`, `NOMIC_LLM_MAX_TOKENS`, `NOMIC_LLM_MAX_RETRIES`, `NOMIC_LLM_TIMEOUT_S`,
`NOMIC_LLM_MAX_RETRY_WAIT_S`; and `NOMIC_BUDGET_USD`, `NOMIC_PRICES`.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

import anthropic
from anthropic.types import Message
from pydantic import BaseModel

from nomic_dagster.agents.backends import (
    ANTHROPIC_BASE_URL_ENV,
    ANTHROPIC_KEY_ENV,
    CLAUDE_CONTEXT_WINDOW_TOKENS,
    CLAUDE_MODEL_ENV,
    DEFAULT_CLAUDE_MODEL,
    _llm_limits,
    _LLMSettings,
    _secret_update,
)
from nomic_dagster.agents.backends import ANTHROPIC_BASE_URL_ENV as BASE_URL_ENV
from nomic_dagster.agents.backends import ANTHROPIC_KEY_ENV as KEY_ENV
from nomic_dagster.agents.backends import CLAUDE_CONTEXT_WINDOW_TOKENS as CONTEXT_WINDOW_TOKENS
from nomic_dagster.agents.llm.agent import (
    RESPONSE_MODELS,
    BackendError,
    LLMAgent,
    StructuredOutputError,
    SystemBlock,
    Turn,
    capped_retry_after,
    describe_api_error,
    env_text,
    extract_json,
    json_schema,
    tool_name,
    validate_output,
)
from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.usage import Usage
from nomic_dagster.infra.pricing import Budget, PriceTable, budget_from_env

DEFAULT_BASE_URL = "https://api.anthropic.com"
CACHE = {"type": "ephemeral"}
PROMPT_CACHE_ENV = "NOMIC_PROMPT_CACHE"


def prompt_cache_from_env() -> bool:
    """Whether to mark the shared context cacheable: $NOMIC_PROMPT_CACHE, default on."""
    raw = os.environ.get(PROMPT_CACHE_ENV, "").strip().lower() or "1"
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise BadInput(
        f"{PROMPT_CACHE_ENV}={raw!r} is neither on nor off",
        f"set {PROMPT_CACHE_ENV} to 1 (cache the shared context, the default) or 0",
    )


def _tools() -> list[dict[str, Any]]:
    return [
        {"name": tool_name(m), "description": m.instruction, "input_schema": json_schema(m)}
        for m in RESPONSE_MODELS
    ]


class AnthropicBackend:
    provider = "anthropic"

    def __init__(
        self,
        *,
        model: str,
        api_key: str,
        base_url: str | None = None,
        max_retries: int = 3,
        timeout_s: float = 120.0,
        max_retry_wait_s: float = 60.0,
        context_window_tokens: int | None = CONTEXT_WINDOW_TOKENS,
        prompt_cache: bool | None = None,
    ) -> None:
        self.model = model
        # False: no cache_control marker on any block. None: $NOMIC_PROMPT_CACHE decides.
        self.prompt_cache = prompt_cache_from_env() if prompt_cache is None else prompt_cache
        self.base_url = base_url or DEFAULT_BASE_URL
        self.context_window_tokens = context_window_tokens
        self._api_key = api_key
        self._client = anthropic.Anthropic(
            api_key=api_key,
            base_url=self.base_url,
            max_retries=max_retries,
            timeout=timeout_s,
            http_client=anthropic.DefaultHttpxClient(
                event_hooks={"response": [capped_retry_after(max_retry_wait_s)]}
            ),
        )

    def __repr__(self) -> str:
        return f"AnthropicBackend(model={self.model!r}, base_url={self.base_url!r})"

    def secrets(self) -> list[str]:
        return [self._api_key]

    def request(
        self,
        system: list[SystemBlock],
        messages: list[Turn],
        schema: type[BaseModel] | None,
        max_tokens: int,
    ) -> dict[str, Any]:
        """The keyword arguments of `messages.create` for one call."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "system": [
                {
                    "type": "text",
                    "text": b.text,
                    **({"cache_control": CACHE} if b.cache and self.prompt_cache else {}),
                }
                for b in system
            ],
            "messages": [{"role": t.role, "content": t.text} for t in messages],
        }
        if schema is not None:
            kwargs["tools"] = _tools()
            kwargs["tool_choice"] = {"type": "tool", "name": tool_name(schema)}
        return kwargs

    def complete(
        self,
        system: list[SystemBlock],
        messages: list[Turn],
        schema: type[BaseModel] | None,
        max_tokens: int,
    ) -> tuple[BaseModel | str, Usage | None]:
        try:
            message = self._client.messages.create(
                **self.request(system, messages, schema, max_tokens)
            )
        except (anthropic.AnthropicError, ValueError) as exc:
            raise BackendError(
                describe_api_error("Anthropic", self.base_url, exc, KEY_ENV)
            ) from None
        if not isinstance(message, Message):
            shown = " ".join(str(message).split())[:160]
            raise BackendError(
                f"Anthropic at {self.base_url} answered with something that is not a Messages "
                f"API response (an HTML page or a proxy?): {shown!r}"
            )
        usage = _usage(message)
        content = message.content if isinstance(message.content, list) else []
        text = "".join(getattr(b, "text", "") for b in content if getattr(b, "type", "") == "text")
        if schema is None:
            return text, usage
        priced_usage = usage or Usage()
        name = tool_name(schema)
        block = next(
            (
                b
                for b in content
                if getattr(b, "type", "") == "tool_use" and getattr(b, "name", "") == name
            ),
            None,
        )
        if message.stop_reason == "max_tokens":
            raise StructuredOutputError(
                f"the answer was cut off at max_tokens={max_tokens}; answer more briefly",
                json.dumps(getattr(block, "input", None)) if block else text,
                priced_usage,
            )
        if block is None:
            if not content:
                raise BackendError(f"Anthropic at {self.base_url} sent a message with no content")
            try:
                data = extract_json(text)
            except ValueError as exc:
                raise StructuredOutputError(
                    f"the answer did not call the {name} tool and holds no JSON ({exc})",
                    text,
                    priced_usage,
                ) from None
        else:
            data = block.input
        return validate_output(schema, data, json.dumps(data), priced_usage), usage


def _usage(message: Message) -> Usage | None:
    u = getattr(message, "usage", None)
    if u is None or getattr(u, "input_tokens", None) is None:
        return None
    return Usage(
        input_tokens=u.input_tokens or 0,
        output_tokens=u.output_tokens or 0,
        cache_read_tokens=u.cache_read_input_tokens or 0,
        cache_write_tokens=u.cache_creation_input_tokens or 0,
    )


class AnthropicSettings(_LLMSettings):
    """`claude`: the Anthropic Messages API. None: `ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL`,
    `NOMIC_CLAUDE_MODEL` (default claude-sonnet-4-6), `NOMIC_LLM_*`; window 200K tokens."""

    backend: ClassVar[str] = "claude"

    def resolved(self) -> AnthropicSettings:
        values = self._fill(
            {
                "model": lambda: env_text(CLAUDE_MODEL_ENV, DEFAULT_CLAUDE_MODEL),
                "base_url": lambda: env_text(ANTHROPIC_BASE_URL_ENV),
                "context_window_tokens": lambda: CLAUDE_CONTEXT_WINDOW_TOKENS,
                "api_key": lambda: env_text(ANTHROPIC_KEY_ENV),
            }
        )
        return self.model_copy(update={**values, **_llm_limits(self)} | _secret_update(values))

    def build(self, name: str, budget: Budget | None) -> AnthropicAgent:
        return AnthropicAgent.from_settings(name, self, budget=budget)


class AnthropicAgent(LLMAgent):
    """The protocol over Claude. `from_env` builds it from the environment."""

    @classmethod
    def from_env(cls, name: str = "claude", *, budget: Budget | None = None) -> AnthropicAgent:
        return cls.from_settings(name, AnthropicSettings(), budget=budget)

    @classmethod
    def from_settings(
        cls, name: str, settings: AnthropicSettings, *, budget: Budget | None = None
    ) -> AnthropicAgent:
        """The agent from `settings` (None fields from the environment, as `from_env`)."""
        s = settings.resolved()
        key = s.key()
        if not key:
            raise BadInput(
                f"agent {name!r} needs an Anthropic API key and {KEY_ENV} is not set",
                f"export {KEY_ENV}=... (and {BASE_URL_ENV} for a proxy or gateway), set the "
                "`claude` resource's api_key (e.g. {env: ANTHROPIC_API_KEY}), "
                "or leave this agent out of the panel",
            )
        assert s.model and s.max_tokens is not None and s.timeout_s is not None
        assert s.max_retries is not None and s.max_retry_wait_s is not None
        price = PriceTable().price(s.model, base_url=s.base_url)
        backend = AnthropicBackend(
            model=s.model,
            api_key=key,
            base_url=s.base_url,
            max_retries=s.max_retries,
            timeout_s=s.timeout_s,
            max_retry_wait_s=s.max_retry_wait_s,
            context_window_tokens=s.context_window_tokens,
        )
        return cls(
            name,
            backend,
            price,
            max_tokens=s.max_tokens,
            budget=budget,
            budget_limit_usd=budget_from_env(),
        )


__all__ = ["AnthropicAgent", "AnthropicBackend"]
