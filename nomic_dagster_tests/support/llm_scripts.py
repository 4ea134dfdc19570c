"""Scripted models for the loopback LLM servers: what a model "says" at each protocol step.

A script maps a step (the tool or schema name the client asked for: submit_proposals,
submit_critique, submit_vote, submit_design, submit_edits) to an answer: a dict (the
structured output), a `Reply` (a failure), a callable of the request body, or a list of
those, used in turn (the last one repeats). The Anthropic flavour answers with a
`tool_use` block, the OpenAI flavour with JSON content (or, `as_text`, with prose around
fenced JSON, as a local model that ignores structured output does).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from nomic_dagster_tests.support.fake_llm_servers import (
    RecordedRequest,
    Reply,
    anthropic_tool_message,
    openai_completion,
)

Answer = dict[str, Any] | Reply | Callable[[dict[str, Any]], "dict[str, Any] | Reply"]

OPS = "def add(a, b):\n    return a + b\n\n\ndef double(x):\n    return 2 * x\n"
CALC_REPO = {
    "calc/__init__.py": "",
    "calc/ops.py": OPS,
    "tests/test_ops.py": (
        "from calc.ops import add, double\n\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n\n\n"
        "def test_double():\n    assert double(4) == 8\n"
    ),
}


class Steps:
    """Answers by step; counts how often each step was asked."""

    def __init__(self, **steps: Answer | list[Answer]) -> None:
        self.steps = dict(steps)
        self.asked: Counter[str] = Counter()

    def answer(self, step: str | None, body: dict[str, Any]) -> dict[str, Any] | Reply:
        key = step or "text"
        if key not in self.steps:
            return Reply(status=400, body={"error": {"message": f"no scripted answer for {key}"}})
        n = self.asked[key]
        self.asked[key] += 1
        entry = self.steps[key]
        if isinstance(entry, list):
            entry = entry[min(n, len(entry) - 1)]
        return entry(body) if callable(entry) else entry


def anthropic_script(steps: Steps) -> Callable[[dict[str, Any], RecordedRequest], Any]:
    def script(body: dict[str, Any], request: RecordedRequest) -> Any:
        step = request.step
        out = steps.answer(step, body)
        if isinstance(out, Reply):
            return out
        return anthropic_tool_message(step or "none", out, model=body.get("model", "claude"))

    return script


def openai_script(
    steps: Steps, *, as_text: bool = False
) -> Callable[[dict[str, Any], RecordedRequest], Any]:
    def script(body: dict[str, Any], request: RecordedRequest) -> Any:
        step = request.step or _schema_named_in_prompt(body)
        out = steps.answer(step, body)
        if isinstance(out, Reply):
            return out
        if as_text:
            text = (
                "Sure! Here is my answer.\n\n```json\n"
                + json.dumps(out, indent=2)
                + "\n```\nLet me know if you need anything else."
            )
            return openai_completion(text, model=body.get("model", "local"))
        return openai_completion(json.dumps(out), model=body.get("model", "gpt"))

    return script


def _schema_named_in_prompt(body: dict[str, Any]) -> str | None:
    """Without response_format, a text model learns the step from the prompt's schema line."""
    last = (body.get("messages") or [{}])[-1].get("content") or ""
    for name in ("submit_proposals", "submit_critique", "submit_vote", "submit_design"):
        if f"({name})" in last:
            return name
    return "submit_edits" if "(submit_edits)" in last else None


# ---------------------------------------------------------------- good answers


def proposal(
    kind: str = "add-function",
    title: str = "Add triple() with a test",
    files: list[str] | None = None,
    benefit: float = 0.7,
    risk: float = 0.1,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "title": title,
        "description": "calc has add and double; a triple helper with a test rounds it out",
        "files": files or ["calc/ops.py", "tests/test_ops.py"],
        "evidence": ["calc/ops.py defines add and double"],
        "benefit": benefit,
        "risk": risk,
        "estimated_lines": 8,
    }


def proposals(*items: dict[str, Any]) -> dict[str, Any]:
    return {"proposals": list(items) or [proposal()]}


def critique(score: float = 0.7, stance: str = "support") -> dict[str, Any]:
    return {
        "criterion": "risk",
        "score": score,
        "stance": stance,
        "comment": "small, tested, low risk",
    }


def vote(proposal_id: str, confidence: float = 0.8) -> dict[str, Any]:
    return {"proposal_id": proposal_id, "confidence": confidence, "reason": "best fit"}


def design(files: list[str] | None = None) -> dict[str, Any]:
    return {
        "title": "Add triple() with a test",
        "files": files or ["calc/ops.py", "tests/test_ops.py"],
        "steps": ["add triple() after double()", "add test_triple"],
        "test_plan": "the test suite, with the new test_triple",
        "risk": "low",
        "rationale": "a small tested helper",
    }


TRIPLE_EDITS: list[dict[str, str]] = [
    {
        "path": "calc/ops.py",
        "search": "def double(x):\n    return 2 * x\n",
        "replace": "def double(x):\n    return 2 * x\n\n\ndef triple(x):\n    return 3 * x\n",
    },
    {
        "path": "tests/test_ops.py",
        "search": "from calc.ops import add, double\n",
        "replace": "from calc.ops import add, double, triple\n",
    },
    {
        "path": "tests/test_ops.py",
        "search": "def test_double():\n    assert double(4) == 8\n",
        "replace": "def test_double():\n    assert double(4) == 8\n\n\n"
        "def test_triple():\n    assert triple(3) == 9\n",
    },
]


def edits(items: list[dict[str, str]] | None = None, diff: str = "") -> dict[str, Any]:
    return {
        "summary": "add triple() and its test",
        "edits": TRIPLE_EDITS if items is None else items,
        "diff": diff,
    }


def winning_steps(winner: str = "claude:1", **overrides: Any) -> Steps:
    """A model that proposes triple(), supports everything, votes for `winner`, and (if it
    wins) designs and implements triple() with search/replace edits."""
    steps: dict[str, Any] = {
        "submit_proposals": proposals(),
        "submit_critique": critique(),
        "submit_vote": vote(winner),
        "submit_design": design(),
        "submit_edits": edits(),
    }
    steps.update(overrides)
    return Steps(**steps)
