"""CLI coding agents (`claude -p`, `codex exec`) as implementers inside the cycle's worktree.

A CLI agent is an *implementer*: it proposes nothing (`propose` returns []) and takes part
in the debate the way an offline agent does, by arithmetic over the evidence in the
proposals (criterion "size": small diffs are easy to review and to revert). Its `implement`
runs the CLI non-interactively in the worktree — stdin closed, cwd the worktree, the whole
process group killed at `$NOMIC_CLI_AGENT_TIMEOUT_S` (default 1200 s) — with a prompt built
from the design. Another agent can hand its winning design to a CLI agent by calling its
`implement`, passing on its own `budget` (see the tests' delegating proposer). The CLI never commits; the loop's verify
gates judge the final diff whatever the CLI reports.

The executable is found on PATH (`claude`, `codex`) or given by `$NOMIC_CLAUDE_CODE_BIN` /
`$NOMIC_CODEX_BIN` (or the settings' `binary`: `ClaudeCodeSettings` / `CodexSettings` in
`agents/backends.py`, filled in by the Dagster resources); a missing one is BadInput when
the panel is built. Subprocesses get `tools.tool_env` (which withholds every secret) plus
only this agent's own API key. The cost the CLI reports (`total_cost_usd` for claude, token
usage events for codex) is recorded as an `LLMCall` in `agent.usage` and in the budget.

Budget: the agent draws on the budget it was built with (the phase's budget, given by the
registry), else on one of its own from `$NOMIC_BUDGET_USD`. When that budget has a limit, `claude -p`
gets `--max-budget-usd <what is left>` (print mode's own spend cap); that amount is
reserved before the run and settled with the reported `total_cost_usd` after. `codex exec`
has no such flag: a spent budget refuses the run before it starts, and what it reports is
counted after (tokens only: codex reports no USD), so one codex run can cross the limit.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, ClassVar

from nomic_dagster.agents.backends import (
    CLAUDE_CODE_BIN_ENV,
    CLI_TIMEOUT_ENV,
    CODEX_BIN_ENV,
    DEFAULT_CLI_TIMEOUT_S,
    _CLISettings,
)
from nomic_dagster.agents.base import WorkArea
from nomic_dagster.agents.llm.agent import env_number, redact
from nomic_dagster.agents.offline.common import Criterion, OfflineAgent
from nomic_dagster.core.errors import BudgetExhausted, ImplementationFailed
from nomic_dagster.core.records import Design, Goal, Proposal, RepoContext
from nomic_dagster.core.usage import LLMCall, Usage
from nomic_dagster.infra.pricing import Budget, budget_from_env
from nomic_dagster.sandbox.commands import CommandResult, run_command

log = logging.getLogger(__name__)


TIMEOUT_ENV = CLI_TIMEOUT_ENV
DEFAULT_TIMEOUT_S = DEFAULT_CLI_TIMEOUT_S


def cli_timeout_s() -> float:
    return float(env_number(TIMEOUT_ENV, DEFAULT_TIMEOUT_S, minimum=1))


def build_prompt(design: Design, protected: list[str]) -> str:
    """The task for the CLI: the design, and the rules the loop's gates will enforce anyway."""
    files = "\n".join(f"- {f}" for f in design.files) or "- (none named)"
    steps = "\n".join(f"{i}. {s}" for i, s in enumerate(design.steps, 1)) or "1. (see title)"
    guarded = ", ".join(protected) or "(none)"
    return (
        f"Implement this change in the current directory (a git worktree).\n\n"
        f"Title: {design.title}\n\nFiles to edit:\n{files}\n\nSteps:\n{steps}\n\n"
        f"Test plan: {design.test_plan}\n\nRationale: {design.rationale}\n\n"
        "Rules:\n"
        "- Edit only the files listed above.\n"
        "- Do not commit, do not create branches, do not run git commands that change history.\n"
        f"- Do not touch protected paths: {guarded}.\n"
        "- Do not delete or skip tests.\n"
        "When done, reply with one line summarising the change."
    )


class CLIResult:
    """What one CLI run reported: its final text, whether it says it failed, its cost."""

    def __init__(self, text: str, is_error: bool, usage: Usage | None, model: str) -> None:
        self.text = text
        self.is_error = is_error
        self.usage = usage
        self.model = model


