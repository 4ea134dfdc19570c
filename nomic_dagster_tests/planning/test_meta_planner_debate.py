"""The meta-planner's debate mode through the real `anthropic` and `openai` SDK clients,
against the loopback servers: LLM goals ranked by confidence-weighted votes, off-objective
goals dropped, failures falling back to the scan, and the asset on a real instance."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from nomic_dagster.core.records import Track
from nomic_dagster.infra.breakers import BreakerRegistry
from nomic_dagster.orchestration.assets import learning_assets
from nomic_dagster.planning.cycle_store import get_cycle_store
from nomic_dagster.planning.meta_planner import VOTE_WEIGHT, MetaPlanner, PlanTarget, Priorities
from nomic_dagster_tests.agents.test_llm_agents import (
    ANTHROPIC_KEY,
    use_anthropic,
    use_openai,
)
from nomic_dagster_tests.planning.test_learning import RICH_REPO
from nomic_dagster_tests.support import llm_scripts as ls
from nomic_dagster_tests.support.fake_llm_servers import (
    FakeAnthropicServer,
    FakeOpenAIServer,
    server_error,
)
from nomic_dagster_tests.support.learning_fixtures import resources
from nomic_dagster_tests.support.repo_builders import make_repo

OBJECTIVE = "Add tests for the rich module"


pytestmark = pytest.mark.usefixtures("llm_env")  # conftest: a clean LLM environment


@pytest.fixture
def rich_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "rich", RICH_REPO)


def planned(
    title: str,
    *,
    kind: str = "add-tests",
    track: str = "qa",
    files: list[str] | None = None,
    based_on: str = "",
) -> dict[str, Any]:
    return {
        "title": title,
        "description": f"{title}: the scan shows untested public functions there",
        "track": track,
        "kind": kind,
        "files": files if files is not None else ["pkg/rich.py"],
        "expected_impact": "high",
        "based_on": based_on,
    }


def ballot_ids(body: dict[str, Any]) -> dict[str, str]:
    """{goal text: id} from the ballot in the vote request."""
    text = json.dumps(body)
    return {m.group(2): m.group(1) for m in re.finditer(r"- (\w+) \[[^\]]*\] ([^.]+)\.", text)}


def vote_for(*picks: tuple[str, float]) -> Any:
    """A ballot answer: votes for the goals whose text starts with each given prefix."""

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        ids = ballot_ids(body)
        votes = []
        for prefix, confidence in picks:
            goal_id = next(i for text, i in ids.items() if text.startswith(prefix))
            votes.append({"goal_id": goal_id, "confidence": confidence, "reason": "lands"})
        return {"votes": votes}

    return answer


def planner(store_dir: Path, **kwargs: Any) -> MetaPlanner:
    return MetaPlanner(get_cycle_store(store_dir), objective=OBJECTIVE, root=store_dir, **kwargs)


def test_debate_ranks_the_agents_goals_by_confidence_weighted_votes(
    rich_repo: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claude = ls.Steps(
        submit_goals={"goals": [planned("Add tests for parse() on empty input")]},
        submit_goal_votes=vote_for(("Add tests for parse()", 1.0), ("Add tests for the", 0.3)),
    )
    gpt = ls.Steps(
        submit_goals={"goals": [planned("Add tests for Cache.lookup and Cache.store")]},
        submit_goal_votes=vote_for(("Add tests for parse()", 0.9), ("Add tests for Cache", 0.3)),
    )
    with (
        FakeAnthropicServer(ls.anthropic_script(claude)) as anthropic_server,
        FakeOpenAIServer(ls.openai_script(gpt)) as openai_server,
    ):
        use_anthropic(monkeypatch, anthropic_server)
        use_openai(monkeypatch, openai_server)
        result = planner(
            state_dir, mode="debate", planner_agents=["claude", "gpt"], budget_usd=1.0
        ).prioritize([PlanTarget(origin=str(rich_repo))])
        assert anthropic_server.steps() == ["submit_goals", "submit_goal_votes"]
        assert openai_server.steps() == ["submit_goals", "submit_goal_votes"]
        plan_prompt = anthropic_server.api_requests()[0].text()
    assert "Add tests for the untested public functions in" in plan_prompt  # the scan's ballot
    assert "# Kinds of improvement tried before" in plan_prompt  # the learning tables

    assert result.mode == "debate" and result.requested_mode == "debate"
    assert result.fallback_reason == "" and result.agent_failures == {}
    assert result.planner_agents == ["claude", "gpt"]
    goals = result.goals
    top, second = goals[0], goals[1]
    # both agents back claude's goal: it outranks the scan's best goal, which only claude
    # supports a little, although it has no scan signals of its own
    assert top.goal == f"Add tests for parse() on empty input (objective: {OBJECTIVE})"
    assert top.proposed_by == "claude" and top.track is Track.QA and top.kind == "add-tests"
    assert top.support == pytest.approx(0.95)
    assert top.score == pytest.approx(VOTE_WEIGHT * 0.95, abs=1e-3)
    assert top.file_hints == ["pkg/rich.py"] and top.repo == str(rich_repo) and top.base_sha
    assert "votes: claude 1.00, gpt 0.90" in top.rationale
    assert second.proposed_by == "" and second.kind == "add-tests"
    assert second.support == pytest.approx(0.15)
    assert second.score == pytest.approx(VOTE_WEIGHT * 0.15 + (1 - VOTE_WEIGHT), abs=1e-3)
    cache = next(g for g in goals if g.goal.startswith("Add tests for Cache"))
    assert cache.proposed_by == "gpt" and cache.support == pytest.approx(0.15)
    assert [g.score for g in goals] == sorted((g.score for g in goals), reverse=True)
    assert [g.priority for g in goals] == list(range(1, len(goals) + 1))
    assert {(v.voter, v.confidence) for v in result.votes} == {
        ("claude", 1.0),
        ("claude", 0.3),
        ("gpt", 0.9),
        ("gpt", 0.3),
    }
    assert result.llm_calls == 4 and result.cost_usd > 0
    Priorities.model_validate_json(result.model_dump_json())  # stored as JSON


def test_an_off_objective_llm_goal_is_dropped_and_recorded(
    rich_repo: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    off = "Migrate the logging configuration to YAML"
    claude = ls.Steps(
        submit_goals={
            "goals": [
                planned(off, kind="config", track="developer", files=["pkg/poor.py"]),
                planned("Add tests for render() escaping", based_on="c1"),
                planned("Add security tests for rich", kind="security-fix", track="security"),
            ]
        },
        submit_goal_votes=vote_for(("Add tests for render()", 0.8)),
    )
    with FakeAnthropicServer(ls.anthropic_script(claude)) as server:
        use_anthropic(monkeypatch, server)
        result = planner(
            state_dir, mode="debate", planner_agents=["claude"], tracks=["qa", "developer"]
        ).prioritize([PlanTarget(origin=str(rich_repo))])
        vote_prompt = server.api_requests()[1].text()
    assert result.mode == "debate"
    dropped = {d.goal: d for d in result.dropped}
    assert set(dropped) == {off, "Add security tests for rich"}
    assert dropped[off].agent == "claude" and dropped[off].reason.startswith("off the objective")
    assert (dropped[off].objective_fidelity or 0) < 0.2
    assert "track security is not one the planner may plan for" in (
        dropped["Add security tests for rich"].reason
    )
    assert off not in vote_prompt  # never on the ballot
    assert all(off not in g.goal for g in result.goals)
    assert any(f"dropped claude's goal {off!r}" in n for n in result.notes)
    render = result.goals[0]
    assert render.goal.startswith("Add tests for render() escaping")
    # refines the scan's best candidate: it inherits its signals and its full scan share
    assert "refines c1" in render.rationale and render.signals > 0
    assert render.score == pytest.approx(VOTE_WEIGHT * 0.8 + (1 - VOTE_WEIGHT), abs=1e-3)


def test_failures_fall_back_to_the_scan_with_the_reason(
    rich_repo: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = [PlanTarget(origin=str(rich_repo))]
    breakers = BreakerRegistry()  # what one driver's planners share: they span plans
    scan = planner(state_dir).prioritize(target)
    assert scan.mode == "scan" and scan.requested_mode == "scan" and scan.fallback_reason == ""

    with FakeAnthropicServer() as server:  # no script: every request answers HTTP 500
        server.enqueue(server_error(500), server_error(500))
        use_anthropic(monkeypatch, server)
        broken = planner(
            state_dir, mode="debate", planner_agents=["claude"], breakers=breakers
        ).prioritize(target)
        assert len(server.api_requests()) == 2  # plan and vote each tried once (no retries)
    assert broken.mode == "scan" and broken.requested_mode == "debate"
    assert broken.fallback_reason.startswith("no planner agent voted")
    assert "HTTP 500" in broken.fallback_reason and "after the SDK's retries" in (
        broken.fallback_reason
    )
    assert "HTTP 500" in broken.agent_failures["claude"]
    assert [g.goal for g in broken.goals] == [g.goal for g in scan.goals]
    assert any("debate mode fell back to the scan" in n for n in broken.notes)
    assert broken.llm_calls == 2 and broken.cost_usd == 0  # errors are not billed

    # garbage twice (the repair prompt included) is the agent's failure too; it is
    # claude's third failure in a row, so its circuit breaker opens...
    garbage = ls.Steps(submit_goals={"goals": "none"}, submit_goal_votes={"ballot": []})
    with FakeAnthropicServer(ls.anthropic_script(garbage)) as server:
        use_anthropic(monkeypatch, server)
        junk = planner(
            state_dir, mode="debate", planner_agents=["claude"], breakers=breakers
        ).prioritize(target)
        assert server.steps() == ["submit_goals", "submit_goals"]  # the ask and its repair
        # ...and with the breaker open claude is not called at all
        skipped = planner(
            state_dir, mode="debate", planner_agents=["claude"], breakers=breakers
        ).prioritize(target)
        assert len(server.api_requests()) == 2
    assert junk.mode == "scan" and "malformed output after one repair prompt" in (
        junk.fallback_reason
    )
    assert junk.cost_usd > 0  # answers that were not valid were still billed
    assert skipped.mode == "scan" and "circuit open for agent 'claude'" in skipped.fallback_reason
    assert [g.goal for g in skipped.goals] == [g.goal for g in scan.goals]
    breakers.clear()

    # no key, and an offline tool that has no planning step: nothing to debate with
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    nokey = planner(state_dir, mode="debate", planner_agents=["claude", "lint-fixer"]).prioritize(
        target
    )
    assert nokey.mode == "scan" and nokey.llm_calls == 0
    assert "no planner agent could take part" in nokey.fallback_reason
    assert "ANTHROPIC_API_KEY" in nokey.agent_failures["claude"]
    assert "offline tool" in nokey.agent_failures["lint-fixer"]
    assert [g.goal for g in nokey.goals] == [g.goal for g in scan.goals]
    alone = planner(state_dir, mode="debate").prioritize(target)
    assert alone.fallback_reason == "no planner agents are configured (planner_agents)"


def test_the_planner_budget_stops_calls_before_they_are_sent(
    rich_repo: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claude = ls.Steps(submit_goals={"goals": []}, submit_goal_votes={"votes": []})
    with FakeAnthropicServer(ls.anthropic_script(claude)) as server:
        use_anthropic(monkeypatch, server)
        result = planner(
            state_dir, mode="debate", planner_agents=["claude"], budget_usd=1e-6
        ).prioritize([PlanTarget(origin=str(rich_repo))])
        assert server.api_requests() == []
    assert result.mode == "scan" and "budget exhausted" in result.fallback_reason
    assert result.llm_calls == 0 and result.cost_usd == 0 and result.goals


@pytest.mark.slow
def test_the_asset_plans_in_debate_mode_on_a_real_instance(
    instance: dg.DagsterInstance,
    rich_repo: Path,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    claude = ls.Steps(
        submit_goals={"goals": [planned("Add tests for total() with floats")]},
        submit_goal_votes=vote_for(("Add tests for total()", 0.9)),
    )
    with FakeAnthropicServer(ls.anthropic_script(claude)) as server:
        use_anthropic(monkeypatch, server)
        res = resources(
            state_dir,
            repo=str(rich_repo),
            objective=OBJECTIVE,
            mode="debate",
            planner_agents=["claude"],
            planner_budget_usd=0.25,
        )
        result = dg.materialize(learning_assets, instance=instance, resources=res)
        assert result.success
        assert server.steps() == ["submit_goals", "submit_goal_votes"]
    priorities: Priorities = result.output_for_node("meta_planner_priorities")
    assert priorities.mode == "debate" and priorities.goals[0].proposed_by == "claude"
    event = instance.fetch_materializations(
        dg.AssetKey("meta_planner_priorities"), limit=1
    ).records[0]
    metadata = event.asset_materialization.metadata
    assert metadata["mode"].value == "debate" and metadata["fallback_reason"].value == ""
    assert metadata["llm_calls"].value == 2
    assert priorities.cost_usd > 0
    assert metadata["cost_usd"].value == pytest.approx(priorities.cost_usd)
    assert metadata["top_goal"].value.startswith("Add tests for total() with floats")
    debate = metadata["debate"].value
    assert debate["agents"] == ["claude"] and debate["votes"][0]["voter"] == "claude"
    assert ANTHROPIC_KEY not in json.dumps({k: str(v.value) for k, v in metadata.items()})
