"""GPT, and any OpenAI-compatible server (Ollama, vLLM, LM Studio, …), through the Chat
Completions API (the `openai` SDK with a configurable `base_url`).

Structured output is `response_format: json_schema` (strict; our response models have
every field required and no extra properties). Local models often ignore it, or the
server rejects it: the schema is also spelled out in the prompt, the answer is parsed as
JSON wherever it is in the text (bare, fenced or embedded in prose), and a server that
answers 400 to `response_format` is asked again without it (and never again with it).

Local models have small context windows (Ollama's default is 2K-8K tokens and it cuts
the prompt silently): the prompt is fit to `context_window_tokens` (default 8192 for
`openai-compatible`, ~4 characters per token) next to `max_tokens`, which is itself held
to half the window.

Configuration: `OpenAISettings` / `OpenAICompatibleSettings` (`agents/backends.py`; the
Dagster `gpt` and `openai_compatible` resources fill them in), whose unset fields come from
the environment: `OPENAI_API_KEY` (may be unset when `OPENAI_BASE_URL` names a
server that needs no key; a placeholder is sent), `OPENAI_BASE_URL`, `NOMIC_GPT_MODEL`
(`gpt`), `NOMIC_OPENAI_MODEL` (`openai-compatible`, required), `NOMIC_OPENAI_BASE_URL` and
`NOMIC_OPENAI_API_KEY` (`openai-compatible` only, so that `gpt` and a local model can sit
on one panel; with its own URL it never receives `OPENAI_API_KEY`), `NOMIC_OPENAI_CONTEXT_TOKENS`,
`NOMIC_OPENAI_STRUCTURED` (json_schema | json_object | text), and the shared `NOMIC_LLM_*`,
`NOMIC_BUDGET_USD`, `NOMIC_PRICES`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar, Literal

import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from nomic_dagster.agents.backends import (
    COMPATIBLE_BASE_URL_ENV,
    COMPATIBLE_KEY_ENV,
    COMPATIBLE_MODEL_ENV,
    CONTEXT_ENV,
    DEFAULT_GPT_MODEL,
    DEFAULT_LOCAL_CONTEXT_TOKENS,
    GPT_MODEL_ENV,
    OPENAI_BASE_URL_ENV,
    OPENAI_KEY_ENV,
    Structured,
    _llm_limits,
    _LLMSettings,
    _secret_update,
    _structured_from_env,
)
from nomic_dagster.agents.backends import OPENAI_BASE_URL_ENV as BASE_URL_ENV
from nomic_dagster.agents.backends import OPENAI_KEY_ENV as KEY_ENV
from nomic_dagster.agents.llm.agent import (
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
    redact,
    tool_name,
    validate_output,
)
from nomic_dagster.core.errors import BadInput
from nomic_dagster.core.usage import Usage
from nomic_dagster.infra.pricing import Budget, PriceTable, budget_from_env

log = logging.getLogger("nomic_dagster.agents.openai")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
PLACEHOLDER_KEY = "not-needed"  # what a keyless local server receives


class OpenAIBackend:
    provider = "openai"

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None,
        base_url: str | None = None,
        max_retries: int = 3,
        timeout_s: float = 120.0,
        max_retry_wait_s: float = 60.0,
        context_window_tokens: int | None = None,
        structured: Structured = "json_schema",
        max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
    ) -> None:
        self.model = model
        self.base_url = base_url or DEFAULT_BASE_URL
        self.context_window_tokens = context_window_tokens
        self.structured: Structured = structured
        self.max_tokens_param = max_tokens_param
        self._api_key = api_key or ""
        self._client = openai.OpenAI(
            api_key=api_key or PLACEHOLDER_KEY,
            base_url=self.base_url,
            max_retries=max_retries,
            timeout=timeout_s,
            http_client=openai.DefaultHttpxClient(
                event_hooks={"response": [capped_retry_after(max_retry_wait_s)]}
            ),
        )

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    def secrets(self) -> list[str]:
        return [self._api_key] if self._api_key else []

    def request(
        self,
        system: list[SystemBlock],
        messages: list[Turn],
        schema: type[BaseModel] | None,
        max_tokens: int,
    ) -> dict[str, Any]:
        """The keyword arguments of `chat.completions.create` for one call."""
        turns = [{"role": t.role, "content": t.text} for t in messages]
        if schema is not None:
            # The schema is spelled out for models that ignore response_format; it goes at
            # the end, after the shared prefix, so the provider's prefix cache still holds.
            spec = json.dumps(json_schema(schema), separators=(",", ":"))
            turns[-1] = {
                **turns[-1],
                "content": f"{turns[-1]['content']}\n\nReply with only one JSON object (no "
                f"prose, no code fence) that matches this JSON schema ({tool_name(schema)}):\n"
                f"{spec}",
            }
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": "\n\n".join(b.text for b in system)},
                *turns,
            ],
            self.max_tokens_param: max_tokens,
        }
        if schema is not None and self.structured == "json_schema":
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": tool_name(schema),
                    "schema": json_schema(schema),
                    "strict": True,
                },
            }
        elif schema is not None and self.structured == "json_object":
            kwargs["response_format"] = {"type": "json_object"}
        return kwargs

    def _create(self, kwargs: dict[str, Any]) -> Any:
        try:
            return self._client.chat.completions.create(**kwargs)
        except openai.BadRequestError as exc:
            if "response_format" not in kwargs:
                raise
            # A server that does not know structured output: ask again, in plain text.
            log.warning(
                "%s at %s rejected response_format (%s); using plain JSON text from now on",
                self.model,
                self.base_url,
                redact(describe_api_error("OpenAI", self.base_url, exc, KEY_ENV), self.secrets()),
            )
            self.structured = "text"
            return self._client.chat.completions.create(
                **{k: v for k, v in kwargs.items() if k != "response_format"}
            )

    def complete(
        self,
        system: list[SystemBlock],
        messages: list[Turn],
        schema: type[BaseModel] | None,
        max_tokens: int,
    ) -> tuple[BaseModel | str, Usage | None]:
        try:
            response = self._create(self.request(system, messages, schema, max_tokens))
        except (openai.OpenAIError, ValueError) as exc:
            raise BackendError(describe_api_error("OpenAI", self.base_url, exc, KEY_ENV)) from None
        if not isinstance(response, ChatCompletion):
            shown = " ".join(str(response).split())[:160]
            raise BackendError(
                f"the server at {self.base_url} answered with something that is not a Chat "
                f"Completions response (an HTML page or a proxy?): {shown!r}"
            )
        usage = _usage(response)
        choices = response.choices if isinstance(response.choices, list) else []
        if not choices or getattr(choices[0], "message", None) is None:
            raise BackendError(f"the server at {self.base_url} sent a completion with no choices")
        choice = choices[0]
        message = choice.message
        text = message.content or ""
        if schema is None:
            return text, usage
        seen = usage or Usage()
        refusal = getattr(message, "refusal", None)
        if refusal:
            raise StructuredOutputError(f"the model refused: {refusal}", refusal, seen)
        if choice.finish_reason == "length":
            raise StructuredOutputError(
                f"the answer was cut off at max_tokens={max_tokens}; answer more briefly",
                text,
                seen,
            )
        calls = getattr(message, "tool_calls", None) or []
        if not text.strip() and calls:  # some servers answer structured output as a tool call
            text = getattr(getattr(calls[0], "function", None), "arguments", "") or ""
        try:
            data = extract_json(text)
        except ValueError as exc:
            raise StructuredOutputError(
                f"the answer is not the requested JSON object ({exc})", text, seen
            ) from None
        return validate_output(schema, data, text, seen), usage


def _usage(response: ChatCompletion) -> Usage | None:
    u = getattr(response, "usage", None)
    if u is None or getattr(u, "prompt_tokens", None) is None:
        return None
    details = getattr(u, "prompt_tokens_details", None)
    cached = (getattr(details, "cached_tokens", None) or 0) if details else 0
    return Usage(
        input_tokens=max(0, (u.prompt_tokens or 0) - cached),
        output_tokens=u.completion_tokens or 0,
        cache_read_tokens=cached,
    )


class OpenAISettings(_LLMSettings):
    """`gpt`: the OpenAI Chat Completions API. None: `OPENAI_API_KEY` (may stay unset when the
    base URL names a server that needs none), `OPENAI_BASE_URL`, `NOMIC_GPT_MODEL` (default
    gpt-4.1), `NOMIC_OPENAI_CONTEXT_TOKENS` (default: no limit), `NOMIC_LLM_*`."""

    backend: ClassVar[str] = "gpt"

    def resolved(self) -> OpenAISettings:
        values = self._fill(
            {
                "model": lambda: env_text(GPT_MODEL_ENV, DEFAULT_GPT_MODEL),
                "base_url": lambda: env_text(OPENAI_BASE_URL_ENV),
                "context_window_tokens": lambda: (
                    env_number(CONTEXT_ENV, 0, minimum=1024, integer=True)
                    if env_text(CONTEXT_ENV)
                    else None
                ),
                "api_key": lambda: env_text(OPENAI_KEY_ENV),
            }
        )
        return self.model_copy(update={**values, **_llm_limits(self)} | _secret_update(values))

    def build(self, name: str, budget: Budget | None) -> OpenAIAgent:
        return OpenAIAgent.from_settings(name, self, budget=budget)


class OpenAICompatibleSettings(_LLMSettings):
    """`openai-compatible`: any server with the Chat Completions API (Ollama, vLLM, LM Studio).

    None: `NOMIC_OPENAI_BASE_URL`, else `OPENAI_BASE_URL` (one of them, or `base_url`, is
    required); `NOMIC_OPENAI_MODEL` (required); `NOMIC_OPENAI_API_KEY` (optional; with a URL
    of its own — here or in `NOMIC_OPENAI_BASE_URL` — it never receives `OPENAI_API_KEY`);
    `NOMIC_OPENAI_CONTEXT_TOKENS` (default 8192: local models have small windows);
    `NOMIC_OPENAI_STRUCTURED` (json_schema, json_object or text)."""

    backend: ClassVar[str] = "openai-compatible"
    structured: Structured | None = None

    def resolved(self) -> OpenAICompatibleSettings:
        values: dict[str, Any] = {}
        if self.base_url is None:
            own_url = env_text(COMPATIBLE_BASE_URL_ENV)
            values["base_url"] = own_url or env_text(OPENAI_BASE_URL_ENV)
            shared_url = own_url is None
        else:
            shared_url = False
        if self.api_key is None:
            key = env_text(COMPATIBLE_KEY_ENV)
            if key is None and shared_url:  # OpenAI's URL and key go together
                key = env_text(OPENAI_KEY_ENV)
            values["api_key"] = key
        values |= self._fill(
            {
                "model": lambda: env_text(COMPATIBLE_MODEL_ENV),
                "context_window_tokens": lambda: env_number(
                    CONTEXT_ENV, DEFAULT_LOCAL_CONTEXT_TOKENS, minimum=1024, integer=True
                ),
                "structured": _structured_from_env,
            }
        )
        return self.model_copy(update={**values, **_llm_limits(self)} | _secret_update(values))

    def build(self, name: str, budget: Budget | None) -> OpenAIAgent:
        return OpenAIAgent.from_settings(name, self, budget=budget)


class OpenAIAgent(LLMAgent):
    """The protocol over GPT or an OpenAI-compatible server."""

    @classmethod
    def from_env(
        cls,
        name: str = "gpt",
        *,
        compatible: bool = False,
        budget: Budget | None = None,
    ) -> OpenAIAgent:
        settings = OpenAICompatibleSettings() if compatible else OpenAISettings()
        return cls.from_settings(name, settings, budget=budget)

    @classmethod
    def from_settings(
        cls,
        name: str,
        settings: OpenAISettings | OpenAICompatibleSettings,
        *,
        budget: Budget | None = None,
    ) -> OpenAIAgent:
        """The agent from `settings` (None fields from the environment, as `from_env`)."""
        s = settings.resolved()
        key = s.key()
        max_tokens_param: Literal["max_tokens", "max_completion_tokens"]
        if isinstance(s, OpenAICompatibleSettings):
            if not s.base_url:
                raise BadInput(
                    f"agent {name!r} needs the URL of an OpenAI-compatible server and "
                    f"{BASE_URL_ENV} is not set",
                    f"export {BASE_URL_ENV}=http://127.0.0.1:11434/v1 (Ollama; vLLM and LM "
                    f"Studio serve /v1 too), or {COMPATIBLE_BASE_URL_ENV} to keep "
                    f"{BASE_URL_ENV} for the `gpt` agent, or set the `openai_compatible` "
                    "resource's base_url",
                )
            if not s.model:
                raise BadInput(
                    f"agent {name!r} needs a model name and {COMPATIBLE_MODEL_ENV} is not set",
                    f"export {COMPATIBLE_MODEL_ENV}=<the model your server serves, e.g. "
                    "qwen2.5-coder:14b>, or set the `openai_compatible` resource's model",
                )
            structured: Structured = s.structured or "json_schema"
            max_tokens_param = "max_tokens"
        else:
            if not key and not s.base_url:
                raise BadInput(
                    f"agent {name!r} needs an OpenAI API key and {KEY_ENV} is not set",
                    f"export {KEY_ENV}=... (or {BASE_URL_ENV} for a server that needs no key), "
                    "set the `gpt` resource's api_key (e.g. {env: OPENAI_API_KEY}), "
                    "or leave this agent out of the panel",
                )
            structured = "json_schema"
            max_tokens_param = "max_completion_tokens"
        assert s.model and s.max_tokens is not None and s.timeout_s is not None
        assert s.max_retries is not None and s.max_retry_wait_s is not None
        window = s.context_window_tokens
        price = PriceTable().price(s.model, base_url=s.base_url)
        max_tokens = s.max_tokens if window is None else min(s.max_tokens, window // 2)
        backend = OpenAIBackend(
            model=s.model,
            api_key=key,
            base_url=s.base_url,
            max_retries=s.max_retries,
            timeout_s=s.timeout_s,
            max_retry_wait_s=s.max_retry_wait_s,
            context_window_tokens=window,
            structured=structured,
            max_tokens_param=max_tokens_param,
        )
        return cls(
            name,
            backend,
            price,
            max_tokens=max_tokens,
            budget=budget,
            budget_limit_usd=budget_from_env(),
        )


__all__ = ["OpenAIAgent", "OpenAIBackend"]