class ClaudeCodeSettings(_CLISettings):
    """`claude-code`: `claude -p` in the worktree. None: `$NOMIC_CLAUDE_CODE_BIN` or `claude` on
    PATH; `NOMIC_CLI_AGENT_TIMEOUT_S` (default 1200); the key: `ANTHROPIC_API_KEY` or
    `ANTHROPIC_AUTH_TOKEN` as the CLI finds them (or its own login). With a budget limit,
    the run gets `--max-budget-usd <what is left of the budget>`."""

    backend: ClassVar[str] = "claude-code"
    executable: ClassVar[str] = "claude"
    bin_env: ClassVar[str] = CLAUDE_CODE_BIN_ENV
    install_hint: ClassVar[str] = (
        "install Claude Code (npm install -g @anthropic-ai/claude-code) and log in or set "
        "ANTHROPIC_API_KEY"
    )

    def build(self, name: str, budget: Budget | None) -> CLIAgent:
        return ClaudeCodeAgent.from_settings(self, budget=budget)


class CodexSettings(_CLISettings):
    """`codex`: `codex exec` in the worktree. None: `$NOMIC_CODEX_BIN` or `codex` on PATH;
    `NOMIC_CLI_AGENT_TIMEOUT_S`; the key: `OPENAI_API_KEY` or `CODEX_API_KEY` (or its own
    login). Codex has no spend cap of its own: the budget is checked before the run (a spent
    budget refuses it) and its reported tokens are recorded after."""

    backend: ClassVar[str] = "codex"
    executable: ClassVar[str] = "codex"
    bin_env: ClassVar[str] = CODEX_BIN_ENV
    install_hint: ClassVar[str] = (
        "install the Codex CLI (npm install -g @openai/codex) and log in or set OPENAI_API_KEY"
    )

    def build(self, name: str, budget: Budget | None) -> CLIAgent:
        return CodexAgent.from_settings(self, budget=budget)


