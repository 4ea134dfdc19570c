"""Resources shared by the cycle ops: the state folder, and one resource per agent backend.

The agent backends (`claude`, `gpt`, `openai_compatible`, `claude_code`, `codex`) are
`ConfigurableResource`s whose fields mirror the domain settings in
`nomic_dagster.agents.backends`. Every field is optional: empty (or 0) means "as the
environment says", exactly as without Dagster (`ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL`,
`NOMIC_CLAUDE_MODEL`, ...). So the default resources need no key and no variable, and the
offline demo runs as it is; a key is only looked for when its agent is in the panel, and a
missing one ends the cycle with bad input naming the variable.

Set the key with `EnvVar` so that the run config and the UI hold the variable's name, never
its value:

```yaml
resources:
  claude:
    config:
      api_key: {env: ANTHROPIC_API_KEY}
      model: claude-sonnet-4-6
```

or in Python, `build_defs({"claude": AnthropicResource(api_key=dg.EnvVar("ANTHROPIC_API_KEY"))})`.
A run-config block for a resource replaces its whole configuration: restate `api_key` there.

How the settings reach the phases: every phase op requires these resources and builds its
step's `CycleRuntime` from them (`backend_settings(context.resources)`), which it passes to
`run_phase`. Dagster initialises resources in every step process, so this holds under the
multiprocess executor.
"""

from __future__ import annotations

from typing import Any, Literal

import dagster as dg
from pydantic import Field, ValidationError

from nomic_dagster.agents.backends import BackendSettings
from nomic_dagster.agents.cli_agent import ClaudeCodeSettings, CodexSettings
from nomic_dagster.agents.llm.anthropic import AnthropicSettings
from nomic_dagster.agents.llm.openai import OpenAICompatibleSettings, OpenAISettings
from nomic_dagster.core.errors import BadInput


class NomicResource(dg.ConfigurableResource):
    """Where nomic keeps worktrees, clones, demo copies and the cycle history.

    Empty state_dir: $NOMIC_STATE_DIR, else $DAGSTER_HOME/nomic, else .dagster_home/nomic
    of the nomic_dagster checkout, else ~/.local/state/nomic_dagster (see
    `nomic_dagster.core.settings.state_dir`).
    """

    state_dir: str = ""


def _set(values: dict[str, Any]) -> dict[str, Any]:
    """The fields a user set: empty strings and zeros mean "from the environment"."""
    return {k: v for k, v in values.items() if v not in ("", 0, None)}


class _BackendResource(dg.ConfigurableResource):
    """Base of the agent backend resources; `settings()` is what the domain sees."""

    api_key: str = Field(
        default="",
        repr=False,  # a resource may be printed (tracebacks, logs): never its key
        description="The API key; set it with EnvVar / {env: VAR} so that only the variable's "
        "name is stored. Empty: the backend's own variable (ANTHROPIC_API_KEY, OPENAI_API_KEY, "
        "...), read only when the agent is in the panel.",
    )

    def settings(self) -> BackendSettings:
        raise NotImplementedError


class _LLMResource(_BackendResource):
    model: str = Field(default="", description="Model name. Empty: the backend's variable/default.")
    base_url: str = Field(
        default="", description="API base URL (a proxy, a gateway, a local server). Empty: env."
    )
    max_tokens: int = Field(
        default=0, description="Output limit per call. 0: NOMIC_LLM_MAX_TOKENS."
    )
    timeout_s: float = Field(default=0, description="Per-request timeout. 0: NOMIC_LLM_TIMEOUT_S.")
    max_retries: int = Field(
        default=-1, description="SDK retries per call. -1: NOMIC_LLM_MAX_RETRIES (default 3)."
    )
    context_window_tokens: int = Field(
        default=0, description="The model's context window, to fit prompts. 0: the default."
    )

    def _llm_values(self) -> dict[str, Any]:
        values = _set(
            {
                "model": self.model,
                "base_url": self.base_url,
                "max_tokens": self.max_tokens,
                "timeout_s": self.timeout_s,
                "context_window_tokens": self.context_window_tokens,
                "api_key": self.api_key,
            }
        )
        if self.max_retries >= 0:  # 0 retries is a real choice, unlike 0 tokens
            values["max_retries"] = self.max_retries
        return values


