"""How each agent backend is configured: one small settings model per backend.

`AnthropicSettings` (`claude`), `OpenAISettings` (`gpt`), `OpenAICompatibleSettings`
(`openai-compatible`: Ollama, vLLM, LM Studio, ...), `ClaudeCodeSettings` (`claude-code`)
and `CodexSettings` (`codex`). A field left at None is read from the environment when the
agent is built (`resolved()`), so `Settings()` behaves exactly like the environment
variables always did, and `Settings.from_env()` is that, resolved. The Dagster resources
(`orchestration/resources.py`) fill in the fields a user set; the domain never imports
Dagster.

API keys: `api_key` is a `SecretStr` excluded from every dump and repr, so a settings
object can be logged or stored without the key; it is only read when the agent's client
(or its CLI process) is built. None means the SDK's own variable (`ANTHROPIC_API_KEY`,
`OPENAI_API_KEY`, ...); a key that is needed and missing is `BadInput` naming that
variable, raised when the panel is built (so only when that agent is in the panel).

A driver hands a name -> settings mapping to `build_agent` / `build_panel` through its
`CycleRuntime` (the Dagster ops build it from their resources in every step's process, so
it holds under the multiprocess executor too); a name with no settings there is read from
the environment.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from nomic_dagster.agents.llm.agent import DEFAULT_MAX_TOKENS, env_number, env_text
from nomic_dagster.core.errors import BadInput

if TYPE_CHECKING:
    from nomic_dagster.agents.base import Agent
    from nomic_dagster.infra.pricing import Budget

# Shared limits of every LLM call (the same variables as before the settings existed).
MAX_TOKENS_ENV = "NOMIC_LLM_MAX_TOKENS"
MAX_RETRIES_ENV = "NOMIC_LLM_MAX_RETRIES"
TIMEOUT_ENV = "NOMIC_LLM_TIMEOUT_S"
MAX_RETRY_WAIT_ENV = "NOMIC_LLM_MAX_RETRY_WAIT_S"

ANTHROPIC_KEY_ENV = "ANTHROPIC_API_KEY"
ANTHROPIC_BASE_URL_ENV = "ANTHROPIC_BASE_URL"
CLAUDE_MODEL_ENV = "NOMIC_CLAUDE_MODEL"
DEFAULT_CLAUDE_MODEL = "claude-sonnet-4-6"
CLAUDE_CONTEXT_WINDOW_TOKENS = 200_000

OPENAI_KEY_ENV = "OPENAI_API_KEY"
OPENAI_BASE_URL_ENV = "OPENAI_BASE_URL"
GPT_MODEL_ENV = "NOMIC_GPT_MODEL"
DEFAULT_GPT_MODEL = "gpt-4.1"
# `openai-compatible` only, so that one panel can hold GPT and a local model:
COMPATIBLE_BASE_URL_ENV = "NOMIC_OPENAI_BASE_URL"
COMPATIBLE_KEY_ENV = "NOMIC_OPENAI_API_KEY"
COMPATIBLE_MODEL_ENV = "NOMIC_OPENAI_MODEL"
CONTEXT_ENV = "NOMIC_OPENAI_CONTEXT_TOKENS"
STRUCTURED_ENV = "NOMIC_OPENAI_STRUCTURED"
DEFAULT_LOCAL_CONTEXT_TOKENS = 8192

CLI_TIMEOUT_ENV = "NOMIC_CLI_AGENT_TIMEOUT_S"
DEFAULT_CLI_TIMEOUT_S = 1200.0
CLAUDE_CODE_BIN_ENV = "NOMIC_CLAUDE_CODE_BIN"
CODEX_BIN_ENV = "NOMIC_CODEX_BIN"

Structured = Literal["json_schema", "json_object", "text"]


def _secret() -> Any:
    # Excluded from model_dump / model_dump_json and hidden from repr: a settings object
    # may be logged or stored, its key never is.
    return Field(default=None, exclude=True, repr=False)


class BackendSettings(BaseModel):
    """Base: None fields come from the environment when the agent is built."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: ClassVar[str]  # the built-in agent name this backend serves by default
    api_key: SecretStr | None = _secret()

    def resolved(self) -> BackendSettings:
        """Every None field filled from the environment or the default; BadInput naming the
        variable for a value that is not usable."""
        raise NotImplementedError

    @classmethod
    def from_env(cls) -> BackendSettings:
        """Today's environment behaviour, resolved."""
        return cls().resolved()

    def key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None

    def build(self, name: str, budget: Budget | None) -> Agent:
        raise NotImplementedError

    def _fill(self, values: dict[str, Callable[[], Any]]) -> dict[str, Any]:
        """The fields this object leaves at None, each from its (lazy) environment lookup, so
        that a variable is only read, and only complained about, when it is used."""
        return {k: get() for k, get in values.items() if getattr(self, k) is None}