class CLIAgent(OfflineAgent):
    """Base for CLI coding agents; subclasses give the command line and the output parser."""

    kind: ClassVar[str] = "cli-implement"
    criterion: ClassVar[Criterion] = "size"
    provider: ClassVar[str]
    executable: ClassVar[str]  # the name looked up on PATH
    bin_env: ClassVar[str]  # overrides the executable
    key_envs: ClassVar[tuple[str, ...]]  # the agent's own credentials, passed to its process
    install_hint: ClassVar[str]
    settings_class: ClassVar[type[_CLISettings]]
    caps_spend: ClassVar[bool] = False  # the CLI takes a USD cap of its own (argv max_budget_usd)

    def __init__(
        self,
        binary: str | None = None,
        timeout_s: float | None = None,
        *,
        budget: Budget | None = None,
        api_key: str | None = None,
    ) -> None:
        self.binary = binary or self.find_binary()
        self.timeout_s = timeout_s if timeout_s is not None else cli_timeout_s()
        self.budget = budget
        self._api_key = api_key or None
        self.usage: list[LLMCall] = []

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}(name={self.name!r}, binary={self.binary!r})"

    @classmethod
    def from_settings(cls, settings: _CLISettings, *, budget: Budget | None = None) -> CLIAgent:
        s = settings.resolved()
        return cls(s.binary, s.timeout_s, budget=budget, api_key=s.key())

    @classmethod
    def find_binary(cls) -> str:
        found = cls.settings_class().resolved().binary
        assert found is not None
        return found

    @property
    def total_usage(self) -> Usage:
        total = Usage()
        for call in self.usage:
            total = total + call.usage
        return total

    # ------------------------------------------------------------ debate: an implementer

    def propose(self, context: RepoContext, goal: Goal) -> list[Proposal]:
        return []  # an implementer: it carries out designs, it does not originate them

    def plan_steps(self, proposal: Proposal) -> list[str]:
        return [proposal.description or proposal.title]

    # ------------------------------------------------------------ implement

    @classmethod
    def argv(
        cls, binary: str, prompt: str, worktree: Path, max_budget_usd: float | None = None
    ) -> list[str]:
        """The command line; `max_budget_usd` only for CLIs that cap their own spend."""
        raise NotImplementedError

    @classmethod
    def parse(cls, stdout: str) -> CLIResult:
        raise NotImplementedError

    def _keys(self) -> dict[str, str]:
        """The credentials its process gets: the configured key, else its own variables."""
        if self._api_key:
            return {self.key_envs[0]: self._api_key}
        return {k: os.environ[k] for k in self.key_envs if os.environ.get(k)}

    def _secrets(self) -> list[str]:
        return list(self._keys().values())

    def _spend_cap(self, budget: Budget, what: str) -> float:
        """What this run may spend: all that is left of a limited budget, for a CLI that caps
        its own spend; 0 otherwise (the reservation then only refuses a spent budget)."""
        left = budget.remaining_usd
        if left is None or not self.caps_spend:
            return 0.0
        cap = math.floor(left * 10_000) / 10_000  # rounded down: the cap must not exceed it
        if cap <= 0:
            raise BudgetExhausted(budget.limit_usd or 0.0, budget.spent_usd, 0.0001, what)
        return cap

    def implement(self, design: Design, area: WorkArea) -> str:
        prompt = build_prompt(design, list(area.settings.protected_paths))
        if self.budget is None:  # used outside a cycle: a budget of its own, as configured
            self.budget = Budget(budget_from_env())
        budget = self.budget
        what = f"{self.name} implement"
        cap = self._spend_cap(budget, what)
        reservation = budget.reserve(cap, what)  # refused once spent
        call = LLMCall(
            agent=self.name,
            provider=self.provider,
            model=self.executable,
            step="implement",
            usage=Usage(),
            worst_case_usd=cap,
        )
        ran = False  # once the CLI ran, an unreported cost is charged at its cap
        try:
            try:
                ran = True
                res = run_command(
                    self.argv(self.binary, prompt, area.worktree, cap or None),
                    area.worktree,
                    self.timeout_s,
                    scratch=area.scratch,
                    env_extra=self._keys(),
                )
            except OSError as exc:  # vanished or not executable since the panel was built
                ran = False
                raise self._failed(call, f"could not start {self.binary}: {exc}") from None
            if res.timed_out:
                raise self._failed(
                    call,
                    f"timed out after {self.timeout_s:g}s ({TIMEOUT_ENV}); "
                    "it was killed with every process it started",
                )
            return self._finish(call, res, design)
        except ImplementationFailed as exc:
            call.ok, call.error = False, str(exc)[:500]
            raise
        finally:
            if ran and cap and call.usage == Usage():  # it ran, its cost unknown: the cap
                call.usage = Usage(usd=cap)
            budget.settle(reservation, call.usage.usd)
            budget.record(call)
            self.usage.append(call)

    def _failed(self, call: LLMCall, detail: str) -> ImplementationFailed:
        return ImplementationFailed(redact(f"{self.name}: {detail}", self._secrets()))

    def _finish(self, call: LLMCall, res: CommandResult, design: Design) -> str:
        parsed = self.parse(res.stdout)
        if parsed.usage is not None:
            call.usage = parsed.usage  # LLMCall is not frozen; `finally` records it
        call.model = parsed.model or call.model
        if parsed.is_error or not res.ok:
            why = parsed.text.strip() or res.stderr.strip()[-1000:] or "no output"
            raise self._failed(call, f"reported an error (exit {res.exit_code}): {why[:1000]}")
        lines = [line for line in parsed.text.strip().splitlines() if line.strip()]
        summary = lines[-1].strip() if lines else design.title
        log.info("%s implemented %r: $%.6f", self.name, design.title, call.usage.usd)
        return redact(summary[:500], self._secrets())


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    out = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


