"""The operator's policy tests hold an otherwise auto-approved proposal, through a real gateway."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.errors import ConfigError
from proxy.operator import operator_test_suites
from tests.conftest import connect, running
from tests.e2e.conftest import GPT_KEY, make_site

pytestmark = pytest.mark.anyio

TESTS = """\
tests:
  - name: gpt-4o never adds numbers
    model: gpt-4o
    tool: calendar.add
    expect: {allowed: false}
"""


def soon() -> str:
    return (datetime.now(UTC) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_proposal_that_breaks_an_operator_test_waits_for_a_reviewer(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")  # calendar.add is inside the auto-approval envelope
    (site.root / "policies.tests.yaml").write_text(TESTS)
    snippet = f"rules:\n  - model: gpt-4o\n    allow_tools: [calendar.add]\n    expires: {soon()}\n"
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        proposed = await client.call_tool("propose_policy", {"yaml": snippet, "justification": "sums"})
        status = proposed.structured_content
        assert status["status"] == "pending"
        [verdict] = [v for v in status["verdicts"] if v["code"] == "breaks_policy_tests"]
        assert "'gpt-4o never adds numbers'" in verdict["message"] and not verdict["ok"]
        assert (await client.call_tool("calendar.add", {"a": 1, "b": 2})).is_error


async def test_without_operator_tests_the_same_proposal_is_auto_approved(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    snippet = f"rules:\n  - model: gpt-4o\n    allow_tools: [calendar.add]\n    expires: {soon()}\n"
    async with running(site.app()), connect(site.url, GPT_KEY) as client:
        proposed = await client.call_tool("propose_policy", {"yaml": snippet, "justification": "sums"})
        assert proposed.structured_content["status"] == "approved"


def test_a_broken_test_file_stops_start_up_with_its_location(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    (site.root / "policies.tests.yaml").write_text("tests:\n  - {name: x}\n")
    with pytest.raises(ConfigError, match=r"policies.tests.yaml:2:5: tests\[0\].model: required"):
        operator_test_suites(load_config(site.config_path))


BENIGN = """\
tests:
  - name: gpt-4o may list events
    model: gpt-4o
    tool: calendar.list_events
    expect: {allowed: true}
"""


async def test_edited_test_files_count_from_the_next_proposal_without_a_restart(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    tests_file = site.root / "policies.tests.yaml"
    tests_file.write_text(BENIGN)

    def snippet(minutes: int) -> str:  # one distinct proposal per step
        expires = (datetime.now(UTC) + timedelta(hours=2, minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"rules:\n  - model: gpt-4o\n    allow_tools: [calendar.add]\n    expires: {expires}\n"

    async with running(site.app()), connect(site.url, GPT_KEY) as client:

        async def propose(minutes: int) -> dict:
            result = await client.call_tool("propose_policy", {"yaml": snippet(minutes), "justification": "sums"})
            return dict(result.structured_content)

        tests_file.write_text("tests:\n  - {name: x}\n")  # broken while the gateway runs
        broken = await propose(1)
        assert broken["status"] == "pending"
        [unloadable] = [v for v in broken["verdicts"] if v["code"] == "policy_tests_unloadable"]
        assert "policies.tests.yaml:2:5" in unloadable["message"] and not unloadable["ok"]

        tests_file.write_text(TESTS)  # now a test the proposal breaks
        held = await propose(2)
        assert held["status"] == "pending"
        assert [v["code"] for v in held["verdicts"] if not v["ok"]] == ["breaks_policy_tests"]

        tests_file.unlink()  # no tests at all: nothing holds it
        (site.root / "other.tests.yaml").write_text(BENIGN)  # a new file is found too
        approved = await propose(3)
        assert approved["status"] == "approved", approved["verdicts"]
        assert not (await client.call_tool("calendar.add", {"a": 1, "b": 2})).is_error


def test_an_edit_is_seen_by_content_even_with_the_same_size_and_mtime(tmp_path: Path) -> None:
    import os

    from negotiation.policy_tests import PolicyTestFiles

    path = tmp_path / "p.tests.yaml"
    path.write_text(TESTS)
    files = PolicyTestFiles(lambda: [path])
    [suite] = files.suites()
    assert suite.tests[0].expect.allowed is False
    stat = path.stat()
    path.write_text(TESTS.replace("allowed: false", "allowed: true "))  # same length
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    [suite] = files.suites()
    assert suite.tests[0].expect.allowed is True
    assert files.suites()[0] is suite  # unchanged content: not parsed again
