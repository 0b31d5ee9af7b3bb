"""The admin API over real HTTP: uvicorn on a loopback port, an httpx2 client, and curl."""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
import uvicorn

from proxy.admin.app import build_admin_app
from tests.negotiation.support import World, in_hours, make_world

ADMIN_KEY = "s3cret-admin-key"
WIDE = "rules:\n  - id: gpt-writes\n    model: gpt-4o\n    allow_tools: [fs.delete]\n"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn runs on asyncio


@asynccontextmanager
async def serving(world: World, **options: int) -> AsyncIterator[str]:
    """Serve the admin app on 127.0.0.1 at a free port for the duration of the block."""
    app = build_admin_app(world.service, ADMIN_KEY, live=world.live, **options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # connections queue in the kernel until uvicorn accepts: no start-up wait
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True
    sock.close()


def client(base: str, *, key: str | None = ADMIN_KEY) -> httpx2.AsyncClient:
    headers = {"X-Admin-Key": key} if key is not None else {}
    return httpx2.AsyncClient(base_url=base, headers=headers, timeout=10)


async def test_every_route_needs_the_admin_key(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    async with serving(world) as base:
        for key in (None, "wrong", ADMIN_KEY + "x"):
            async with client(base, key=key) as http:
                for method, path in (
                    ("GET", "/api/policy"),
                    ("GET", "/api/proposals"),
                    ("GET", "/api/proposals/prop_000000000000"),
                    ("POST", "/api/propose_policy"),
                    ("POST", "/api/proposals/prop_000000000000/approve"),
                ):
                    response = await http.request(method, path, json={})
                    assert response.status_code == 401, (key, path)
                    assert response.json() == {"error": "unauthorized", "code": "unauthorized"}
    assert world.store.list() == ()


async def test_the_seed_curl_example_works_as_written(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    world = make_world(tmp_path)
    async with serving(world) as base:
        command = (
            f"curl -s -X POST {base}/api/propose_policy "
            '-H "X-Admin-Key: $SECUREGATEWAY_ADMIN_KEY" -H "Content-Type: application/json" '
            """-d '{"model_id": "gpt-4o", "yaml": "rules:\\n  - model: gpt-4o\\n    allow_tools: [search.*]", """
            """"justification": "Need search for research"}'"""
        )
        done = await anyio.run_process(
            ["bash", "-c", command], env={**os.environ, "SECUREGATEWAY_ADMIN_KEY": ADMIN_KEY}
        )
    body = json.loads(done.stdout)
    # search.* is inside the envelope but carries no expiry, so a human has to look.
    assert body["status"] == "pending"
    assert body["review_required"] is True
    assert body["proposal_id"].startswith("prop_")
    assert "expiry_too_long" in {v["code"] for v in body["verdicts"]}
    assert world.store.get(body["proposal_id"]).justification == "Need search for research"


async def test_propose_approved_pending_and_rejected_answers(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    safe = f"rules:\n  - model: gpt-4o\n    allow_tools: [search.query]\n    expires: {in_hours(2)}\n"
    async with serving(world) as base, client(base) as http:
        approved = await http.post(
            "/api/propose_policy", json={"model_id": "gpt-4o", "yaml": safe, "justification": "research"}
        )
        pending = await http.post(
            "/api/propose_policy", json={"model_id": "gpt-4o", "yaml": WIDE, "justification": "cleanup"}
        )
        rejected = await http.post(
            "/api/propose_policy",
            json={"model_id": "gpt-4o", "yaml": "models: {}\nrules: []\n", "justification": "keys"},
        )
        unknown = await http.post(
            "/api/propose_policy", json={"model_id": "nobody", "yaml": safe, "justification": "x"}
        )

    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    assert approved.json()["version"] == 2
    assert pending.status_code == 200 and pending.json()["status"] == "pending"
    assert pending.json()["review_required"] is True
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert "model keys" in rejected.json()["reason"]
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"


async def test_invalid_yaml_is_a_400_with_located_details(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    async with serving(world) as base, client(base) as http:
        response = await http.post(
            "/api/propose_policy",
            json={
                "model_id": "gpt-4o",
                "yaml": "rules:\n  - model: gpt-4o\n    allow_tool: [x]\n",
                "justification": "j",
            },
        )
        broken = await http.post(
            "/api/propose_policy",
            json={"model_id": "gpt-4o", "yaml": "rules: [\n", "justification": "j"},
        )

    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "Invalid YAML" and body["code"] == "invalid_yaml"
    assert any(d.startswith("proposal.yaml:3:5: rules[0].allow_tool: unknown key") for d in body["details"])
    assert broken.status_code == 400 and broken.json()["details"][0].startswith("proposal.yaml:")


async def test_review_through_the_api_merges_and_get_policy_shows_the_signed_version(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    async with serving(world) as base, client(base) as http:
        proposed = (
            await http.post(
                "/api/propose_policy", json={"model_id": "gpt-4o", "yaml": WIDE, "justification": "cleanup"}
            )
        ).json()
        listed = (await http.get("/api/proposals", params={"status": "pending"})).json()
        detail = (await http.get(f"/api/proposals/{proposed['proposal_id']}")).json()
        approved = await http.post(
            f"/api/proposals/{proposed['proposal_id']}/approve", json={"reviewer": "alice", "comment": "fine"}
        )
        again = await http.post(f"/api/proposals/{proposed['proposal_id']}/approve", json={"reviewer": "alice"})
        policy = (await http.get("/api/policy")).json()

    assert [p["id"] for p in listed["proposals"]] == [proposed["proposal_id"]]
    assert detail["snippet"] == WIDE and detail["proposer"] == "gpt-4o"
    assert detail["justification"] == "cleanup"
    assert any(v["code"] == "outside_envelope" for v in detail["verdicts"])
    assert {"model": "gpt-4o", "tool": "fs.delete", "change": "wider", "detail": "granted with no expiry"} in detail[
        "current_diff"
    ]
    assert approved.status_code == 200 and approved.json()["status"] == "merged"
    assert approved.json()["contract"]["signature"]
    assert again.status_code == 409 and again.json()["code"] == "invalid_state"
    assert policy["version"] == 2
    assert policy["digest"] == world.live.current.policy.digest
    assert policy["contract"]["proposal_id"] == proposed["proposal_id"]
    assert policy["contract"]["signature"] and "fs.delete" in policy["yaml"]
    assert any(rule.get("allow_tools") == ["fs.delete"] for rule in policy["policy"]["rules"])


async def test_reject_through_the_api(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    async with serving(world) as base, client(base) as http:
        proposed = (
            await http.post(
                "/api/propose_policy", json={"model_id": "gpt-4o", "yaml": WIDE, "justification": "cleanup"}
            )
        ).json()
        rejected = await http.post(
            f"/api/proposals/{proposed['proposal_id']}/reject", json={"reviewer": "bob", "comment": "no"}
        )
        no_reviewer = await http.post(f"/api/proposals/{proposed['proposal_id']}/reject", json={})

    assert rejected.status_code == 200
    assert rejected.json()["status"] == "rejected" and rejected.json()["reviewer"] == "bob"
    assert no_reviewer.status_code == 400 and no_reviewer.json()["code"] == "bad_request"
    assert world.live.current.version == 1


async def test_errors_have_stable_codes(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    async with serving(world, max_body_bytes=1024) as base, client(base) as http:
        missing = await http.get("/api/proposals/prop_000000000000")
        bad_status = await http.get("/api/proposals", params={"status": "bogus"})
        not_json = await http.post(
            "/api/propose_policy", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        too_large = await http.post(
            "/api/propose_policy", json={"model_id": "gpt-4o", "yaml": "x" * 4096, "justification": "big"}
        )
        unknown_route = await http.post("/api/proposals/prop_000000000000/merge", json={"reviewer": "a"})

    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    assert (bad_status.status_code, bad_status.json()["code"]) == (400, "bad_request")
    assert (not_json.status_code, not_json.json()["code"]) == (400, "bad_request")
    assert (too_large.status_code, too_large.json()["code"]) == (413, "too_large")
    assert unknown_route.status_code in (404, 405)
    assert world.store.list() == ()


def test_an_empty_admin_key_is_refused(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    with pytest.raises(ValueError):
        build_admin_app(world.service, "", live=world.live)
