"""Claude through the Anthropic Messages API (the `anthropic` SDK).

Structured output is tool use: every request carries the same five response tools (one per
protocol step, their input schemas generated from our pydantic models) and forces the one
the step needs with `tool_choice`. Keeping the tool list identical across steps keeps the
cached prefix identical too: the prompt cache covers tools + system up to the shared
context block, which carries `cache_control: {"type": "ephemeral"}`, so every call after
the first in a cycle re-reads the repository context at the cache-read price.

Configuration (environment, until the Dagster resources take over): `ANTHROPIC_API_KEY`
(required), `ANTHROPIC_BASE_URL`, `NOMIC_CLAUDE_MODEL`, `NOMIC_LLM_MAX_TOKENS`,
`NOMIC_LLM_MAX_RETRIES`, `NOMIC_LLM_TIMEOUT_S`, `NOMIC_LLM_MAX_RETRY_WAIT_S`,
`NOMIC_BUDGET_USD`, `NOMIC_PRICES`.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
from anthropic.types import Message
from pydantic import BaseModel

from nomic_dagster.agents.llm import (
    DEFAULT_MAX_TOKENS,
    MAX_RETRIES_ENV,
    MAX_RETRY_WAIT_ENV,
    MAX_TOKENS_ENV,
    RESPONSE_MODELS,
    TIMEOUT_ENV,
    BackendError,
    LLMAgent,
    StructuredOutputError,
    SystemBlock,
    Turn,
    capped_retry_after,
    describe_api_error,
    env_number,
    env_text,
    extract_json,
    json_schema,
    tool_name,
    validate_output,
)
from nomic_dagster.errors import BadInput
from nomic_dagster.pricing import Budget, PriceTable, Usage, budget_from_env

KEY_ENV = "ANTHROPIC_API_KEY"
BASE_URL_ENV = "ANTHROPIC_BASE_URL"
MODEL_ENV = "NOMIC_CLAUDE_MODEL"
DEFAULT_MODEL = "claude-sonnet-4-6"
DEFAULT_BASE_URL = "https://api.anthropic.com"
CONTEXT_WINDOW_TOKENS = 200_000
CACHE = {"type": "ephemeral"}


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
    ) -> None:
        self.model = model
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
                {"type": "text", "text": b.text, **({"cache_control": CACHE} if b.cache else {})}
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


class AnthropicAgent(LLMAgent):
    """The protocol over Claude. `from_env` builds it from the environment."""

    @classmethod
    def from_env(cls, name: str = "claude", *, budget: Budget | None = None) -> AnthropicAgent:
        key = env_text(KEY_ENV)
        if not key:
            raise BadInput(
                f"agent {name!r} needs an Anthropic API key and {KEY_ENV} is not set",
                f"export {KEY_ENV}=... (and {BASE_URL_ENV} for a proxy or gateway), "
                "or leave this agent out of the panel",
            )
        model = env_text(MODEL_ENV, DEFAULT_MODEL) or DEFAULT_MODEL
        base_url = env_text(BASE_URL_ENV)
        price = PriceTable().price(model, base_url=base_url)
        backend = AnthropicBackend(
            model=model,
            api_key=key,
            base_url=base_url,
            max_retries=env_number(MAX_RETRIES_ENV, 3, minimum=0, integer=True),
            timeout_s=env_number(TIMEOUT_ENV, 120, minimum=1),
            max_retry_wait_s=env_number(MAX_RETRY_WAIT_ENV, 60, minimum=0),
        )
        return cls(
            name,
            backend,
            price,
            max_tokens=env_number(MAX_TOKENS_ENV, DEFAULT_MAX_TOKENS, minimum=64, integer=True),
            budget=budget,
            budget_limit_usd=budget_from_env(),
        )


__all__ = ["AnthropicAgent", "AnthropicBackend"]