class ClaudeCodeAgent(CLIAgent):
    """`claude -p <prompt> --output-format json --permission-mode acceptEdits`."""

    name: ClassVar[str] = "claude-code"
    provider: ClassVar[str] = "claude-code"
    executable: ClassVar[str] = "claude"
    bin_env: ClassVar[str] = "NOMIC_CLAUDE_CODE_BIN"
    key_envs: ClassVar[tuple[str, ...]] = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
    install_hint: ClassVar[str] = ClaudeCodeSettings.install_hint
    settings_class: ClassVar[type[_CLISettings]] = ClaudeCodeSettings
    caps_spend: ClassVar[bool] = True

    @classmethod
    def argv(
        cls, binary: str, prompt: str, worktree: Path, max_budget_usd: float | None = None
    ) -> list[str]:
        argv = [binary, "-p", prompt, "--output-format", "json", "--permission-mode", "acceptEdits"]
        if max_budget_usd is not None:  # print mode's own spend cap (claude -p only)
            argv += ["--max-budget-usd", f"{max_budget_usd:.4f}"]
        return argv

    @classmethod
    def parse(cls, stdout: str) -> CLIResult:
        """The JSON result object (or the last `result` entry of a list / JSONL stream)."""
        try:
            loaded = json.loads(stdout)
            items = loaded if isinstance(loaded, list) else [loaded]
        except json.JSONDecodeError:
            items = _json_lines(stdout)
        results = [
            i for i in items if isinstance(i, dict) and ("result" in i or i.get("type") == "result")
        ]
        result = results[-1] if results else None
        if result is None:
            return CLIResult(stdout.strip()[-1000:], True, None, "")
        raw = result.get("usage") or {}
        cost = result.get("total_cost_usd")
        usage = None
        if cost is not None or raw:
            usage = Usage(
                input_tokens=int(raw.get("input_tokens") or 0),
                output_tokens=int(raw.get("output_tokens") or 0),
                cache_read_tokens=int(raw.get("cache_read_input_tokens") or 0),
                cache_write_tokens=int(raw.get("cache_creation_input_tokens") or 0),
                usd=round(float(cost or 0.0), 8),
            )
        models = result.get("modelUsage")
        model = next(iter(models), "") if isinstance(models, dict) else ""
        return CLIResult(
            str(result.get("result") or ""), bool(result.get("is_error")), usage, model
        )


class CodexAgent(CLIAgent):
    """`codex exec --json --sandbox workspace-write -C <worktree> <prompt>`."""

    name: ClassVar[str] = "codex"
    provider: ClassVar[str] = "codex"
    executable: ClassVar[str] = "codex"
    bin_env: ClassVar[str] = "NOMIC_CODEX_BIN"
    key_envs: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY", "CODEX_API_KEY")
    install_hint: ClassVar[str] = CodexSettings.install_hint
    settings_class: ClassVar[type[_CLISettings]] = CodexSettings

    @classmethod
    def argv(
        cls, binary: str, prompt: str, worktree: Path, max_budget_usd: float | None = None
    ) -> list[str]:
        # `codex exec` has no spend cap: `max_budget_usd` is never given (caps_spend False).
        return [
            binary,
            "exec",
            "--json",
            "--sandbox",
            "workspace-write",
            "-C",
            str(worktree),
            prompt,
        ]

    @classmethod
    def parse(cls, stdout: str) -> CLIResult:
        """JSONL events: `item.completed` agent messages, `turn.completed` usage,
        `turn.failed` / `error`. Codex reports tokens, not USD: the cost stays 0 unless priced."""
        text, errors, usage, model = "", [], None, ""
        for ev in _json_lines(stdout):
            kind = ev.get("type", "")
            item = ev.get("item") or {}
            if kind == "item.completed" and item.get("type") in (
                "agent_message",
                "assistant_message",
            ):
                text = str(item.get("text") or text)
            elif kind == "turn.completed" and isinstance(ev.get("usage"), dict):
                u = ev["usage"]
                cached = int(u.get("cached_input_tokens") or 0)
                turn = Usage(
                    input_tokens=max(0, int(u.get("input_tokens") or 0) - cached),
                    output_tokens=int(u.get("output_tokens") or 0),
                    cache_read_tokens=cached,
                )
                usage = turn if usage is None else usage + turn
            elif kind == "turn.failed":
                errors.append(str((ev.get("error") or {}).get("message") or "turn failed"))
            elif kind == "error":
                errors.append(str(ev.get("message") or "error"))
            model = str(ev.get("model") or model)
        if errors:
            return CLIResult("; ".join(errors), True, usage, model)
        if not text and not _json_lines(stdout):
            text = stdout.strip()  # not JSONL (an old codex): its final message is stdout
        return CLIResult(text, False, usage, model)


__all__ = ["CLIAgent", "ClaudeCodeAgent", "CodexAgent", "build_prompt", "cli_timeout_s"]
