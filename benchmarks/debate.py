"""What the debate protocol costs, with and without prompt caching, and what it changes.

A scripted panel — `claude` and `gpt`, through the real `anthropic` and `openai` SDK clients
against the loopback servers of `nomic_dagster_tests/fake_llm_servers.py` — debates the
bundled demo repository once per seed, through the real debate phase
(`nomic_dagster.phases.debate.run_debate`) with the default protocol (two critique rounds,
early stop). The scripted models answer from the prompts they are sent: each proposal has a
hidden quality drawn from the seed (a revision raises it); a critic scores what it reads with
seeded noise; a voter weighs its seeded prior against the critiques it is shown; an opposed
proposer revises with a seeded chance. So votes flip when critiques disagree with a prior.

Every seed is run three ways, interleaved: the debate with prompt caching (the shared
context marked `cache_control`; the Anthropic server emulates cache writes and reads), the
same debate with `NOMIC_PROMPT_CACHE=0` (no marker), and the vote-only ballot
(`critique_rounds=0`) for reference. Token counts are the servers' emulation (4 characters a
token), priced by `nomic_dagster.infra.pricing.DEFAULT_PRICES`. The OpenAI prefix cache is
automatic on the provider's side (the server emulates it in every mode); the flag only
changes what Claude is asked to cache.

    python benchmarks/debate.py [--seeds N] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nomic_dagster.agents import build_panel  # noqa: E402
from nomic_dagster.agents.llm.agent import LLMAgent  # noqa: E402
from nomic_dagster.core.records import ConsensusRule, DebateResult, Goal, RepoContext  # noqa: E402
from nomic_dagster.core.settings import CycleSettings  # noqa: E402
from nomic_dagster.infra.pricing import Budget, Usage  # noqa: E402
from nomic_dagster.phases.debate import run_debate  # noqa: E402
from nomic_dagster_tests.support.fake_llm_servers import (  # noqa: E402
    FakeAnthropicServer,
    FakeOpenAIServer,
    RecordedRequest,
    anthropic_tool_message,
    openai_completion,
)
from nomic_dagster_tests.support.repo_builders import build_context, make_repo  # noqa: E402

DEMO = ROOT / "examples" / "demo_repo"
GOAL = Goal(text="Improve the quality of this repository: lint, tests and dead code")
RULE = ConsensusRule.TWO_THIRDS
PANEL = ("claude", "gpt")
KINDS = ("add-tests", "lint-fix", "remove-dead-code", "fix-bug", "docs")
FILES = ("inventory/pricing.py", "inventory/stock.py", "inventory/text.py")
CRITIQUE_LINE = re.compile(
    r"- round (\d+), (\S+) on (\S+) \(revision (\d+)\): (\w+), score ([0-9.]+)"
)


# ---------------------------------------------------------------- the scripted models


def _rng(*key: object) -> random.Random:
    """A generator seeded by `key` alone, so an answer never depends on the call order."""
    digest = hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def _json_after(text: str, marker: str) -> dict[str, Any]:
    start = text.index(marker) + len(marker)
    value, _ = json.JSONDecoder().raw_decode(text[start:].lstrip())
    return value


@dataclass
class ScriptedModel:
    """One seeded model: `answer(step, task)` is its structured output for a prompt."""

    seed: int
    agent: str

    def quality(self, proposal_id: str, revision: int) -> float:
        """The hidden quality every critic perceives (with noise); a revision improves it."""
        return min(1.0, _rng(self.seed, "quality", proposal_id).uniform(0.2, 0.8) + 0.15 * revision)

    def prior(self, proposal_id: str) -> float:
        """What this model thinks of a proposal before any critique (it likes its own)."""
        own = 0.15 if proposal_id.startswith(f"{self.agent}:") else 0.0
        return _rng(self.seed, "prior", self.agent, proposal_id).uniform(0.3, 0.8) + own

    def propose(self, task: str) -> dict[str, Any]:
        r = _rng(self.seed, "propose", self.agent)
        kind = r.choice(KINDS)
        files = sorted(r.sample(FILES, r.randint(1, 2)))
        return {
            "proposals": [
                {
                    "kind": kind,
                    "title": f"{kind} in {', '.join(files)}",
                    "description": f"{self.agent} would {kind} in {', '.join(files)}",
                    "files": files,
                    "evidence": [f"{files[0]} needs it (seed {self.seed})"],
                    "benefit": round(r.uniform(0.3, 0.9), 2),
                    "risk": round(r.uniform(0.05, 0.5), 2),
                    "estimated_lines": r.randint(5, 80),
                }
            ]
        }

    def critique(self, task: str) -> dict[str, Any]:
        proposal = _json_after(task, "proposes:\n")
        pid, revision = proposal["id"], proposal.get("revision", 0)
        rounds_seen = len(set(re.findall(r"- round (\d+),", task)))
        noise = _rng(self.seed, "critique", self.agent, pid, revision, rounds_seen).gauss(0, 0.12)
        score = round(max(0.0, min(1.0, self.quality(pid, revision) + noise)), 2)
        stance = "support" if score >= 0.6 else "oppose" if score < 0.4 else "neutral"
        return {
            "criterion": "overall merit",
            "score": score,
            "stance": stance,
            "comment": f"{pid} revision {revision}: {'worth it' if score >= 0.5 else 'weak'}",
        }

    def vote(self, task: str) -> dict[str, Any]:
        ids = [s.strip() for s in re.search(r"must be one of: (.+)\.", task).group(1).split(",")]
        latest: dict[str, tuple[int, list[float]]] = {}  # id -> (revision, scores of it)
        for _, _, pid, rev, _, score in CRITIQUE_LINE.findall(task):
            seen_rev, scores = latest.get(pid, (-1, []))
            if int(rev) > seen_rev:
                latest[pid] = (int(rev), [float(score)])
            elif int(rev) == seen_rev:
                scores.append(float(score))
        scored = []
        for pid in ids:
            heard = latest.get(pid, (0, []))[1]
            value = self.prior(pid)
            if heard:  # the critiques of the current revision weigh more than the prior
                value = 0.35 * value + 0.65 * statistics.mean(heard)
            scored.append((value, pid))
        scored.sort(reverse=True)
        margin = scored[0][0] - (scored[1][0] if len(scored) > 1 else 0.0)
        return {
            "proposal_id": scored[0][1],
            "confidence": round(max(0.05, min(1.0, 0.5 + margin)), 2),
            "reason": f"{scored[0][1]} scores {scored[0][0]:.2f}",
        }

    def revise(self, task: str) -> dict[str, Any]:
        current = _json_after(task, "Your proposal:\n")
        revision = current.get("revision", 0)
        fields = {
            k: current[k]
            for k in (
                "title",
                "description",
                "files",
                "evidence",
                "benefit",
                "risk",
                "estimated_lines",
            )
        }
        if _rng(self.seed, "revise", self.agent, revision).random() >= 0.6:
            return {"revise": False, "answer": "the critiques do not change my mind", **fields}
        return {
            **fields,
            "revise": True,
            "answer": "narrowed the change and added a test for it",
            "title": f"{current['title']} (revised)",
            "risk": round(current["risk"] * 0.7, 2),
            "benefit": round(min(1.0, current["benefit"] + 0.05), 2),
            "estimated_lines": max(1, int(current["estimated_lines"] * 0.8)),
        }

    def answer(self, step: str | None, task: str) -> dict[str, Any]:
        steps: dict[str, Callable[[str], dict[str, Any]]] = {
            "submit_proposals": self.propose,
            "submit_critique": self.critique,
            "submit_vote": self.vote,
            "submit_revision": self.revise,
        }
        if step not in steps:
            raise ValueError(f"the debate asked for {step!r}")
        return steps[step](task)


def _task(body: dict[str, Any]) -> str:
    last = (body.get("messages") or [{}])[-1].get("content") or ""
    return last if isinstance(last, str) else json.dumps(last)


def anthropic_script(model: ScriptedModel) -> Callable[[dict[str, Any], RecordedRequest], Any]:
    def script(body: dict[str, Any], request: RecordedRequest) -> Any:
        out = model.answer(request.step, _task(body))
        return anthropic_tool_message(request.step or "", out, model=body.get("model", "claude"))

    return script


def openai_script(model: ScriptedModel) -> Callable[[dict[str, Any], RecordedRequest], Any]:
    def script(body: dict[str, Any], request: RecordedRequest) -> Any:
        out = model.answer(request.step, _task(body))
        return openai_completion(json.dumps(out), model=body.get("model", "gpt"))

    return script


# ---------------------------------------------------------------- one cycle


@dataclass
class Cycle:
    seed: int
    mode: str
    result: DebateResult
    usage: dict[str, Usage]  # per agent
    calls: dict[str, int]
    seconds: float
    by_step: dict[str, int] = field(default_factory=dict)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_one(context: RepoContext, seed: int, mode: str) -> Cycle:
    settings = CycleSettings(critique_rounds=0 if mode == "vote-only" else 2)
    claude, gpt = ScriptedModel(seed, "claude"), ScriptedModel(seed, "gpt")
    with (
        FakeAnthropicServer(anthropic_script(claude)) as anthropic_server,
        FakeOpenAIServer(openai_script(gpt)) as openai_server,
        environment(
            {
                "ANTHROPIC_API_KEY": "sk-ant-benchmark-not-a-key",
                "ANTHROPIC_BASE_URL": anthropic_server.base_url,
                "OPENAI_API_KEY": "sk-benchmark-not-a-key-0000",
                "OPENAI_BASE_URL": openai_server.base_url,
                "NOMIC_PROMPT_CACHE": "0" if mode == "debate, no prompt cache" else "1",
                "NOMIC_LLM_MAX_RETRIES": "0",
            }
        ),
    ):
        panel = build_panel(list(PANEL), budget=Budget(None))
        start = time.perf_counter()
        result = run_debate(context, GOAL, panel, RULE, settings)
        seconds = time.perf_counter() - start
    usage: dict[str, Usage] = {}
    calls: dict[str, int] = {}
    by_step: dict[str, int] = {}
    for agent in panel:
        assert isinstance(agent, LLMAgent)
        total = Usage()
        for call in agent.usage:
            total = total + call.usage
            by_step[call.step] = by_step.get(call.step, 0) + 1
        usage[agent.name], calls[agent.name] = total, len(agent.usage)
    if result.agent_failures:
        raise SystemExit(f"seed {seed}, {mode}: an agent failed: {result.agent_failures}")
    return Cycle(seed, mode, result, usage, calls, seconds, by_step)


MODES = ("debate, prompt cache", "debate, no prompt cache", "vote-only")


def measure(context: RepoContext, seeds: int) -> dict[str, list[Cycle]]:
    results: dict[str, list[Cycle]] = {m: [] for m in MODES}
    for seed in range(seeds):
        for mode in MODES:  # interleaved, so drift on the machine hits every mode alike
            results[mode].append(run_one(context, seed, mode))
        print(f"  seed {seed}: done", file=sys.stderr)
    return results


# ---------------------------------------------------------------- the report


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def _usage_of(c: Cycle, agent: str) -> tuple[int, Usage]:
    """(calls, usage) of one agent in a cycle, or of the whole panel for "total"."""
    if agent != "total":
        return c.calls[agent], c.usage[agent]
    total = Usage()
    for u in c.usage.values():
        total = total + u
    return sum(c.calls.values()), total


def cost_table(results: dict[str, list[Cycle]]) -> str:
    rows = [
        "| mode | agent | calls | input | cache write | cache read | output | USD |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, cycles in results.items():
        for agent in (*PANEL, "total"):
            picked = [_usage_of(c, agent) for c in cycles]
            u = [p[1] for p in picked]
            name = f"**{agent}**" if agent == "total" else agent
            rows.append(
                f"| {mode} | {name} | {_mean([p[0] for p in picked]):.1f} | "
                f"{_mean([x.input_tokens for x in u]):,.0f} | "
                f"{_mean([x.cache_write_tokens for x in u]):,.0f} | "
                f"{_mean([x.cache_read_tokens for x in u]):,.0f} | "
                f"{_mean([x.output_tokens for x in u]):,.0f} | "
                f"${_mean([x.usd for x in u]):.4f} |"
            )
    return "\n".join(rows)


def _share(debates: list[DebateResult], pred: Callable[[DebateResult], bool]) -> str:
    hits = sum(1 for d in debates if pred(d))
    return f"{hits}/{len(debates)} ({hits / len(debates):.0%})"


def _same_outcome(d: DebateResult) -> bool:
    """The decision under the rule (a winner or none) is the vote-only ballot's own."""
    c = d.consensus
    vote_only = c.vote_only_winner_id if c.vote_only_reached else None
    return (c.winner_id if c.reached else None) == vote_only


