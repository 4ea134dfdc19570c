"""A clean LLM environment for tests that talk to the loopback servers: no key, base URL,
model, budget or price from the developer's shell, and no budget left from another test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

LLM_ENV = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "NOMIC_AGENTS",
    "NOMIC_CLAUDE_MODEL",
    "NOMIC_GPT_MODEL",
    "NOMIC_OPENAI_MODEL",
    "NOMIC_OPENAI_BASE_URL",
    "NOMIC_OPENAI_API_KEY",
    "NOMIC_OPENAI_CONTEXT_TOKENS",
    "NOMIC_OPENAI_STRUCTURED",
    "NOMIC_PROMPT_CACHE",
    "NOMIC_LLM_MAX_TOKENS",
    "NOMIC_LLM_MAX_RETRIES",
    "NOMIC_LLM_TIMEOUT_S",
    "NOMIC_LLM_MAX_RETRY_WAIT_S",
    "NOMIC_BUDGET_USD",
    "NOMIC_PRICES",
)


def clean_llm_env(monkeypatch: pytest.MonkeyPatch, max_retries: int = 0) -> Iterator[None]:
    """For a fixture: `yield from clean_llm_env(monkeypatch)`."""
    for name in LLM_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NOMIC_LLM_MAX_RETRIES", str(max_retries))
    monkeypatch.setenv("NOMIC_LLM_TIMEOUT_S", "20")
    yield
