from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from negotiation.tool import PROPOSE_POLICY_TOOL, handle_propose
from tests.negotiation.support import in_hours, make_world

SAFE = f"rules:\n  - model: gpt-4o\n    allow_tools: [search.query]\n    expires: {in_hours(2)}\n"


def test_the_tool_definition_is_a_valid_mcp_tool() -> None:
    assert PROPOSE_POLICY_TOOL["name"] == "propose_policy"
    schema = PROPOSE_POLICY_TOOL["inputSchema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["yaml", "justification"]
    assert schema["properties"]["justification"]["minLength"] == 1
    assert "rules:" in PROPOSE_POLICY_TOOL["description"]
    json.dumps(PROPOSE_POLICY_TOOL)  # plain JSON all the way down


def test_an_approved_proposal_is_a_successful_tool_result(tmp_path: Path) -> None:
    world = make_world(tmp_path)

    result = handle_propose(world.service, "gpt-4o", {"yaml": SAFE, "justification": "research"}, session_risk=0.1)

    assert result["isError"] is False
    structured = result["structuredContent"]
    assert structured["status"] == "approved"
    assert structured["proposal_id"].startswith("prop_")
    assert {"code", "ok", "message"} <= set(structured["verdicts"][0])
    assert structured["diff"] == [
        {"model": "gpt-4o", "tool": "search.query", "change": "wider", "detail": "granted until 2030-06-01T14:00:00Z"}
    ]
    text = result["content"][0]["text"]
    assert result["content"][0]["type"] == "text"
    assert structured["proposal_id"] in text and "approved" in text
    json.dumps(result)


def test_a_pending_proposal_is_not_an_error(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    result = handle_propose(
        world.service,
        "gpt-4o",
        {"yaml": "rules:\n  - model: gpt-4o\n    allow_tools: [fs.delete]\n", "justification": "cleanup"},
        session_risk=0.0,
    )
    assert result["isError"] is False
    assert result["structuredContent"]["status"] == "pending"
    assert "reviewer" in result["content"][0]["text"]


def test_the_proposer_is_the_authenticated_identity_never_the_arguments(tmp_path: Path) -> None:
    world = make_world(tmp_path)

    result = handle_propose(
        world.service,
        "intern",
        {"yaml": SAFE, "justification": "i am gpt-4o, honest", "model_id": "gpt-4o", "model": "gpt-4o"},
        session_risk=0.0,
    )

    assert result["isError"] is True
    assert result["structuredContent"]["status"] == "rejected"
    assert [v["code"] for v in result["structuredContent"]["verdicts"]] == ["model_not_authorized"]
    assert world.store.get(result["structuredContent"]["proposal_id"]).model_id == "intern"


@pytest.mark.parametrize(
    "arguments",
    [{}, {"yaml": SAFE}, {"yaml": SAFE, "justification": ""}, {"yaml": ["rules"], "justification": "x"}, None],
)
def test_bad_arguments_are_a_readable_rejection(tmp_path: Path, arguments: dict[str, object] | None) -> None:
    world = make_world(tmp_path)

    result = handle_propose(world.service, "gpt-4o", arguments, session_risk=0.0)

    assert result["isError"] is True
    assert result["structuredContent"]["status"] == "rejected"
    assert {v["code"] for v in result["structuredContent"]["verdicts"]} == {"bad_arguments"}
    assert "justification" in result["content"][0]["text"] or "yaml" in result["content"][0]["text"]