def outcome_table(results: dict[str, list[Cycle]]) -> str:
    rows = [
        "| mode | critique rounds run (mean) | stopped early | flips / cycle | revisions / cycle "
        "| consensus | vote-only consensus | same proposal as vote-only | same outcome as vote-only |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, cycles in results.items():
        debates = [c.result for c in cycles]
        rows.append(
            f"| {mode} | {_mean([len(d.rounds) - 1 for d in debates]):.2f} | "
            f"{_share(debates, lambda d: d.consensus.early_stopped_after is not None)} | "
            f"{_mean([sum(len(r.flips) for r in d.rounds) for d in debates]):.2f} | "
            f"{_mean([sum(len(r.revisions) for r in d.rounds) for d in debates]):.2f} | "
            f"{_share(debates, lambda d: d.consensus.reached)} | "
            f"{_share(debates, lambda d: d.consensus.vote_only_reached)} | "
            f"{_share(debates, lambda d: not d.consensus.changed_by_debate)} | "
            f"{_share(debates, _same_outcome)} |"
        )
    return "\n".join(rows)


def write_section(out: Path, body: str) -> None:
    marker_start, marker_end = "<!-- debate.py:start -->", "<!-- debate.py:end -->"
    text = out.read_text() if out.exists() else "# Benchmarks\n"
    section = f"{marker_start}\n{body}\n{marker_end}"
    if marker_start in text:
        before, rest = text.split(marker_start, 1)
        text = before + section + rest.split(marker_end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    out.write_text(text)


def demo_context(base: Path) -> RepoContext:
    files = {
        str(p.relative_to(DEMO)): p.read_text()
        for p in sorted(DEMO.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }
    return build_context(make_repo(base / "demo", files))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=20, help="cycles per mode (one per seed)")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nomic-bench-debate-") as tmp:
        context = demo_context(Path(tmp))
        started = time.perf_counter()
        results = measure(context, args.seeds)
        wall = time.perf_counter() - started
    cached, uncached = results["debate, prompt cache"], results["debate, no prompt cache"]
    usd_cached = _mean([sum(u.usd for u in c.usage.values()) for c in cached])
    usd_uncached = _mean([sum(u.usd for u in c.usage.values()) for c in uncached])
    claude_cached = _mean([c.usage["claude"].usd for c in cached])
    claude_uncached = _mean([c.usage["claude"].usd for c in uncached])
    same = [
        c.result.consensus.changed_by_debate == u.result.consensus.changed_by_debate
        and c.result.consensus.winner_id == u.result.consensus.winner_id
        for c, u in zip(cached, uncached, strict=True)
    ]
    body = (
        "## The debate protocol: cost per cycle and what it changes (`benchmarks/debate.py`)\n\n"
        f"Command: `python benchmarks/debate.py --seeds {args.seeds}` — "
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.python_implementation()} "
        f"{platform.python_version()}, {os.cpu_count()} cores; {wall:.0f} s for "
        f"{args.seeds * len(MODES)} debates. One debate per seed and mode, modes interleaved: "
        "the scripted panel `claude` + `gpt` (real SDK clients, loopback servers, answers drawn "
        "from the seed and from what each prompt shows), the real `run_debate` with the "
        f"default protocol ({RULE.value}, 2 critique rounds, early stop) on the context of "
        "`examples/demo_repo`. Tokens are the servers' emulation (4 characters a token), "
        "priced by the built-in table (claude-sonnet-4-6, gpt-4.1); means per cycle.\n\n"
        f"{cost_table(results)}\n\n"
        f"Prompt caching cuts the debate's mean cost per cycle from ${usd_uncached:.4f} to "
        f"${usd_cached:.4f} ({1 - usd_cached / usd_uncached:.0%}; claude alone: "
        f"${claude_uncached:.4f} → ${claude_cached:.4f}, "
        f"{1 - claude_cached / claude_uncached:.0%}). gpt's rows barely move: OpenAI caches "
        "prefixes by itself (emulated in every mode), `NOMIC_PROMPT_CACHE` only changes what "
        f"Claude is asked to cache. The answers do not depend on caching: {sum(same)}/{len(same)} "
        "cycles decided the same with and without it.\n\n"
        f"{outcome_table(results)}\n\n"
        '"Same proposal": the proposal the debate settled on (its winner, else the final '
        'leader) is the vote-only ballot\'s leader (`not changed_by_debate`). "Same outcome": '
        "the decision under the rule — a winner, or no consensus — is the one the vote-only "
        "ballot alone would have made. The vote-only row is the ballot alone (its "
        "counterfactual is itself)."
    )
    write_section(args.out, body)
    print(body)


if __name__ == "__main__":
    main()