class AnthropicResource(_LLMResource):
    """The `claude` agent: Claude through the Anthropic Messages API."""

    def settings(self) -> AnthropicSettings:
        return AnthropicSettings(**self._llm_values())


class OpenAIResource(_LLMResource):
    """The `gpt` agent: OpenAI's Chat Completions API."""

    def settings(self) -> OpenAISettings:
        return OpenAISettings(**self._llm_values())


class OpenAICompatibleResource(_LLMResource):
    """The `openai-compatible` agent: a local or hosted OpenAI-compatible server (Ollama,
    vLLM, LM Studio). Its `base_url` and `model` are required, here or in
    NOMIC_OPENAI_BASE_URL / OPENAI_BASE_URL and NOMIC_OPENAI_MODEL; the context window
    defaults to 8192 tokens."""

    structured: Literal["", "json_schema", "json_object", "text"] = Field(
        default="",
        description="Structured output: json_schema, json_object or text. Empty: "
        "NOMIC_OPENAI_STRUCTURED, else json_schema.",
    )

    def settings(self) -> OpenAICompatibleSettings:
        return OpenAICompatibleSettings(
            **self._llm_values(), **_set({"structured": self.structured})
        )


class _CLIResource(_BackendResource):
    binary: str = Field(
        default="", description="The executable (a path or a name on PATH). Empty: env, then PATH."
    )
    timeout_s: float = Field(
        default=0, description="Kill the run after this many seconds. 0: NOMIC_CLI_AGENT_TIMEOUT_S."
    )

    def _cli_values(self) -> dict[str, Any]:
        return _set({"binary": self.binary, "timeout_s": self.timeout_s, "api_key": self.api_key})


class ClaudeCodeResource(_CLIResource):
    """The `claude-code` agent: `claude -p` implements in the worktree; with a cycle budget
    it gets `--max-budget-usd` (what is left of the budget)."""

    def settings(self) -> ClaudeCodeSettings:
        return ClaudeCodeSettings(**self._cli_values())


class CodexResource(_CLIResource):
    """The `codex` agent: `codex exec` implements in the worktree (no spend cap of its own)."""

    def settings(self) -> CodexSettings:
        return CodexSettings(**self._cli_values())


# Resource key -> the agent name it configures (resource keys cannot hold "-").
AGENT_RESOURCES: dict[str, str] = {
    "claude": "claude",
    "gpt": "gpt",
    "openai_compatible": "openai-compatible",
    "claude_code": "claude-code",
    "codex": "codex",
}
AGENT_RESOURCE_KEYS: frozenset[str] = frozenset(AGENT_RESOURCES)


def default_agent_resources() -> dict[str, _BackendResource]:
    """The backends with nothing set: everything from the environment, no key required."""
    return {
        "claude": AnthropicResource(),
        "gpt": OpenAIResource(),
        "openai_compatible": OpenAICompatibleResource(),
        "claude_code": ClaudeCodeResource(),
        "codex": CodexResource(),
    }


def backend_settings(resources: Any) -> dict[str, BackendSettings]:
    """Agent name -> settings from an op's `context.resources`; a value the settings refuse
    (e.g. max_tokens below 64) is BadInput naming the resource and the field."""
    out: dict[str, BackendSettings] = {}
    for key, agent in AGENT_RESOURCES.items():
        if not hasattr(resources, key):
            continue
        try:
            out[agent] = getattr(resources, key).settings()
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise BadInput(
                f"the {key!r} resource's configuration is not usable: {problems}",
                f"fix those fields under resources.{key}.config (0 or empty means the default)",
            ) from None
    return out