def _llm_limits(s: _LLMSettings) -> dict[str, Any]:
    return s._fill(
        {
            "max_tokens": lambda: env_number(
                MAX_TOKENS_ENV, DEFAULT_MAX_TOKENS, minimum=64, integer=True
            ),
            "max_retries": lambda: env_number(MAX_RETRIES_ENV, 3, minimum=0, integer=True),
            "timeout_s": lambda: env_number(TIMEOUT_ENV, 120, minimum=1),
            "max_retry_wait_s": lambda: env_number(MAX_RETRY_WAIT_ENV, 60, minimum=0),
        }
    )


class _LLMSettings(BackendSettings):
    model: str | None = None
    base_url: str | None = None
    max_tokens: int | None = Field(default=None, ge=64)
    timeout_s: float | None = Field(default=None, ge=1)
    max_retries: int | None = Field(default=None, ge=0)
    max_retry_wait_s: float | None = Field(default=None, ge=0)
    context_window_tokens: int | None = Field(default=None, ge=1024)


def _structured_from_env() -> Structured:
    raw = env_text(STRUCTURED_ENV, "json_schema") or "json_schema"
    if raw not in get_args(Structured):
        raise BadInput(
            f"{STRUCTURED_ENV}={raw!r} is not a structured-output mode",
            f"use one of {', '.join(get_args(Structured))}",
        )
    return raw  # type: ignore[return-value]


def _secret_update(values: dict[str, Any]) -> dict[str, Any]:
    """The key as a SecretStr (model_copy does not validate, so it must be converted here)."""
    if "api_key" not in values:
        return {}
    key = values["api_key"]
    return {"api_key": SecretStr(key) if key else None}


class _CLISettings(BackendSettings):
    binary: str | None = None  # None: $<bin env>, else the executable's name on PATH
    timeout_s: float | None = Field(default=None, ge=1)

    executable: ClassVar[str]
    bin_env: ClassVar[str]
    install_hint: ClassVar[str]

    def resolved(self) -> _CLISettings:
        wanted = self.binary or env_text(self.bin_env) or self.executable
        found = shutil.which(wanted)
        if found is None:
            where = (
                "the `binary` setting"
                if self.binary
                else (self.bin_env if os.environ.get(self.bin_env) else "PATH")
            )
            raise BadInput(
                f"agent {self.backend!r} needs the {wanted!r} executable, which was not found"
                + (" on PATH" if where == "PATH" else f" (from {where})"),
                f"{self.install_hint}, or set {self.bin_env} (or the resource's `binary`) to "
                "the executable's path",
            )
        values = self._fill(
            {"timeout_s": lambda: env_number(CLI_TIMEOUT_ENV, DEFAULT_CLI_TIMEOUT_S, minimum=1)}
        )
        return self.model_copy(update={"binary": found, **values})


# Backend name -> the import path of its settings class (one module per backend, which
# imports this one: the registry names them instead of importing them).
SETTINGS_BY_BACKEND: dict[str, str] = {
    "claude": "nomic_dagster.agents.llm.anthropic:AnthropicSettings",
    "gpt": "nomic_dagster.agents.llm.openai:OpenAISettings",
    "openai-compatible": "nomic_dagster.agents.llm.openai:OpenAICompatibleSettings",
    "claude-code": "nomic_dagster.agents.cli_agent:ClaudeCodeSettings",
    "codex": "nomic_dagster.agents.cli_agent:CodexSettings",
}


def settings_class(backend: str) -> type[BackendSettings]:
    """The settings class of a built-in backend (KeyError for another name)."""
    module_name, _, attr = SETTINGS_BY_BACKEND[backend].partition(":")
    return getattr(importlib.import_module(module_name), attr)


__all__ = [
    "SETTINGS_BY_BACKEND",
    "BackendSettings",
    "settings_class",
]
